"""Your own images: a folder plus a CSV (filename,labels[,split]) of space-separated labels.

  python launch.py --config=configs/folder.py --workdir=runs/mine \
      --config.data.manual_dir=/path/to/images [--config.data.csv=/path/to/labels.csv]

VGG16 with ImageNet weights at 224 px; head on bottleneck features, then the top block
fine-tuned with SGD lr 1e-4 momentum 0.9. Without a split column, val and test are carved out
of the list (data.val_fraction, data.test_fraction). For a few hundred images raise
finetune.epochs; for a different label separator use --config.data.label_separator=';'.
"""
from mlc_jax import config as defaults


def get_config():
  c = defaults.get_config()
  c.dataset = "folder"
  c.image_size = 224
  c.model.weights = "imagenet"
  c.head.epochs = 30
  c.finetune.epochs = 15
  c.finetune.unfreeze_blocks = "1"
  c.early_stopping_patience = 5
  return c
