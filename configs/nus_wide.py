"""NUS-WIDE (81 concepts), from the NUS-WIDE tree you downloaded (see BUILD.md for the layout).

  python launch.py --config=configs/nus_wide.py --workdir=runs/nus_wide \
      --config.data.manual_dir=/path/to/NUS-WIDE

The proposal's recipe: VGG16 with ImageNet weights at 224 px, head on bottleneck features
(RMSprop, BCE), then SGD lr 1e-4 momentum 0.9 on the top block, batch 64. Many images carry
none of the 81 concepts: dropped, as published results do, unless data.keep_unlabeled=True
(then they train as all-negative, and eval.protocol='literature' still leaves the test ones out).
"""
from configs import coco2014


def get_config():
  c = coco2014.get_config()  # the same recipe as configs/coco2014.py, on NUS-WIDE
  c.dataset = "nus_wide"
  return c
