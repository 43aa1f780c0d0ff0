"""mlc_jax.load, Classifier.predict/top_k/predict_labels and --mode=predict on a tiny trained run.

The run trains in another process (tests/trained_run.py, 4 host devices); here it is restored on
one CPU device and compared with the scores evaluation saved (eval/test/scores.npz) and with the
raw arrays of the Orbax checkpoint.
"""
import csv
import json
import pathlib
import shutil
import types

import numpy as np
import pytest
from PIL import Image

import mlc_jax
from mlc_jax.inference import predict
from mlc_jax.errors import UserError
from trained_run import read_json, split_files, trained_workdir


@pytest.fixture(scope="module")
def run(shapes_config, tmp_path_factory):
  workdir, config = trained_workdir(shapes_config, tmp_path_factory)
  return workdir, config


@pytest.fixture(scope="module")
def classifier(run):
  return mlc_jax.load(run[0])


@pytest.fixture(scope="module")
def test_images(run, tmp_path_factory):
  """The test split's own encoded PNGs as files -> (paths, dataset file names)."""
  return split_files(run[1], "test", tmp_path_factory.mktemp("test_images"))


def test_load_matches_evaluation_scores(run, classifier, test_images):
  workdir, config = run
  saved = np.load(workdir / "eval" / "test" / "scores.npz")
  paths, names = test_images
  assert list(saved["names"]) == classifier.labels == (workdir / "labels.txt").read_text().split()
  scores = classifier.predict(paths, batch_size=7)  # 32 images: the last batch is padded
  assert scores.dtype == np.float32 and scores.shape == (len(paths), len(classifier.labels))
  np.testing.assert_allclose(scores, saved["scores"], rtol=1e-5, atol=1e-6)


def test_params_are_the_checkpoint_arrays(run, classifier):
  import orbax.checkpoint as ocp
  workdir, _ = run
  stage = workdir / "checkpoints" / "head"
  steps = sorted(int(p.name) for p in stage.iterdir() if p.name.isdigit())
  # 'best' by val_loss, read from each step's saved metrics, independently of orbax's manager.
  losses = {s: read_json(stage / str(s) / "metrics" / "metrics")["val_loss"] for s in steps}
  best = min(losses, key=losses.get)
  path = stage / str(best) / "model"
  metadata = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
  restore_args = ocp.checkpoint_utils.construct_restore_args(
      jax_tree_like_numpy(metadata))
  raw = ocp.PyTreeCheckpointer().restore(path, restore_args=restore_args)
  flat = {"/".join(k): v for k, v in flatten(raw)}
  params = classifier.params
  assert set(params) == set(flat) and any(k.endswith("bn1/mean") for k in params)
  for name, value in flat.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)
  # The same checkpoint named by its folder.
  by_folder = mlc_jax.load(stage / str(best)).params
  assert all(np.array_equal(by_folder[k], v) for k, v in params.items())


def jax_tree_like_numpy(metadata):
  """Orbax array metadata -> numpy placeholders, so restore returns host numpy arrays."""
  import jax
  return jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)


def flatten(tree, prefix=()):
  """Nested dict -> [(path tuple, leaf)]."""
  if isinstance(tree, dict):
    return [item for k, v in tree.items() for item in flatten(v, prefix + (str(k),))]
  return [(prefix, tree)]


def test_same_numbers_for_paths_pil_arrays_and_batches(classifier, test_images, tmp_path):
  paths = test_images[0][:5]
  big = np.asarray(Image.open(paths[0]).convert("RGB").resize((61, 47), Image.NEAREST))
  Image.fromarray(big).save(tmp_path / "big.png")  # PNG: lossless, so the file is the array
  items = paths + [str(tmp_path / "big.png")]
  arrays = [np.asarray(Image.open(p).convert("RGB")) for p in items]
  reference = classifier.predict(items)
  as_pil = classifier.predict([Image.open(p) for p in items])
  as_arrays = classifier.predict(arrays)
  stacked = classifier.predict(np.stack(arrays[:5] + arrays[:1]))  # (N, S, S, 3) taken as is
  singles = np.concatenate([classifier.predict(p) for p in items])  # alone: a batch of one
  for other in (as_pil, as_arrays, singles):
    np.testing.assert_allclose(other, reference, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stacked, reference[[0, 1, 2, 3, 4, 0]], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(classifier.predict(pathlib.Path(items[-1])), reference[-1:],
                             rtol=1e-5, atol=1e-6)


def test_top_k_and_predict_labels(run, classifier, test_images):
  workdir, _ = run
  paths = test_images[0][:6]
  scores = classifier.predict(paths)
  top = classifier.top_k(paths, k=3)
  for row, pairs in zip(scores, top):
    order = np.argsort(-row, kind="stable")[:3]
    assert [label for label, _ in pairs] == [classifier.labels[i] for i in order]
    probs = [p for _, p in pairs]
    assert probs == sorted(probs, reverse=True)
    np.testing.assert_allclose(probs, row[order], rtol=1e-6)
  # The thresholds evaluation tuned on val for this very checkpoint decide predict_labels.
  stage, step = classifier.checkpoint.split("/")
  doc = read_json(workdir / "checkpoints" / stage / "thresholds.json")[step]
  thresholds = dict(zip(doc["labels"], doc["thresholds"]))
  np.testing.assert_allclose(classifier.thresholds, [thresholds[l] for l in classifier.labels])
  expected = [[l for l, p in zip(classifier.labels, row) if p >= thresholds[l]] for row in scores]
  assert classifier.predict_labels(paths) == expected
  at_half = [[l for l, p in zip(classifier.labels, row) if p >= 0.5] for row in scores]
  assert classifier.predict_labels(paths, threshold=0.5) == at_half


def test_thresholds_belong_to_one_checkpoint(tmp_path, caplog):
  from mlc_jax import workdir as workdir_lib
  assert workdir_lib.read_thresholds(tmp_path, "head", 6, ["a", "b"]) is None
  workdir_lib.write_thresholds(tmp_path, "head", 6, ["a", "b"], [0.7, 0.2], "val")
  np.testing.assert_allclose(workdir_lib.read_thresholds(tmp_path, "head", 6, ["a", "b"]),
                             [0.7, 0.2])
  assert workdir_lib.read_thresholds(tmp_path, "head", 12, ["a", "b"]) is None  # another step
  assert workdir_lib.read_thresholds(tmp_path, "finetune", 6, ["a", "b"]) is None
  # for other labels: ignored with a notice (0.5 until evaluate tunes them again), not a dead end
  assert workdir_lib.read_thresholds(tmp_path, "head", 6, ["b", "a"]) is None
  assert "its thresholds are not for labels.txt's labels; ignoring them" in caplog.text


def test_predict_cli_writes_files_evaluation_reads(run, classifier, test_images, tmp_path, capsys):
  from mlc_jax import cli
  from mlc_jax.eval import prediction_files as predictions
  workdir, _ = run
  paths, names = test_images
  folder = pathlib.Path(paths[0]).parent
  (folder / "broken.png").write_bytes(b"not a png at all")
  (folder / "notes.txt").write_text("not an image")
  try:
    flags = types.SimpleNamespace(images=str(folder / "*"), top_k=2, output=str(tmp_path / "p.csv"),
                                  which="best", stage=None)
    result = cli.run("predict", None, str(workdir), flags)
    out, err = capsys.readouterr()
    result_jsonl = predict.predict_cli(workdir, str(folder / "*.png"), top_k=20,
                                       output=tmp_path / "p.jsonl")
  finally:
    (folder / "broken.png").unlink()
    (folder / "notes.txt").unlink()
  assert "broken.png" in err and "notes.txt" in err and "2 of 34 files skipped" in err
  assert sorted(result["filenames"]) == sorted(paths)
  reference = classifier.predict(result["filenames"])
  np.testing.assert_allclose(result["scores"], reference, rtol=1e-5, atol=1e-6)
  lines = [l for l in out.splitlines() if l.startswith(str(folder))]
  assert len(lines) == len(paths)
  first = lines[0].split()
  i = result["filenames"].index(first[0])
  top2 = np.argsort(-reference[i], kind="stable")[:2]
  assert first[1::2] == [classifier.labels[j] for j in top2]
  with open(tmp_path / "p.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(paths) * len(classifier.labels)
  assert set(rows[0]) == {"filename", "label", "score"}
  # The evaluation's reader maps both files back onto the split (by file name) with our scores.
  expected = reference[[result["filenames"].index(p) for p in paths]]
  for name in ("p.csv", "p.jsonl"):
    read = predictions.read(tmp_path / name, classifier.labels, names)
    np.testing.assert_allclose(read, expected, atol=1e-5)
  assert len(result_jsonl["filenames"]) == len(paths)
  assert [p for p, _ in result_jsonl["skipped"]] == [str(folder / "broken.png")]
  record = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
  assert set(record) == {"filename", "scores"} and set(record["scores"]) == set(classifier.labels)


def test_list_images(tmp_path):
  for name in ("b.png", "a.JPG", "sub/c.png", "skip.txt"):
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_bytes(b"x")
  expected = [str(tmp_path / n) for n in ("a.JPG", "b.png", "sub/c.png")]
  assert predict.list_images(tmp_path)[0] == expected
  assert predict.list_images(str(tmp_path / "*.txt"))[0] == [str(tmp_path / "skip.txt")]
  assert predict.list_images(str(tmp_path / "b.png"))[0] == [str(tmp_path / "b.png")]
  with pytest.raises(UserError, match="matches no image files"):
    predict.list_images(str(tmp_path / "*.gif"))
  with pytest.raises(UserError, match="no such file"):
    predict.list_images(str(tmp_path / "missing.png"))


def test_bad_inputs(run, tmp_path):
  workdir, _ = run
  with pytest.raises(UserError, match="not inside a training workdir"):
    mlc_jax.load(tmp_path)
  with pytest.raises(UserError, match="does not exist"):
    mlc_jax.load(tmp_path / "nowhere")
  with pytest.raises(UserError, match="'best' or 'latest'"):
    mlc_jax.load(workdir, which="newest")
  empty = tmp_path / "empty"
  empty.mkdir()
  for name in ("config.json", "labels.txt"):
    shutil.copy(workdir / name, empty / name)
  with pytest.raises(UserError, match="no checkpoints"):
    mlc_jax.load(empty)
  # Damaged checkpoints: the model item's array data files truncated, or deleted.
  skip = shutil.ignore_patterns("features", "eval", "tensorboard")
  for damage in ("truncate", "delete"):
    damaged = tmp_path / damage
    shutil.copytree(workdir, damaged, ignore=skip)
    stage = damaged / "checkpoints" / "head"
    for data in stage.glob("[0-9]*/model/ocdbt.process_*/d"):
      if damage == "delete":
        shutil.rmtree(data)
        continue
      for f in data.iterdir():
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(UserError, match="damaged"):
      mlc_jax.load(damaged)
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"garbage")
  with pytest.raises(UserError, match="could be read"):
    predict.predict_cli(workdir, str(bad))
  with pytest.raises(UserError, match=r"\.csv or \.jsonl"):
    predict.predict_cli(workdir, str(bad), output=str(tmp_path / "p.xlsx"))


def _inputs_folder(root):
  """a.png, b.webp and dir.jpg/inner.png (16 px images), notes.txt, a broken symlink gone.jpg,
  an empty directory plain/ and a directory dir.jpg named like an image."""
  rng = np.random.default_rng(0)
  image = lambda: Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
  (root / "dir.jpg").mkdir(parents=True)
  (root / "plain").mkdir()
  image().save(root / "a.png")
  image().save(root / "b.webp", lossless=True)
  image().save(root / "dir.jpg" / "inner.png")
  (root / "notes.txt").write_text("not an image")
  (root / "gone.jpg").symlink_to(root / "nowhere.jpg")
  return root


def test_list_images_reports_each_file_left_out(tmp_path):
  root = _inputs_folder(tmp_path / "in")
  paths, skipped = predict.list_images(root)
  assert paths == [str(root / "a.png"), str(root / "b.webp"), str(root / "dir.jpg" / "inner.png")]
  assert skipped == [
      (str(root / "dir.jpg"), "directory", "a directory named like an image, not an image file"),
      (str(root / "gone.jpg"), "broken symlink",
       f"broken symlink (points to {root / 'nowhere.jpg'}, which does not exist)"),
      (str(root / "notes.txt"), "unsupported type",
       "unsupported type (.txt); images are .jpg .jpeg .png .gif .bmp .webp .tif .tiff")]
  assert predict.summarize(skipped) == "1 unsupported type (.txt), 1 broken symlink, 1 directory"
  assert predict.pixels.to_array(root / "b.webp").shape == (16, 16, 3)  # decodable, so kept
  # A glob takes every file it matches (prediction reports notes.txt) and reports the rest.
  paths, skipped = predict.list_images(str(root / "*"))
  assert paths == [str(root / "a.png"), str(root / "b.webp"), str(root / "notes.txt")]
  assert [(p, kind) for p, kind, _ in skipped] == [(str(root / "dir.jpg"), "directory"),
                                                   (str(root / "gone.jpg"), "broken symlink")]
  only_text = tmp_path / "text"
  only_text.mkdir()
  (only_text / "a.txt").write_text("x")
  with pytest.raises(UserError, match=r"matches no image files \(skipped 1: 1 unsupported type "
                                      r"\(\.txt\)\)"):
    predict.list_images(only_text)


def test_predict_cli_summary_counts_each_kind(tmp_path, monkeypatch, capsys):
  root = _inputs_folder(tmp_path / "in")
  (root / "broken.png").write_bytes(b"not a png")

  class Stub:  # classifier.load's classifier without a trained run: the score is the mean pixel
    labels, image_size, resize, exif_orientation, max_pixels = ["bright"], 16, "plain", True, 9e7

    def predict(self, arrays):
      return np.array([[a.mean() / 255] for a in arrays], np.float32)

  monkeypatch.setattr(predict.classifier_lib, "load", lambda *args: Stub())
  monkeypatch.setattr(predict, "model_note", lambda *args: "the stub")  # no workdir to describe
  result = predict.predict_cli(tmp_path / "run", root)
  err = capsys.readouterr().err
  assert result["filenames"] == [str(root / n) for n in ("a.png", "b.webp", "dir.jpg/inner.png")]
  assert [p for p, _ in result["skipped"]] == [
      str(root / n) for n in ("dir.jpg", "gone.jpg", "notes.txt", "broken.png")]
  assert err.splitlines()[-1] == ("predicted 3 images; 4 of 7 files skipped: 1 unsupported type "
                                  "(.txt), 1 broken symlink, 1 directory, 1 undecodable")
  for name in ("dir.jpg", "gone.jpg", "notes.txt", "broken.png"):
    assert f"skipped {root / name}: " in err
