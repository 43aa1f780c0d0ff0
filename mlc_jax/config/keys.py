"""The one table of key classes: which config keys a relaunch, an evaluation or a checkpoint cares about.

  free        a relaunch in a workdir may change it freely (not recorded): logging, locations,
              evaluation settings; it cannot change a finished stage
  evaluation  --mode=evaluate may take it from the given config instead of config.json: it cannot
              change the model's numbers
  structural  it changes the shapes in a checkpoint: never changed once a checkpoint exists

A key belongs to the classes of its entry: an exact key first, else the longest 'section.*'
pattern that covers it; a key no entry covers is in none (a relaunch that changes it is refused
unless accepted, and evaluation takes it from config.json).
"""
FREE, EVALUATION, STRUCTURAL = "free", "evaluation", "structural"

KEY_CLASSES = {
    "log_every_steps": {FREE, EVALUATION},
    "eval_batch_size": {FREE, EVALUATION},
    "data.data_dir": {FREE, EVALUATION},
    "data.manual_dir": {FREE, EVALUATION},
    "data.cache_mb": {FREE, EVALUATION},
    "eval.*": {FREE, EVALUATION},
    "distributed": {FREE},
    "stages": {FREE},
    "checkpoint.every_steps": {FREE},
    "model.cache_dir": {FREE},
    "model.weights_url": {FREE},
    "sweep.*": {FREE},
    "dataset": {STRUCTURAL},
    "head.hidden": {STRUCTURAL},
    "model.*": {STRUCTURAL},  # arch, width, batch_norm, pooling, include_top, weights, preprocessing
}


def classes(key):
  """The set of classes of a flat config key ('a.b'), by the table's rule above."""
  if key in KEY_CLASSES:
    return KEY_CLASSES[key]
  covering = [p for p in KEY_CLASSES if p.endswith(".*") and key.startswith(p[:-1])]
  return KEY_CLASSES[max(covering, key=len)] if covering else set()


def keys_of(cls):
  """The table's entries (keys and 'section.*' patterns) of one class, in table order."""
  return tuple(k for k, v in KEY_CLASSES.items() if cls in v)


def is_free(key):
  """Whether a relaunch may change `key` freely."""
  return FREE in classes(key)


def is_structural(key):
  """Whether `key` changes the shapes in a checkpoint."""
  return STRUCTURAL in classes(key)


def is_evaluation(key):
  """Whether an evaluation may take `key` from the given config."""
  return EVALUATION in classes(key)
