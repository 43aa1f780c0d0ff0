"""PASCAL VOC 2007 (20 classes; trainval -> train + val, test): the proposal's set-up.

  python launch.py --config=configs/voc2007.py --workdir=runs/voc2007

VGG16 with ImageNet weights at 224 px; bottleneck features, the head (fc1024-ReLU-dropout-fc20,
RMSprop, BCE) on them, then fine-tuning of the top conv block with SGD lr 1e-4 momentum 0.9,
batch 64; the best checkpoint by validation loss is evaluated on the test split. Variants:
--config.finetune.unfreeze_blocks=2 (or all), --config.loss.name=asl, --config.dtype=bfloat16.
"""
from mlc_jax import config as defaults


def get_config():
  c = defaults.get_config()
  c.dataset = "voc/2007"
  c.image_size = 224
  c.model.weights = "imagenet"
  c.head.epochs = 30
  c.finetune.epochs = 20
  c.finetune.unfreeze_blocks = "1"
  c.early_stopping_patience = 5
  return c
