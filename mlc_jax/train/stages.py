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
from mlc_jax.data import pipeline
from mlc_jax.train import features, loop, losses, optim


def loss_fn(config):
  """The training loss: config.loss for a sigmoid head; softmax cross-entropy for softmax."""
  if config.head.activation == "softmax":
    return losses.softmax_cross_entropy
  return losses.from_config(config.loss)


def new_model(config, num_classes, mesh):
  """The MultiLabelModel of the config with model.weights loaded, its saved state on the mesh."""
  model = models.build_model(config, num_classes, rngs=nnx.Rngs(int(config.seed)))
  models.load_backbone_weights(model.backbone, config)
  # Every saved array on the global mesh: Orbax cannot save host-local arrays across processes.
  nnx.update(model, parallel.place_state(nnx.state(model, models.SAVED), mesh, config))
  return model


def _cache(run, model):
  batch = config_lib.eval_batch_size(run.config, run.mesh)
  return features.ensure(run.config, run.workdir, run.source, model.backbone, run.mesh, batch)


def run_features(run):
  """Stage 'features': the bottleneck cache of the frozen backbone (built or reused)."""
  return _cache(run, new_model(run.config, len(run.labels), run.mesh))


def run_head(run):
  """Stage 'head': the head alone on cached features."""
  config = run.config
  model = new_model(config, len(run.labels), run.mesh)
  cache = features.load(_cache(run, model))
  train = features.Feed(*cache["train"], batch_size=config.head.batch_size, train=True,
                        seed=config.seed)
  val = features.Feed(*cache["val"], batch_size=config_lib.eval_batch_size(config, run.mesh),
                      train=False)
  stage = loop.Stage(name="head", config=config.head, model=model, trainable=optim.HEAD,
                     stats=nnx.Nothing, inputs="features", loss_fn=loss_fn(config),
                     tx=optim.make(config.head, train.steps_per_epoch),
                     schedule=optim.schedule(config.head, train.steps_per_epoch),
                     train=train, val=val, activation=config.head.activation)
  return loop.fit(run, stage)


def run_finetune(run):
  """Stage 'finetune': backbone + head; the top unfreeze_blocks train, the rest stays frozen."""
  config = run.config
  model = new_model(config, len(run.labels), run.mesh)
  if checkpoints.steps_on_disk(run.workdir, "head"):
    restored = checkpoints.restore_model(run.workdir, "head", "best", model=model)
    logging.info("finetune: starting from the head checkpoint of step %d", restored.step)
  train = pipeline.Feed(run.source, "train", batch_size=config.batch_size, train=True,
                        config=config, seed=config.seed)
  val = pipeline.Feed(run.source, "val", batch_size=config_lib.eval_batch_size(config, run.mesh),
                      train=False, config=config)
  stage = loop.Stage(name="finetune", config=config.finetune, model=model,
                     trainable=optim.trainable_filter(config.finetune.unfreeze_blocks,
                                                      config.model.include_top),
                     stats=nnx.BatchStat, inputs="image", loss_fn=loss_fn(config),
                     tx=optim.make(config.finetune, train.steps_per_epoch),
                     schedule=optim.schedule(config.finetune, train.steps_per_epoch),
                     train=train, val=val, augment=config.augment,
                     activation=config.head.activation)
  return loop.fit(run, stage)


RUNNERS = {"features": run_features, "head": run_head, "finetune": run_finetune}
