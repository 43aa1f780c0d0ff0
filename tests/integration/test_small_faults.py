"""Smaller faults, each one clear line or now accepted: a UTF-8 byte-order mark, label rows with no
labels, .tif images, a --workdir that is a file, evaluate given the training command's own flags,
a mixture's part keys on the command line."""
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, default_config, subprocess_env
from mlc_jax import cli
from mlc_jax.data import reader
from mlc_jax.data.datasets import folder
from mlc_jax.errors import UserError
from mlc_jax.eval import evaluate
from mlc_jax.inference import predict


def _images(root, n):
  root.mkdir()
  for i in range(n):
    Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(root / f"img{i}.png")


def _config(root, lines, encoding="utf-8"):
  (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding=encoding)
  c = default_config()
  c.dataset, c.data.manual_dir = "folder", str(root)
  return c


def test_a_label_csv_with_a_byte_order_mark_reads_as_without(tmp_path):
  _images(tmp_path / "a", 6)
  lines = ["filename,labels,split"] + [f"img{i}.png,{'cat' if i % 2 else 'dog'},{s}" for i, s in
                                       enumerate(["train", "train", "val", "val", "test", "test"])]
  plain = folder.read_manifest(_config(tmp_path / "a", lines))
  bom = folder.read_manifest(_config(tmp_path / "a", lines, encoding="utf-8-sig"))
  assert (tmp_path / "a" / "labels.csv").read_bytes()[:3] == b"\xef\xbb\xbf"  # Excel's way
  assert bom[0] == plain[0] == ["cat", "dog"] and bom[1] == plain[1]


def test_rows_without_labels_say_so(tmp_path):
  _images(tmp_path / "a", 6)
  lines = ["filename,labels,split", "img0.png,cat,train", "img1.png,dog,train", "img2.png,,val",
           "img3.png,,val", "img4.png,cat,test", "img5.png,dog,test"]
  with pytest.raises(UserError, match=r"split 'val' of .*labels.csv has 2 rows but none with a "
                     r"label .*data.keep_unlabeled=True"):
    folder.read_manifest(_config(tmp_path / "a", lines))


def test_a_tif_is_predicted_like_any_image(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
  (tmp_path / "imgs").mkdir()
  Image.fromarray(pixels).save(tmp_path / "imgs" / "scan.tif")
  Image.fromarray(pixels).save(tmp_path / "imgs" / "scan2.TIFF")
  found, skipped = predict.list_images(str(tmp_path / "imgs"))
  assert [p.rsplit("/", 1)[1] for p in found] == ["scan.tif", "scan2.TIFF"] and skipped == []
  np.testing.assert_array_equal(reader.read(found[0]), pixels)  # lossless: the same pixels
  assert predict.IMAGE_SUFFIXES is reader.IMAGE_SUFFIXES


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
  (tmp_path / "run").write_text("not a folder")
  flags = types.SimpleNamespace(accept_config_change=False, split="test", which="best",
                                stage=None, predictions=None)
  for mode in ("train", "evaluate"):
    with pytest.raises(SystemExit) as e:
      cli.run(mode, default_config(), str(tmp_path / "run"), flags)
    err = capsys.readouterr().err
    assert e.value.code == 1 and err == (f"error: --workdir={tmp_path / 'run'} is a file, not a "
                                         "folder; pass the folder of a run (or a new one)\n")


def test_evaluate_takes_the_training_commands_own_overrides(tmp_path):
  saved = default_config()
  saved.head.epochs, saved.image_size = 3, 64
  given = default_config()
  given.head.epochs, given.image_size = 3, 64
  config = evaluate.evaluation_config(saved, given, {"head.epochs": 3, "image_size": 64})
  assert config.head.epochs == 3 and config.image_size == 64
  with pytest.raises(UserError, match=r"overriding image_size would change it"):
    evaluate.evaluation_config(saved, given, {"head.epochs": 3, "image_size": 96})


def test_a_mixture_part_key_on_the_command_line_says_how_to_declare_parts(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/default.py", f"--workdir={tmp_path}",
       "--config.dataset=a=folder+b=folder", "--config.data.sources.a.manual_dir=/x"],
      cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip() == (
      "error: --config.data.sources.a.manual_dir: a mixture's parts are declared in a config "
      "file, and the command line can only change what the file declares: add "
      "c.data.sources.a = ml_collections.ConfigDict({'manual_dir': '', 'weight': 0.0}) to it (as "
      "configs/coco_nus_wide.py does), then pass --config.data.sources.a.manual_dir=...")
  assert "data.manual_dir" not in proc.stderr  # the wrong suggestion is gone
