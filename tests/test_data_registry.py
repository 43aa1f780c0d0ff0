"""The dataset registry's config check (data.registry.check): what names datasets, before any work."""
import ml_collections
import pytest

from mlc_jax import config as config_lib
from mlc_jax.data import registry
from mlc_jax.errors import UserError


def test_an_unknown_dataset_is_named_with_the_known_ones():
  c = config_lib.get_config()
  c.dataset = "imagenet"
  with pytest.raises(UserError, match=r"dataset='imagenet': unknown; known datasets"):
    registry.check(c)
  with pytest.raises(UserError, match=r"dataset='imagenet': unknown; known datasets"):
    registry.get(c)  # the registry checks before it opens anything


def test_folder_and_nus_wide_need_their_image_folder(tmp_path):
  for name in ("folder", "nus_wide"):
    c = config_lib.get_config()
    c.dataset = name
    with pytest.raises(UserError, match=rf"data.manual_dir='': dataset={name} needs"):
      registry.check(c)
    c.data.manual_dir = str(tmp_path)
    registry.check(c)


def test_a_mixtures_parts_and_their_keys(tmp_path):
  c = config_lib.get_config()
  c.dataset = "a=folder+b=shapes"
  with pytest.raises(UserError, match=r"data.sources.a.manual_dir='': part a \(folder\) needs"):
    registry.check(c)
  c.data.sources.a = ml_collections.ConfigDict({"manual_dir": str(tmp_path)})
  registry.check(c)
  c.data.sources.c = ml_collections.ConfigDict({"weight": 1.0})
  with pytest.raises(UserError, match=r"data.sources.c.weight: 'c' is not a part of "
                                      r"dataset='a=folder\+b=shapes' \(its parts: a, b\)"):
    registry.check(c)
  del c.data.sources["c"]
  c.data.sources.b = ml_collections.ConfigDict({"colour": 1})
  with pytest.raises(UserError, match=r"data.sources.b.colour: data.colour is not a data setting"):
    registry.check(c)
  c.dataset = "shapes"
  with pytest.raises(UserError, match=r"data.sources.a.manual_dir: dataset='shapes' is not a '\+' "
                                      "mixture"):
    registry.check(c)
