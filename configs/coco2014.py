"""MS-COCO 2014 (80 classes; train2014 -> train + val, val2014 as test), as ML-GCN/SRN report it.

  python launch.py --config=configs/coco2014.py --workdir=runs/coco2014

The proposal's recipe: VGG16 with ImageNet weights at 224 px, head on bottleneck features
(RMSprop, BCE), then SGD lr 1e-4 momentum 0.9 on the top block, batch 64. COCO is ~30x larger
than VOC, so fewer epochs; on a GPU add --config.dtype=bfloat16.
"""
from mlc_jax import config as defaults


def get_config():
  c = defaults.get_config()
  c.dataset = "coco/2014"
  c.image_size = 224
  c.model.weights = "imagenet"
  c.head.epochs = 10
  c.finetune.epochs = 8
  c.finetune.unfreeze_blocks = "1"
  c.data.val_fraction = 0.05
  c.early_stopping_patience = 3
  return c
