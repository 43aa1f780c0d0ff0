"""The demo's source task: a VGG16 (1/8 width, batch norm) trained from scratch on `shapes_single`
(one of 16 shapes per image), as ImageNet is to the multi-label demo; `make demo` exports it as a
Keras HDF5 file (`--mode=export --format=keras_h5`) that configs/shapes_demo.py loads via model.weights.

  python launch.py --config=configs/shapes_pretrain.py --workdir=DIR          (make demo runs it)

Its head is one dense layer (head.hidden=(), a 16-way softmax on globally average-pooled block-5
features), written into the file as `predictions`: the file is a complete single-label
classifier, the proposal's first benchmark once its 16 classes are mapped onto the demo's 8
labels (--mode=baseline).

Tried (validation mAP of the 16-way classifier; ~17 s an epoch on the 2-core machine):
  VGG's own fc1/fc2 top (model.include_top), AdamW 2e-3 cosine: stuck at chance (loss ln 16)
    after 3 epochs; the pooled headless backbone learns;
  pooled, AdamW 2e-3 cosine, 5 epochs: 0.44 (the demo's head on it: val mAP 0.71);
  pooled, AdamW 4e-3 cosine with 1 warmup epoch, 8 epochs: 0.887 (the demo's head: 0.84).
"""
from mlc_jax import config as defaults


def get_config():
  c = defaults.get_config()
  c.dataset = "shapes_single"
  c.data.shapes_seed = 1
  c.data.shapes_train = 6000
  c.data.shapes_val = 500
  c.data.shapes_test = 500
  c.image_size = 64
  c.batch_size = 16
  c.eval_batch_size = 250
  c.stages = ("finetune", "evaluate")
  c.model.width = 0.125
  c.model.batch_norm = True
  c.model.pooling = "avg"
  c.model.weights = ""
  c.head.hidden = ()
  c.head.activation = "softmax"
  c.finetune.unfreeze_blocks = "all"
  c.finetune.optimizer = "adamw"
  c.finetune.learning_rate = 4e-3
  c.finetune.warmup_epochs = 1
  c.finetune.weight_decay = 1e-4
  c.finetune.schedule = "cosine"
  c.finetune.epochs = 8
  c.augment.zoom = 0.1
  c.augment.rotation = 0.0
  c.eval.tune_thresholds = False
  c.log_every_steps = 75
  return c
