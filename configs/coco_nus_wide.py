"""The proposal's joint model: one VGG16 trained on MS-COCO 2014 and NUS-WIDE together.

  python launch.py --config=configs/coco_nus_wide.py --workdir=runs/coco_nus_wide \
      --config.data.sources.nus_wide.manual_dir=/path/to/NUS-WIDE

One label space: the union of COCO's 80 objects and NUS-WIDE's 81 concepts, aligned through
resources/label_alignment.json (COCO airplane = NUS-WIDE plane, car = cars, horse = horses, ...;
148 labels, 28 implications). A COCO image's NUS-WIDE-only labels are unknown (-1) unless the
file says one of its objects certainly implies it (a dog -> animal), and the other way round;
the loss leaves unknown entries out (loss.unknown='ignore'; 'negative' is the naive baseline). Training draws each epoch
by part size (data.sources.NAME.weight changes that). `evaluate` scores each part's test split
under its own protocol (COCO val2014; NUS-WIDE's official test list, images without concepts
left out), each beside its published results, plus the union; eval/test/sources/{coco_2014,
nus_wide}. The recipe is configs/coco2014.py's, which configs/nus_wide.py shares.
"""
import ml_collections

from configs import coco2014


def get_config():
  c = coco2014.get_config()  # the recipe configs/coco2014.py and configs/nus_wide.py share
  c.dataset = "coco/2014+nus_wide"
  c.data.sources.coco_2014 = ml_collections.ConfigDict({"weight": 0.0})
  c.data.sources.nus_wide = ml_collections.ConfigDict({"manual_dir": "", "weight": 0.0})
  c.loss.unknown = "ignore"
  return c
