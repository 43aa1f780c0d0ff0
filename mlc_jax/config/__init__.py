"""Every config field with its default (`get_config`), and the one check of a config (`validate`).

Experiments (configs/*.py) start from `get_config()` and override a few fields; `validate` runs
before any work and names the key, the bad value and the fix. The choices of enum-like fields
live here (CHOICES), so the check and the code that dispatches on them cannot drift apart.
"""
import difflib
import math
import os

import ml_collections

from mlc_jax.data import registry
from mlc_jax.errors import UserError

STAGES = ("features", "head", "finetune", "evaluate")  # the fixed order stages run in
TRAINED_STAGES = ("head", "finetune")                   # the stages that write checkpoints
BEST_METRICS = {"val_loss": "min", "val_mAP": "max"}
CHOICES = {
    "dtype": ("float32", "bfloat16"),
    "param_sharding": ("replicated", "fsdp"),
    "data.resize": ("plain", "crop"),
    "model.arch": ("vgg11", "vgg13", "vgg16", "vgg19"),
    "model.pooling": ("avg", "max", "flatten"),
    "model.preprocessing": ("", "caffe", "torch", "unit"),
    "head.activation": ("sigmoid", "softmax"),
    "head.optimizer": ("sgd", "adam", "adamw", "rmsprop"),
    "finetune.optimizer": ("sgd", "adam", "adamw", "rmsprop"),
    "finetune.schedule": ("constant", "cosine", "step"),
    "loss.name": ("bce", "focal", "asl"),
    "checkpoint.best_metric": tuple(BEST_METRICS),
    "eval.baseline_reduce": ("max", "sum"),
    "eval.unknown_tags": ("error", "ignore"),
}


def get_config():
  """The default config: every field, commented. Not an experiment on its own."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "shapes"          # registry name: shapes, voc/2007, voc/2012, coco/2014, coco/2017, nus_wide, folder
  c.image_size = 224            # pixels, square; the model input and the pipeline's resize target
  c.dtype = "float32"           # compute dtype of convolutions and matmuls: float32 or bfloat16
  c.batch_size = 64             # global training batch (all devices together)
  c.eval_batch_size = 128       # global batch for features, validation and evaluation; rounded up to
                                # a multiple of the device count (the padding is masked)
  c.stages = ("features", "head", "finetune", "evaluate")  # a subset, in this order
  c.distributed = False         # call jax.distributed.initialize() (multi-host); also on when the env says so
  c.param_sharding = "replicated"  # parameters + optimizer state: replicated on every device, or
                                   # fsdp: split over the 'data' axis (1/N per device; gathered per step)
  c.fsdp_min_size = 2 ** 18     # fsdp: arrays with fewer elements stay replicated

  # Input pipeline (mlc_jax/data).
  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""          # TFDS data_dir; "" = TFDS default (~/tensorflow_datasets)
  c.data.manual_dir = ""        # nus_wide: the NUS-WIDE tree; folder: the image folder
  c.data.resize = "plain"       # plain: resize to image_size (the proposal); crop: keep aspect, centre crop
  c.data.val_fraction = 0.1     # share of train carved out (deterministically) as validation where a dataset has none
  c.data.shuffle_buffer = 10_000
  c.data.cache_mb = 2048.0      # splits whose decoded images fit (per process) are decoded once and
                                # served from host memory; larger ones stream through tf.data; 0 = never
  c.data.include_difficult = True  # voc: count objects marked difficult as labels (TFDS `labels`) or not
  c.data.keep_unlabeled = True  # nus_wide/folder: keep images with none of the labels (all-zero target)
  c.data.csv = ""               # folder: the label file (CSV filename,labels or .jsonl); "" = manual_dir/labels.csv
  c.data.label_separator = " "  # folder: separator between labels inside the CSV labels column
  c.data.labels_file = ""       # folder: labels.txt with one class per line; "" = the labels seen in the file
  c.data.test_fraction = 0.1    # folder without a split column: share carved out as test (by filename hash)
  c.data.shapes_image_size = 64 # shapes: generated image size (pixels)
  c.data.shapes_seed = 0        # shapes: generation seed (separate from `seed` so training seeds reuse one set)
  c.data.shapes_train = 6000    # shapes: split sizes
  c.data.shapes_val = 1000
  c.data.shapes_test = 2000

  # On-device augmentation strengths; 0 or False turns one off. Never applied at evaluation.
  c.augment = ml_collections.ConfigDict()
  c.augment.flip = True         # random horizontal flip
  c.augment.zoom = 0.15         # random scale crop: side fraction drawn from [1 - zoom, 1]; [0, 1)
  c.augment.rotation = 10.0     # +- degrees, at most 180
  c.augment.noise = 0.0         # Gaussian noise std, in 0-255 pixel units
  c.augment.color_jitter = 0.0  # brightness/contrast/saturation strength, 0-1

  # Backbone (mlc_jax/models).
  c.model = ml_collections.ConfigDict()
  c.model.arch = "vgg16"        # vgg11, vgg13, vgg16, vgg19
  c.model.batch_norm = False    # torchvision's vgg*_bn family
  c.model.width = 1.0           # channel multiplier (fast tests and the demo use less than 1)
  c.model.weights = "imagenet"  # imagenet (Keras file, fetched and cached), a weights file path, or "" (from scratch)
  c.model.preprocessing = ""    # "" = the weights' own convention; caffe, torch or unit to force one
  c.model.pooling = "avg"       # headless backbone output: avg, max or flatten
  c.model.include_top = False   # keep fc1/fc2 (224 px only); the head then sits on fc2's 4096 features
  c.model.cache_dir = ""        # where fetched weight files live; "" = ~/.cache/mlc_jax
  c.model.weights_url = ""      # mirror URL for weights="imagenet"; "" = the official Keras URL (md5 checked either way)

  # Multi-label head and its training stage on cached bottleneck features.
  c.head = ml_collections.ConfigDict()
  c.head.hidden = 1024          # fc1 units; 0 = a single linear layer
  c.head.dropout = 0.5
  c.head.activation = "sigmoid" # sigmoid (multi-label) or softmax (single-label, for comparison)
  c.head.epochs = 20
  c.head.optimizer = "rmsprop"
  c.head.learning_rate = 1e-4
  c.head.batch_size = 64

  # Fine-tuning: backbone + trained head.
  c.finetune = ml_collections.ConfigDict()
  c.finetune.epochs = 10
  c.finetune.unfreeze_blocks = "1" # top conv blocks that train: "0"-"5" or "all" (a string, so the
                                   # command line takes both); lower blocks stay frozen
  c.finetune.optimizer = "sgd"     # sgd, adam, adamw, rmsprop
  c.finetune.learning_rate = 1e-4
  c.finetune.momentum = 0.9
  c.finetune.nesterov = False
  c.finetune.weight_decay = 0.0
  c.finetune.grad_clip = 0.0       # global-norm clip of the trainable gradient; 0 = off
  c.finetune.schedule = "constant" # constant, cosine, step
  c.finetune.warmup_epochs = 0

  # Loss (mlc_jax/train/losses.py).
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "bce"           # bce, focal, asl
  c.loss.label_smoothing = 0.0
  c.loss.focal_gamma = 2.0
  c.loss.gamma_pos = 0.0        # asl
  c.loss.gamma_neg = 4.0        # asl
  c.loss.clip = 0.05            # asl probability margin for negatives

  # Checkpoints, logging, stopping.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.best_metric = "val_loss"  # val_loss (lower is better) or val_mAP (higher is better)
  c.checkpoint.every_steps = 0           # also save mid-epoch every N steps; 0 = at epoch ends only
  c.early_stopping_patience = 0          # epochs without improvement before a stage stops; 0 = off
  c.log_every_steps = 50

  # Evaluation (mlc_jax/eval).
  c.eval = ml_collections.ConfigDict()
  c.eval.k = 3                   # top-k metrics; at most the number of classes
  c.eval.threshold = 0.5
  c.eval.topk_min_score = False  # top-k variant: False = exactly k labels per image; True = ML-GCN (also score >= threshold)
  c.eval.tune_thresholds = True  # per-class thresholds tuned on val, applied to test, reported separately
  c.eval.examples = 16           # test images in the report's grid of predicted and true labels
  c.eval.mapping = ""            # baseline: ImageNet -> label mapping file; "" = resources/imagenet_to_{voc,coco,nus_wide}.json
  c.eval.baseline_reduce = "max" # baseline: a label's score is the max or the sum of its ImageNet classes' probabilities
  c.eval.baseline_weights = ""   # baseline: ImageNet weights with the top ("imagenet" or a file); "" = model.weights
  c.eval.synonyms = ""           # predictions files: tag synonyms JSON; "" = resources/tag_synonyms.json
  c.eval.unknown_tags = "error"  # predictions files: tags naming no label -> error, or ignore (e.g. Clarifai's open vocabulary)
  return c


# Paths a config may hold: resolved to absolute paths when a workdir records the config.
PATH_KEYS = ("data.data_dir", "data.manual_dir", "data.csv", "data.labels_file", "model.cache_dir",
             "eval.mapping", "eval.synonyms")
WEIGHT_KEYS = ("model.weights", "eval.baseline_weights")  # paths unless "imagenet" or ""


def get(config, key, default=None):
  """config['a.b.c'] through nested ConfigDicts (default when a part is missing)."""
  node = config
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      return default
    node = node[part]
  return node


def flatten(config, prefix=""):
  """{'a.b': value} of every leaf of a (nested) config or dict."""
  out = {}
  for key in config.keys():
    value = config[key]
    name = f"{prefix}{key}"
    if hasattr(value, "keys"):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def unknown_key_message(key, known):
  """'unknown config key X; did you mean Y?' naming the nearest valid keys."""
  near = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
  if not near:  # a mistyped last part: suggest the fields of its section
    section = key.rpartition(".")[0]
    near = [k for k in known if k.rpartition(".")[0] == section][:6]
  hint = f"; did you mean {', '.join(near)}?" if near else ""
  return f"unknown config key {key!r}{hint} (every key and its default: mlc_jax/config.py)"


def resolve_paths(config):
  """A copy of config with its file and folder paths made absolute (a relaunch elsewhere finds them)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key in PATH_KEYS + WEIGHT_KEYS:
    value = get(config, key)
    if not isinstance(value, str) or not value or (key in WEIGHT_KEYS and value == "imagenet"):
      continue
    section, _, field = key.rpartition(".")
    config[section][field] = os.path.abspath(os.path.expanduser(value))
  return config


class _Checker:
  """Collects the checks of one config; `fail` raises at the first bad field."""

  def __init__(self, config):
    self.config = config

  def value(self, key):
    return get(self.config, key)

  def fail(self, key, value, fix):
    raise UserError(f"{key}={value!r}: {fix}")

  def choice(self, key):
    value = self.value(key)
    if value not in CHOICES[key]:
      self.fail(key, value, f"choose one of {', '.join(repr(c) for c in CHOICES[key])}")

  def number(self, key, low=None, high=None, *, integer=False, low_open=False, high_open=False,
             fix=""):
    value = self.value(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
      ok = float(value).is_integer()
    if ok and low is not None:
      ok = value > low if low_open else value >= low
    if ok and high is not None:
      ok = value < high if high_open else value <= high
    if not ok:
      lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
      hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
      want = " and ".join(p for p in (lo, hi) if p)
      kind = "an integer" if integer else "a number"
      self.fail(key, value, fix or f"must be {kind}" + (f" {want}" if want else ""))

  def boolean(self, key):
    if not isinstance(self.value(key), bool):
      self.fail(key, self.value(key), "must be True or False")

  def existing(self, key, kind="file", empty_ok=True):
    value = self.value(key)
    if not value and empty_ok:
      return
    path = os.path.expanduser(str(value))
    exists = os.path.isdir(path) if kind == "folder" else os.path.isfile(path)
    if not exists:
      self.fail(key, value, f"no such {kind}; give an existing {kind}" +
                (" or '' for the default" if empty_ok else ""))


def check_keys(config, reference=None):
  """UserError naming the first key of config that the defaults lack, and the nearest valid keys."""
  known = flatten(reference if reference is not None else get_config())
  sections = {k.rpartition(".")[0] for k in known}
  for key in flatten(config):
    if key not in known and key not in sections:
      raise UserError(unknown_key_message(key, known))


def _check_stages(c):
  stages = tuple(c.value("stages"))
  bad = [s for s in stages if s not in STAGES]
  if bad:
    c.fail("stages", stages, f"{bad} unknown; choose from {STAGES}")
  if len(set(stages)) != len(stages) or list(stages) != [s for s in STAGES if s in stages]:
    ordered = tuple(s for s in STAGES if s in stages)
    c.fail("stages", stages, f"stages run in the fixed order {STAGES}; write {ordered}")
  if not stages:
    c.fail("stages", stages, f"name at least one of {STAGES}")


def _check_weights(c, key):
  value = c.value(key)
  if value in ("", "imagenet"):
    return
  if not str(value).lower().endswith((".h5", ".hdf5", ".safetensors")):
    c.fail(key, value, "give 'imagenet', '' (from scratch), a Keras .h5 file or a .safetensors file")
  c.existing(key)


def _check_pure(config):
  """The checks that need nothing but the config."""
  check_keys(config)
  c = _Checker(config)
  c.number("seed", integer=True)
  if config.dataset not in registry.DATASETS:
    c.fail("dataset", config.dataset, f"unknown; known datasets: {', '.join(registry.names())}")
  c.number("image_size", 32, integer=True, fix="must be an integer >= 32 (VGG pools five times)")
  for key in ("batch_size", "eval_batch_size", "head.batch_size"):
    c.number(key, 1, integer=True)
  _check_stages(c)
  c.boolean("distributed")
  c.number("fsdp_min_size", 1, integer=True)
  for key in CHOICES:
    c.choice(key)
  c.number("data.val_fraction", 0, 1, low_open=True, high_open=True)
  c.number("data.test_fraction", 0, 1, high_open=True)
  c.number("data.shuffle_buffer", 1, integer=True)
  c.number("data.cache_mb", 0)
  for key in ("data.shapes_train", "data.shapes_val", "data.shapes_test"):
    c.number(key, 1, integer=True)
  c.number("data.shapes_image_size", 16, integer=True)
  c.number("data.shapes_seed", integer=True)
  for key in ("data.include_difficult", "data.keep_unlabeled", "augment.flip",
              "model.batch_norm", "model.include_top", "finetune.nesterov", "eval.topk_min_score",
              "eval.tune_thresholds"):
    c.boolean(key)
  if config.dataset in ("folder", "nus_wide") and not config.data.manual_dir:
    c.fail("data.manual_dir", "", f"dataset={config.dataset} needs the folder of its images "
           "(see BUILD.md)")
  c.existing("data.manual_dir", "folder")
  c.existing("data.csv")
  c.existing("data.labels_file")
  c.number("augment.zoom", 0, 1, high_open=True,
           fix="must be in [0, 1): the crop's side is drawn from [1 - zoom, 1]")
  c.number("augment.rotation", -180, 180, fix="must be within +-180 degrees")
  c.number("augment.noise", 0, fix="must be >= 0 (a standard deviation in 0-255 pixel units)")
  c.number("augment.color_jitter", 0, 1)
  c.number("model.width", 0, low_open=True)
  _check_weights(c, "model.weights")
  if config.model.weights == "imagenet" and config.model.batch_norm:
    c.fail("model.weights", "imagenet", "Keras's ImageNet files have no batch-norm variant; give "
           "a torchvision vgg*_bn safetensors file or set model.batch_norm=False")
  if config.model.include_top and config.model.weights and int(config.image_size) != 224:
    c.fail("model.include_top", True, f"ImageNet's fc1 takes 224 px images and image_size is "
           f"{config.image_size}: set image_size=224 or model.include_top=False")
  c.number("head.hidden", 0, integer=True)
  c.number("head.dropout", 0, 1, high_open=True)
  for stage in ("head", "finetune"):
    c.number(f"{stage}.epochs", 0, integer=True)
    c.number(f"{stage}.learning_rate", 0, low_open=True)
  unfreeze_blocks(config.finetune.unfreeze_blocks)
  c.number("finetune.momentum", 0, 1, high_open=True)
  c.number("finetune.weight_decay", 0)
  c.number("finetune.grad_clip", 0)
  c.number("finetune.warmup_epochs", 0)
  c.number("loss.label_smoothing", 0, 1, high_open=True)
  for key in ("loss.focal_gamma", "loss.gamma_pos", "loss.gamma_neg"):
    c.number(key, 0)
  c.number("loss.clip", 0, 1, high_open=True)
  c.number("checkpoint.every_steps", 0, integer=True)
  c.number("early_stopping_patience", 0, integer=True)
  c.number("log_every_steps", 1, integer=True)
  c.number("eval.k", 1, integer=True)
  c.number("eval.threshold", 0, 1)
  c.number("eval.examples", 0, integer=True)
  c.existing("eval.mapping")
  c.existing("eval.synonyms")
  _check_weights(c, "eval.baseline_weights")


def unfreeze_blocks(value):
  """finetune.unfreeze_blocks ('0'-'5', 0-5 or 'all') -> int 0-5 or 'all' (UserError otherwise)."""
  text = str(value).strip().lower()
  if text == "all":
    return "all"
  if isinstance(value, bool) or text not in {str(i) for i in range(6)}:
    raise UserError(f"finetune.unfreeze_blocks={value!r}: must be 0-5 or 'all' "
                    "(e.g. --config.finetune.unfreeze_blocks=2)")
  return int(text)


def eval_batch_size(config, mesh):
  """config.eval_batch_size rounded up to a multiple of the mesh's devices (padding is masked)."""
  n = int(mesh.size) if mesh is not None else 1
  return -(-int(config.eval_batch_size) // n) * n


def _check_mesh(config, mesh):
  n = int(mesh.size)
  for key in ("batch_size", "head.batch_size"):
    value = int(get(config, key))
    if value % n:
      raise UserError(f"{key}={value} does not split over the {n} devices; use a multiple of {n} "
                      f"(e.g. {max(n, value // n * n)})")


def _check_source(config, source):
  num_classes = len(source.labels)
  if int(config.eval.k) > num_classes:
    raise UserError(f"eval.k={config.eval.k} exceeds the {num_classes} classes of "
                    f"{config.dataset}; set eval.k to at most {num_classes}")


def validate(config, mesh=None, source=None):
  """Fails before any work on a bad config (UserError naming the key, the value and the fix).

  Without mesh and source only the config itself is checked; with a mesh the batch sizes are
  checked against its devices; with the dataset's Source, eval.k against its classes.
  """
  _check_pure(config)
  if mesh is not None:
    _check_mesh(config, mesh)
  if source is not None:
    _check_source(config, source)
  return config
