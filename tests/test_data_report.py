"""data_report: the JSON numbers against a hand count of the generated labels, and the contact sheet."""
import json

import numpy as np
from PIL import Image

from mlc_jax.data import report
from mlc_jax.data.datasets import shapes


def test_data_report_counts_match_the_generator(shapes_config, tmp_path, capsys):
  out = report.data_report(shapes_config, str(tmp_path))
  saved = json.loads((tmp_path / "data_report.json").read_text())
  assert saved["splits"] == out["splits"] and saved["skipped_count"] == 0
  for split, n in (("train", 96), ("val", 32), ("test", 32)):
    labels = [shapes.render(0, split, i, 32)[1] for i in range(n)]  # independent: re-draw the labels
    stats = saved["splits"][split]
    assert stats["images"] == n
    assert stats["label_frequency"] == {c: sum(k in l for l in labels) for k, c in enumerate(shapes.CLASSES)}
    assert np.isclose(stats["labels_per_image_mean"], np.mean([len(l) for l in labels]))
    assert stats["labels_per_image_histogram"] == {str(k): sum(len(l) == k for l in labels)
                                                   for k in range(1, 5) if any(len(l) == k for l in labels)}
  sheet = Image.open(tmp_path / "data_contact_sheet.png")
  assert sheet.size[0] > 200 and sheet.size[1] > 200
  assert "train" in capsys.readouterr().out
