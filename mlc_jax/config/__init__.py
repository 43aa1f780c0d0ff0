"""Config: every field with its default (defaults), the one table of key classes (keys) and the one
check of a config (checks.validate). This file only gathers their public names.

Experiments (configs/*.py) start from `get_config()` and override a few fields; `validate` runs
before any work and names the key, the bad value and the fix. The config knows no dataset: the
dataset registry checks config.dataset and the data.sources of a mixture (mlc_jax.data.registry.check).
"""
from mlc_jax.config.checks import (
    check_keys, check_param_groups, eval_batch_size, hidden_sizes, unfreeze_blocks, validate)
from mlc_jax.config.defaults import (
    BEST_METRICS, CHOICES, PATH_KEYS, RENAMED, STAGES, TRAINED_STAGES, WEIGHT_KEYS, flatten, get,
    get_config, resolve_paths, unknown_key_message)
from mlc_jax.config.keys import is_evaluation, is_free, is_structural

__all__ = ["BEST_METRICS", "CHOICES", "PATH_KEYS", "RENAMED", "STAGES", "TRAINED_STAGES",
           "WEIGHT_KEYS", "check_keys", "check_param_groups", "eval_batch_size", "flatten", "get",
           "get_config", "hidden_sizes", "is_evaluation", "is_free", "is_structural",
           "resolve_paths", "unfreeze_blocks", "unknown_key_message", "validate"]
