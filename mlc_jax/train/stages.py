"""The trained stages: features -> head -> finetune, each a Stage that mlc_jax.train.loop.fit runs.

features: the bottleneck cache of the frozen backbone (mlc_jax.train.features);
head:     the head alone on the cached features (RMSprop, BCE, dropout by default);
finetune: backbone + head from the head stage's best checkpoint; the top `unfreeze_blocks` train,
          the rest stays frozen, and images are augmented on the device.
Stages resume exactly from their latest checkpoint (mlc_jax.train.loop).
"""
from absl import logging
from flax import nnx

from mlc_jax import checkpoints, config as config_lib, models, parallel
from mlc_jax.train import loop, losses, optim


def new_model(config, num_classes, mesh):
  """The MultiLabelModel of the config with model.weights loaded, its saved state on the mesh."""
  model = models.build_model(config, num_classes, rngs=nnx.Rngs(int(config.seed)))
  models.load_backbone_weights(model.backbone, config)
  # Every saved array on the global mesh: Orbax cannot save host-local arrays across processes.
  nnx.update(model, parallel.place_state(nnx.state(model, models.SAVED), mesh, config))
  return model


def _input_pipeline():
  # Imported by the runners only: the input pipeline is TensorFlow (seconds to import), and the
  # stage definitions also serve the accelerator benchmark on a machine without it.
  from mlc_jax.data import pipeline
  from mlc_jax.train import features
  return pipeline, features


def _cache(run, model):
  _, features = _input_pipeline()
  batch = config_lib.eval_batch_size(run.config, run.mesh)
  return features.ensure(run.config, run.workdir, run.source, model.backbone, run.mesh, batch)


def run_features(run):
  """Stage 'features': the bottleneck cache of the frozen backbone (built or reused)."""
  return _cache(run, new_model(run.config, len(run.labels), run.mesh))


def head_stage(config, model, train=None, val=None, steps_per_epoch=None):
  """The head stage as a loop.Stage: model.head alone on batches of cached 'features'.

  train/val: feeds (features.Feed); steps_per_epoch (for the schedule) defaults to train's.
  """
  spe = steps_per_epoch or (train.steps_per_epoch if train is not None else 1)
  return loop.Stage(name="head", config=config.head, model=model, trainable=optim.HEAD,
                    stats=nnx.Nothing, inputs="features", loss_fn=losses.for_config(config),
                    tx=optim.make(config.head, spe), schedule=optim.schedule(config.head, spe),
                    train=train, val=val, activation=config.head.activation)


def finetune_stage(config, model, train=None, val=None, steps_per_epoch=None):
  """The finetune stage as a loop.Stage: the top finetune.unfreeze_blocks blocks and the head
  train on augmented images, the rest stays frozen; batch statistics update."""
  spe = steps_per_epoch or (train.steps_per_epoch if train is not None else 1)
  return loop.Stage(name="finetune", config=config.finetune, model=model,
                    trainable=optim.trainable_filter(config.finetune.unfreeze_blocks,
                                                     config.model.include_top),
                    stats=nnx.BatchStat, inputs="image", loss_fn=losses.for_config(config),
                    tx=optim.make(config.finetune, spe),
                    schedule=optim.schedule(config.finetune, spe), train=train, val=val,
                    augment=config.augment, activation=config.head.activation)


def run_head(run):
  """Stage 'head': the head alone on cached features."""
  config = run.config
  _, features = _input_pipeline()
  model = new_model(config, len(run.labels), run.mesh)
  cache = features.load(_cache(run, model))
  train = features.Feed(*cache["train"], batch_size=config.head.batch_size, train=True,
                        seed=config.seed)
  val = features.Feed(*cache["val"], batch_size=config_lib.eval_batch_size(config, run.mesh),
                      train=False)
  return loop.fit(run, head_stage(config, model, train, val))


def run_finetune(run):
  """Stage 'finetune': backbone + head from the head stage's best checkpoint."""
  config = run.config
  model = new_model(config, len(run.labels), run.mesh)
  if checkpoints.steps_on_disk(run.workdir, "head"):
    restored = checkpoints.restore_model(run.workdir, "head", "best", model=model)
    logging.info("finetune: starting from the head checkpoint of step %d", restored.step)
  pipeline, _ = _input_pipeline()
  train = pipeline.Feed(run.source, "train", batch_size=config.batch_size, train=True,
                        config=config, seed=config.seed)
  val = pipeline.Feed(run.source, "val", batch_size=config_lib.eval_batch_size(config, run.mesh),
                      train=False, config=config)
  return loop.fit(run, finetune_stage(config, model, train, val))


RUNNERS = {"features": run_features, "head": run_head, "finetune": run_finetune}
