"""Every config field with its default: mlc_jax.config.get_config (the defaults live in the package,
so a mistyped key is caught from a notebook too). Experiments (configs/*.py) start from it.

Not run on its own; see configs/demo.py, voc2007.py, coco2014.py, nus_wide.py, folder.py.
"""
from mlc_jax.config import get_config  # noqa: F401
