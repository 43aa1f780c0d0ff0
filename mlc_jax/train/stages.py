"""The trained stages: features -> head -> finetune, each a Stage that mlc_jax.train.loop.fit runs.

features: the bottleneck cache of the frozen backbone (mlc_jax.train.features);
head:     the head alone on the cached features (RMSprop, BCE, dropout by default);
finetune: backbone + head from the head stage's best checkpoint; the top `unfreeze_blocks` train,
          the rest stays frozen, and images are augmented on the device.
Stages resume exactly from their latest checkpoint (mlc_jax.train.loop).
"""
from absl import logging
from flax import nnx

from mlc_jax import checkpoints, config as config_lib, models, parallel, restore
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


def batch_norm_modes(model, groups, policy):
  """Sets each BatchNorm layer's training mode by finetune.batch_norm -> the filter of the batch
  statistics the stage updates.

  frozen_blocks_inference: a layer whose scale is frozen (its block's group) normalises with its
  running statistics and never updates them, as in the features and head stages; the others use
  and update batch statistics. all_inference: every layer on running statistics (timm's
  freeze_bn). train: every layer on batch statistics.
  """
  training = set()
  for path, module in model.iter_modules():
    if isinstance(module, nnx.BatchNorm):
      name = optim.path_string(path)
      trains = policy == "train" or (policy == "frozen_blocks_inference"
                                     and groups.spec(f"{name}/scale") is not None)
      module.use_running_average = not trains
      if trains:
        training.add(name)
  return nnx.All(nnx.BatchStat, lambda path, _: optim.path_string(path[:-1]) in training)


def finetune_stage(config, model, train=None, val=None, steps_per_epoch=None):
  """The finetune stage as a loop.Stage: finetune.param_groups and unfreeze_blocks say what trains
  on augmented images and at which rate, the rest stays frozen (batch norm: finetune.batch_norm);
  an EMA of the weights (finetune.ema_decay) and gradient accumulation as configured."""
  spe = steps_per_epoch or (train.steps_per_epoch if train is not None else 1)
  f = config.finetune
  groups = optim.ParamGroups.for_stage(f, int(config.model.get("blocks", 5)))
  return loop.Stage(name="finetune", config=f, model=model, trainable=groups.trainable(),
                    stats=batch_norm_modes(model, groups, f.get("batch_norm", "train")),
                    inputs="image", loss_fn=losses.for_config(config),
                    tx=optim.make(f, spe, groups),
                    schedule=optim.schedule(f, max(1, spe // int(f.get("accumulate_steps", 1)))),
                    train=train, val=val, augment=config.augment,
                    activation=config.head.activation, ema_decay=float(f.get("ema_decay", 0.0)),
                    ema_warmup=bool(f.get("ema_warmup", False)),
                    accumulate_steps=int(f.get("accumulate_steps", 1)))


def run_head(run):
  """Stage 'head': the head alone on cached features."""
  config = run.config
  _, features = _input_pipeline()
  model = new_model(config, len(run.labels), run.mesh)
  cache = features.load(_cache(run, model))
  train = features.Feed(*cache["train"], batch_size=config.head.batch_size, train=True,
                        seed=config.seed, order=run.source.train_order)
  val = features.Feed(*cache["val"], batch_size=config_lib.eval_batch_size(config, run.mesh),
                      train=False)
  return loop.fit(run, head_stage(config, model, train, val))


def run_finetune(run):
  """Stage 'finetune': backbone + head from the head stage's best checkpoint."""
  config = run.config
  model = new_model(config, len(run.labels), run.mesh)
  if checkpoints.steps_on_disk(run.workdir, "head"):
    restored = restore.restore_model(run.workdir, "head", "best", model=model, config=config,
                                     labels=run.labels)
    logging.info("finetune: starting from the head checkpoint of step %d", restored.step)
  pipeline, _ = _input_pipeline()
  train = pipeline.Feed(run.source, "train", batch_size=config.batch_size, train=True,
                        config=config, seed=config.seed)
  val = pipeline.Feed(run.source, "val", batch_size=config_lib.eval_batch_size(config, run.mesh),
                      train=False, config=config)
  return loop.fit(run, finetune_stage(config, model, train, val))


RUNNERS = {"features": run_features, "head": run_head, "finetune": run_finetune}
