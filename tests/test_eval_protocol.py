"""The protocol record of an evaluation: counts from the targets, and the COCO-2014 count check."""
import types

import numpy as np
import pytest

from conftest import default_config
from mlc_jax.eval import protocol


def _coco(n_test, empty):
  """A COCO-2014-sized test split as the Source describes it; `empty` images without annotations
  (targets all -1 under the literature protocol)."""
  source = types.SimpleNamespace(
      name="coco/2014", num_examples={"train": 74_000, "val": 8_000, "test": n_test},
      protocol={"split": "train2014 less a validation tail / val2014 as test", "difficult": "n/a",
                "unlabeled_images": "dropped"},
      notes={"literature_counts": {"train": 82_081, "test": 40_137}})
  labels = np.zeros((n_test, 80), np.int8)
  labels[:, 0] = 1
  labels[:empty] = -1
  return source, labels


@pytest.mark.parametrize("empty, warns", [(367, False), (400, True)])
def test_full_coco_2014_test_set_is_checked_against_the_literature_count(empty, warns, caplog):
  config = default_config()
  source, labels = _coco(40_504, empty)
  record = protocol.record(config, source, "test", labels)
  assert record["images"] == {"train": 74_000, "val": 8_000, "test": 40_504 - empty}
  assert record["images_stored"] == 40_504 and record["images_left_out"] == empty
  assert record["unknown_entries"] == 80 * empty and record["topk"] == "exact"
  assert ("count_warning" in record) == warns
  assert ("the literature counts 40137" in caplog.text) == warns
  text = protocol.lines(record)[0]
  assert f"test: {40_504 - empty:,} images counted of 40,504 stored ({empty} with no known" in text
  assert ("**Warning:** 40,104 images with annotations, the literature 40,137" in text) == warns


def test_subsets_and_other_protocols_are_not_checked(caplog):
  config = default_config()
  source, labels = _coco(500, 3)  # a small subset: no published count to hold it to
  assert "count_warning" not in protocol.record(config, source, "test", labels)
  config.eval.protocol = "all"
  source, labels = _coco(40_504, 0)
  assert "count_warning" not in protocol.record(config, source, "test", labels)
  assert "literature counts" not in caplog.text
  assert protocol.lines(None) == ["Protocol: not recorded (a result from before protocols were "
                                  "recorded).\n"]
