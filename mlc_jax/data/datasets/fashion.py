"""`fashion_collage`: real photographs, several per image. `fashion_items`: one per image.

Built from Fashion-MNIST (Zalando's 70,000 product photos, 28 x 28 grey, 10 classes, MIT licence),
the four IDX files found in data.manual_dir, else in Debian's package dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist/), else through TFDS's `fashion_mnist` download. Each
fashion_collage image is a 2 x 2 grid of 28 px cells (56 px, grey as RGB) holding 1-4 items in
random cells (empty cells are background, 0); its labels are the set of their classes. Train and
val images draw their items from disjoint parts of Fashion-MNIST's train split (val: the first
data.collage_val_items of a seeded permutation, train: the rest), test images only from its test
split, so no photo is in two splits. fashion_items is the single-label counterpart (softmax
training): one item in a random cell of the same empty 2 x 2 canvas (the same scale as in the
collages), from the same parts. Both are deterministic from data.collage_seed and sized by
data.collage_train/val/test; generated once into data_dir as TFDS datasets.
"""
import dataclasses
import gzip
import hashlib
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mlc_jax.data.source import Source, prepare
from mlc_jax.errors import UserError

CLASSES = ("t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle_boot")
SPLITS = ("train", "val", "test")
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CELL = 28
HINT = ("Fashion-MNIST's files are needed: `apt-get install dataset-fashion-mnist` (Debian, as "
        "root), or put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, .gz or not) in a folder and set "
        "data.manual_dir=FOLDER")


def _file(folder, name):
  """The path of IDX file `name` (plain or .gz) in `folder`, or None."""
  for candidate in (name, name + ".gz"):
    path = pathlib.Path(folder) / candidate
    if path.is_file():
      return path
  return None


def find_files(manual_dir):
  """The folder holding the four IDX files: data.manual_dir, else Debian's; None for neither
  (TFDS's download is then tried). A manual_dir without them is a UserError naming it."""
  names = [n for pair in FILES.values() for n in pair]
  if manual_dir:
    missing = [n for n in names if _file(manual_dir, n) is None]
    if missing:
      raise UserError(f"data.manual_dir={manual_dir} lacks {', '.join(missing)}. {HINT}")
    return str(manual_dir)
  if all(_file(DEBIAN_DIR, n) for n in names):
    return DEBIAN_DIR
  return None


def read_idx(path):
  """An IDX file (plain or gzip) -> uint8 numpy array of its shape (UserError when malformed)."""
  raw = pathlib.Path(path).read_bytes()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
    raise UserError(f"{path} is not a uint8 IDX file (magic {raw[:4].hex()}); {HINT}")
  dims = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
  body = raw[4 + 4 * dims:]
  if len(body) != int(np.prod(shape)):
    raise UserError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), the file holds "
                    f"{len(body)}; the file is damaged, {HINT}")
  return np.frombuffer(body, np.uint8).reshape(shape)


def load_items(folder):
  """{'train': (images (N, 28, 28) uint8, labels (N,) uint8), 'test': ...} from IDX files or TFDS."""
  if folder is None:
    return _tfds_items()
  out = {}
  for split, (images, labels) in FILES.items():
    x, y = read_idx(_file(folder, images)), read_idx(_file(folder, labels))
    if x.ndim != 3 or x.shape[1:] != (CELL, CELL) or y.shape != (len(x),) or y.max() >= len(CLASSES):
      raise UserError(f"{folder}: {images} {x.shape} and {labels} {y.shape} are not Fashion-MNIST "
                      f"(N 28x28 images, N labels 0-9). {HINT}")
    out[split] = (x, y)
  return out


def _tfds_items():
  try:
    builder = tfds.builder("fashion_mnist")
    builder.download_and_prepare()
    out = {}
    for split in FILES:
      data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
      out[split] = data["image"][..., 0], data["label"].astype(np.uint8)
    return out
  except Exception as e:  # noqa: BLE001 - any TFDS failure means: no files here
    raise UserError(f"no Fashion-MNIST files in {DEBIAN_DIR} and TFDS's download failed "
                    f"({type(e).__name__}). {HINT}") from None


def item_pools(items, val_items, seed):
  """{'train': indices of Fashion-MNIST train items, 'val': others of it, 'test': of its test}."""
  n = len(items["train"][1])
  if not 0 < val_items < n:
    raise UserError(f"data.collage_val_items={val_items} must be between 1 and {n - 1}")
  order = np.random.default_rng([seed, 7]).permutation(n)
  return {"train": np.sort(order[val_items:]), "val": np.sort(order[:val_items]),
          "test": np.arange(len(items["test"][1]))}


def collage(rng, images, labels, pool, max_items):
  """(56 x 56 x 3 uint8 image, sorted class ids, item indices) of one collage from `pool`."""
  count = int(rng.integers(1, max_items + 1))
  chosen = rng.choice(pool, count, replace=False)
  cells = rng.choice(4, count, replace=False)
  canvas = np.zeros((2 * CELL, 2 * CELL), np.uint8)
  for index, cell in zip(chosen, cells):
    r, c = divmod(int(cell), 2)
    canvas[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = images[index]
  return np.repeat(canvas[..., None], 3, axis=-1), sorted({int(labels[i]) for i in chosen}), chosen


def generate(items, split, count, seed, *, max_items=4, val_items=6000, single=False):
  """Yields (key, {'image', 'labels', 'items'}) of `count` examples of `split`, deterministic."""
  pools = item_pools(items, val_items, seed)
  images, labels = items["test" if split == "test" else "train"]
  rng = np.random.default_rng([seed, SPLITS.index(split), int(single)])
  for index in range(count):
    image, ids, chosen = collage(rng, images, labels, pools[split], 1 if single else max_items)
    yield index, {"image": image, "labels": ids, "items": [int(i) for i in chosen]}


@dataclasses.dataclass
class CollageConfig(tfds.core.BuilderConfig):
  folder: str = ""
  seed: int = 0
  split_sizes: tuple = (3000, 500, 1000)
  max_items: int = 4
  val_items: int = 6000
  single: bool = False


class FashionCollage(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST collages (or single items); features: image PNG, labels, source item ids."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(2 * CELL, 2 * CELL, 3)),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=CLASSES)),
            "items": tfds.features.Sequence(tfds.features.Scalar(np.int64)),
        }), description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    items = load_items(cfg.folder or None)
    return {split: self._generate_examples(items, split, n)
            for split, n in zip(SPLITS, cfg.split_sizes)}

  def _generate_examples(self, items, split, count):
    cfg = self.builder_config
    yield from generate(items, split, count, cfg.seed, max_items=cfg.max_items,
                        val_items=cfg.val_items, single=cfg.single)


def builder(config, single=False):
  """The TFDS builder of config.data.collage_* (files located first: a missing one fails here)."""
  d = config.data
  folder = find_files(d.manual_dir)
  sizes = (int(d.collage_train), int(d.collage_val), int(d.collage_test))
  # The name keys the cached dataset: options and the label files' digest (other files, other set).
  digest = hashlib.sha256()
  for split in FILES:
    if folder is not None:
      digest.update(pathlib.Path(_file(folder, FILES[split][1])).read_bytes())
  name = (f"{'items' if single else 'collage'}_seed{int(d.collage_seed)}_n"
          f"{'-'.join(map(str, sizes))}_max{int(d.collage_max_items)}_v{int(d.collage_val_items)}"
          f"_{digest.hexdigest()[:10] if folder else 'tfds'}")
  cfg = CollageConfig(name=name, folder=folder or "", seed=int(d.collage_seed), split_sizes=sizes,
                      max_items=int(d.collage_max_items), val_items=int(d.collage_val_items),
                      single=single)
  return FashionCollage(config=cfg, data_dir=d.data_dir or None)


def source(config, single=False):
  """Source over fashion_collage (or fashion_items with single=True)."""
  name = "fashion_items" if single else "fashion_collage"
  b = prepare(builder(config, single), name=name, hint=HINT)
  task = ("single-label: one Fashion-MNIST item per image (softmax training)" if single else
          f"multi-label: 1-{config.data.collage_max_items} Fashion-MNIST items in a 2x2 collage")
  return Source(name, b, {s: s for s in SPLITS}, lambda ex: ex["labels"], CLASSES,
                options={"seed": config.data.collage_seed, "val_items": config.data.collage_val_items},
                protocol={"task": task, "split": "train/val items from Fashion-MNIST train "
                          "(disjoint), test items from its test split"})


def single_source(config):
  """Source over fashion_items (one item per image, single-label)."""
  return source(config, single=True)

