"""NUS-WIDE and CSV/JSON-lines folders built from small trees made here, with bad files."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import default_config
from mlc_jax.data import pipeline, registry
from mlc_jax.errors import UserError

CONCEPTS = ["sky", "dog", "water"]


def _jpeg(path, seed, size=(20, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)).save(path, "JPEG")


def _bad_files(folder):
  """{name: kind} of a zero-byte file, a truncated JPEG and a text file posing as an image."""
  _jpeg(os.path.join(folder, "whole.jpg"), 99, (64, 64))
  data = open(os.path.join(folder, "whole.jpg"), "rb").read()
  os.remove(os.path.join(folder, "whole.jpg"))
  open(os.path.join(folder, "empty.jpg"), "wb").close()
  open(os.path.join(folder, "truncated.jpg"), "wb").write(data[:len(data) // 2])
  open(os.path.join(folder, "notes.jpg"), "w").write("not an image\n")
  return ["empty.jpg", "truncated.jpg", "notes.jpg"]


def _collect(source, split, config):
  batches = list(pipeline.batches(source, split, batch_size=4, train=False, config=config))
  labels = np.concatenate([b["labels"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  return labels[mask]


def _nus_tree(root):
  """Official layout: 8 train (1 missing, 3 bad, 1 without labels) and 3 test images."""
  train = [[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0], [1, 1, 1]]
  test = [[0, 1, 0], [0, 0, 0], [1, 1, 1]]
  os.makedirs(os.path.join(root, "ImageList"))
  os.makedirs(os.path.join(root, "Groundtruth", "TrainTestLabels"))
  open(os.path.join(root, "Concepts81.txt"), "w").write("\n".join(CONCEPTS) + "\n")
  bad = _bad_files(os.path.join(root, "Flickr", "animal"))
  for split, rows in (("Train", train), ("Test", test)):
    entries = [f"animal\\{split}_{i}.jpg" for i in range(len(rows))]
    if split == "Train":
      entries[5:] = [f"animal\\{name}" for name in bad]
    with open(os.path.join(root, "ImageList", f"{split}Imagelist.txt"), "w", newline="") as f:
      f.write("\r\n".join(entries) + "\r\n")  # the official lists have Windows line ends
    for c, concept in enumerate(CONCEPTS):
      path = os.path.join(root, "Groundtruth", "TrainTestLabels", f"Labels_{concept}_{split}.txt")
      open(path, "w").write("\n".join(str(r[c]) for r in rows) + "\n")
    for i, entry in enumerate(entries[:5] if split == "Train" else entries):
      if not (split == "Train" and i == 4):  # Train_4 is missing from the user's copy
        _jpeg(os.path.join(root, "Flickr", *entry.split("\\")), i)
  return train, test


@pytest.mark.parametrize("keep", [True, False])
def test_nus_wide_counts_missing_bad_and_unlabeled(tmp_path, keep):
  train, test = _nus_tree(str(tmp_path / "nus"))
  config = default_config()
  config.dataset, config.image_size = "nus_wide", 16
  config.data.manual_dir, config.data.data_dir = str(tmp_path / "nus"), str(tmp_path / "tfds")
  config.data.keep_unlabeled, config.data.val_fraction = keep, 0.3
  source = registry.get(config)
  assert source.labels == CONCEPTS
  assert source.notes["missing_images"] == {"train": 1, "test": 0}
  assert source.notes["images_without_labels"] == {"train": 1, "test": 1}
  assert sorted(os.path.basename(s["path"]) for s in source.skipped) == ["empty.jpg", "notes.jpg", "truncated.jpg"]
  usable_train = 4 - (0 if keep else 1)  # Train_0..3 (Train_2 has no labels)
  assert source.num_examples["train"] + source.num_examples["val"] == usable_train
  assert source.num_examples["test"] == 3 - (0 if keep else 1)
  got = _collect(source, "test", config)
  # the literature protocol leaves a kept unlabeled test image out: its target is unknown (-1)
  expected = np.array([r if any(r) else [-1] * len(r) for r in test if keep or any(r)], np.int8)
  assert got.dtype == np.int8 and sorted(map(tuple, got)) == sorted(map(tuple, expected))
  config.eval.protocol = "all"  # every stored image counts: the kept one as all-negative
  source = registry.get(config)
  got = _collect(source, "test", config)
  assert sorted(map(tuple, got)) == sorted(map(tuple, np.array([r for r in test if keep or any(r)])))
  both = np.concatenate([_collect(source, "train", config), _collect(source, "val", config)])
  expected = np.array([r for r in train[:4] if keep or any(r)], np.float32)
  assert sorted(map(tuple, both)) == sorted(map(tuple, expected))


def test_nus_wide_label_file_of_wrong_length_names_it(tmp_path):
  _nus_tree(str(tmp_path / "nus"))
  path = tmp_path / "nus" / "Groundtruth" / "TrainTestLabels" / "Labels_dog_Test.txt"
  path.write_text("0\n1\n")
  config = default_config()
  config.dataset, config.data.manual_dir = "nus_wide", str(tmp_path / "nus")
  config.data.data_dir = str(tmp_path / "tfds")
  with pytest.raises(UserError, match="Labels_dog_Test.txt has 2 lines"):
    registry.get(config)


def _folder(tmp_path, rows, *, fmt="csv", labels_txt=None):
  root = tmp_path / "images"
  for i in range(6):
    _jpeg(str(root / f"img{i}.jpg"), i)
  _bad_files(str(root))
  if labels_txt:
    (root / "labels.txt").write_text("\n".join(labels_txt) + "\n")
  if fmt == "csv":
    lines = ["filename,labels,split"] + [f"{f},{'|'.join(l)},{s}" for f, l, s in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    manifest = root / "labels.csv"
  else:
    manifest = root / "labels.jsonl"
    manifest.write_text("".join(json.dumps({"filename": f, "labels": l, "split": s}) + "\n" for f, l, s in rows))
  config = default_config()
  config.dataset, config.image_size = "folder", 16
  config.data.manual_dir, config.data.data_dir = str(root), str(tmp_path / "tfds")
  config.data.csv, config.data.label_separator = str(manifest), "|"
  return config


ROWS = [("img0.jpg", ["cat"], "train"), ("img1.jpg", ["cat", "dog"], "train"),
        ("img2.jpg", ["bird"], "train"), ("empty.jpg", ["dog"], "train"),
        ("img3.jpg", ["dog", "bird"], "val"), ("truncated.jpg", ["cat"], "val"),
        ("img4.jpg", [], "test"), ("img5.jpg", ["bird", "cat"], "test"), ("notes.jpg", ["cat"], "test")]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_folder_skips_bad_files_and_builds_multi_hot(tmp_path, fmt):
  config = _folder(tmp_path, ROWS, fmt=fmt)
  config.data.keep_unlabeled = True  # img4 lists no label
  source = registry.get(config)
  assert source.labels == ["bird", "cat", "dog"]  # sorted labels of the file, no labels.txt
  assert source.num_examples == {"train": 3, "val": 1, "test": 2}
  assert sorted(os.path.basename(s["path"]) for s in source.skipped) == ["empty.jpg", "notes.jpg", "truncated.jpg"]
  np.testing.assert_array_equal(_collect(source, "test", config), [[0, 0, 0], [1, 1, 0]])
  np.testing.assert_array_equal(_collect(source, "val", config), [[1, 0, 1]])


MARKED = [("img0.jpg", ["cat", "-dog"], "train"), ("img1.jpg", ["?cat", "dog"], "train"),
          ("img2.jpg", ["bird", "?dog", "-cat"], "val"), ("img3.jpg", ["-bird"], "val"),
          ("img4.jpg", [], "test"), ("img5.jpg", ["?bird", "cat"], "test")]


@pytest.mark.parametrize("unlisted,keep", [("negative", False), ("unknown", True)])
def test_folder_explicit_negatives_and_unknowns(tmp_path, unlisted, keep):
  # Hand-made targets (labels bird, cat, dog): listed 1, -listed 0, ?listed -1, unlisted 0 or -1
  config = _folder(tmp_path, MARKED)
  config.data.unlisted, config.data.keep_unlabeled = unlisted, keep
  source = registry.get(config)
  assert source.labels == ["bird", "cat", "dog"]
  u = 0 if unlisted == "negative" else -1
  expected = {"train": [[u, 1, 0], [u, -1, 1]], "val": [[1, 0, -1], [0, u, u]],
              "test": ([[u, u, u]] if keep else []) + [[-1, 1, u]]}
  rows_of = lambda m: sorted(map(tuple, np.asarray(m).reshape(-1, 3).tolist()))  # TFDS reorders
  for split, rows in expected.items():
    assert rows_of(source.label_matrix(split)) == rows_of(rows), split
  assert rows_of(_collect(source, "val", config)) == rows_of(expected["val"])


def test_folder_label_marked_twice_names_the_line(tmp_path):
  rows = [("img0.jpg", ["cat", "-cat"], "train"), ("img1.jpg", ["dog"], "val"),
          ("img2.jpg", ["dog"], "test")]
  with pytest.raises(UserError, match=r"labels.csv line 2: label 'cat' is marked twice"):
    registry.get(_folder(tmp_path, rows))


def test_folder_labels_txt_and_user_errors(tmp_path):
  config = _folder(tmp_path, ROWS, labels_txt=["dog", "cat", "bird", "fish"])
  source = registry.get(config)
  assert source.labels == ["dog", "cat", "bird", "fish"]
  np.testing.assert_array_equal(_collect(source, "val", config), [[1, 0, 1, 0]])
  bad_label = ROWS[:2] + [("img2.jpg", ["horse"], "train")] + ROWS[4:]
  with pytest.raises(UserError, match=r"labels.csv line 4: label 'horse' is not in .*labels.txt"):
    registry.get(_folder(tmp_path / "a", bad_label, labels_txt=["dog", "cat", "bird"]))
  missing = ROWS + [("gone.jpg", ["cat"], "train")]
  with pytest.raises(UserError, match=r"labels.csv line 11: image .*gone.jpg does not exist"):
    registry.get(_folder(tmp_path / "b", missing))
  no_test = [r for r in ROWS if r[2] != "test"]
  with pytest.raises(UserError, match="split 'test' of .*labels.csv is empty"):
    registry.get(_folder(tmp_path / "c", no_test))


def _manifest(tmp_path, lines, copies=()):
  """A folder config over img0..img5 (distinct bytes) plus copies [(new name, of)], with the
  label file lines as given (header included)."""
  config = _folder(tmp_path, [])
  root = tmp_path / "images"
  for name, of in copies:
    (root / name).write_bytes((root / of).read_bytes())
  (root / "labels.csv").write_text("\n".join(lines) + "\n")
  return config, str(root / "labels.csv")


def test_folder_same_path_in_two_splits_names_both_lines(tmp_path):
  from mlc_jax.data.datasets import folder
  lines = ["filename,labels,split", "img0.jpg,cat,train", "img1.jpg,dog,val", "img2.jpg,cat,test",
           "./img0.jpg,dog,test"]
  config, csv_path = _manifest(tmp_path, lines)
  with pytest.raises(UserError) as e:
    folder.read_manifest(config)
  assert str(e.value) == (
      f"{csv_path} lines 2 and 5: the same image 'img0.jpg' and './img0.jpg' is in train (line 2)"
      " and in test (line 5), so the test split would score an image the model trained or was tuned"
      " on; keep one of the two rows")
  config, csv_path = _manifest(tmp_path / "b", lines[:4] + ["img1.jpg,dog,train"])
  with pytest.raises(UserError) as e:
    folder.read_manifest(config)
  assert str(e.value) == (
      f"{csv_path} lines 3 and 5: the same image 'img1.jpg' is in val (line 3) and in train"
      " (line 5), so the validation split would score an image the model trained on; keep one of"
      " the two rows")


def test_folder_same_bytes_in_two_splits_is_a_leak(tmp_path):
  from mlc_jax.data.datasets import folder
  lines = ["filename,labels,split", "img0.jpg,cat,train", "img1.jpg,dog,val", "img2.jpg,cat,test",
           "twin.jpg,cat,test"]
  config, csv_path = _manifest(tmp_path, lines, copies=[("twin.jpg", "img0.jpg")])
  with pytest.raises(UserError) as e:
    folder.read_manifest(config)
  assert str(e.value) == (
      f"{csv_path} lines 2 and 5: 'img0.jpg' (train, line 2) and 'twin.jpg' (test, line 5) are the"
      " same image (identical bytes), so the test split would score an image the model trained or"
      " was tuned on; delete one of the two files and its row, or give both rows the same split")
  # No split column: by the filename hash a.jpg (0.339) is train and f.jpg (0.018) test.
  lines = ["filename,labels", "a.jpg,cat", "f.jpg,dog", "img1.jpg,cat"]
  config, csv_path = _manifest(tmp_path / "b", lines, copies=[("a.jpg", "img0.jpg"),
                                                               ("f.jpg", "img0.jpg")])
  with pytest.raises(UserError) as e:
    folder.read_manifest(config)
  assert str(e.value) == (
      f"{csv_path} lines 2 and 3: 'a.jpg' (train, line 2) and 'f.jpg' (test, line 3) are the"
      " same image (identical bytes), so the test split would score an image the model trained or"
      " was tuned on; delete one of the two files and its row, or add a split column that gives"
      " both rows the same split")


def test_folder_duplicate_row_names_both_lines(tmp_path):
  from mlc_jax.data.datasets import folder
  lines = ["filename,labels,split", "img0.jpg,cat,train", "img1.jpg,dog,val", "img2.jpg,cat,test",
           "img0.jpg,cat,train"]
  config, csv_path = _manifest(tmp_path, lines)
  with pytest.raises(UserError) as e:
    folder.read_manifest(config)
  assert str(e.value) == (f"{csv_path} lines 2 and 5: duplicate row, image 'img0.jpg' is listed"
                          " twice (both in train); delete one of the two rows")
  # Without a split column both land in one split: once TFDS's "Two examples share the same
  # hashed key!"; a.jpg hashes to train.
  lines = ["filename,labels", "a.jpg,cat", "img1.jpg,dog", "a.jpg,dog"]
  config, csv_path = _manifest(tmp_path / "b", lines, copies=[("a.jpg", "img0.jpg")])
  with pytest.raises(UserError) as e:
    folder.read_manifest(config)
  assert str(e.value) == (f"{csv_path} lines 2 and 4: duplicate row, image 'a.jpg' is listed"
                          " twice (both in train); delete one of the two rows")


def test_folder_near_duplicate_in_one_split_is_a_warning(tmp_path, caplog):
  from mlc_jax.data.datasets import folder
  # No val rows: val is carved from train by the filename hash. With data.val_fraction=0.26
  # img1.jpg (0.257) goes to val, img5.jpg (0.275) stays; twin.jpg (0.227) alone would go but
  # follows img0.jpg (0.474), the first of its identical files.
  lines = ["filename,labels,split", "img0.jpg,cat,train", "twin.jpg,cat,train",
           "img1.jpg,dog,train", "img5.jpg,dog,train", "img2.jpg,cat,test"]
  config, csv_path = _manifest(tmp_path, lines, copies=[("twin.jpg", "img0.jpg")])
  config.data.val_fraction = 0.26
  with caplog.at_level("WARNING", logger="mlc_jax.data.datasets.folder"):
    _, splits, near = folder.read_manifest(config)
  assert near == ["train: img0.jpg (line 2) = twin.jpg (line 3)"]
  assert {s: sorted(r[0] for r in rows) for s, rows in splits.items()} == {
      "train": ["img0.jpg", "img5.jpg", "twin.jpg"], "val": ["img1.jpg"], "test": ["img2.jpg"]}
  assert [r.getMessage() for r in caplog.records if r.name == "mlc_jax.data.datasets.folder"] == [
      f"{csv_path}: img0.jpg (line 2) and twin.jpg (line 3) are the same image (identical bytes) in"
      " train; it counts twice there"]
  source = registry.get(config)  # the data report prints the source's notes
  assert source.notes == {"near_duplicates": ["train: img0.jpg (line 2) = twin.jpg (line 3)"]}


def test_folder_digests_are_read_once_and_follow_changed_files(tmp_path, monkeypatch):
  # A relaunch on an unchanged folder hashes no image again; a rewritten file is hashed anew and
  # a copy made into another split is then caught as a leak.
  from mlc_jax.data.datasets import folder
  lines = ["filename,labels,split", "img0.jpg,cat,train", "img1.jpg,dog,val", "img2.jpg,cat,test"]
  config, _ = _manifest(tmp_path, lines)
  hashed = []
  real = folder._digest
  monkeypatch.setattr(folder, "_digest", lambda path: hashed.append(os.path.basename(path)) or real(path))
  folder.read_manifest(config)
  assert sorted(hashed) == ["img0.jpg", "img1.jpg", "img2.jpg"]
  hashed.clear()
  folder.read_manifest(config)
  assert hashed == []
  root = tmp_path / "images"
  (root / "img2.jpg").write_bytes((root / "img0.jpg").read_bytes())  # now a copy of a train image
  os.utime(root / "img2.jpg", ns=(1, 1))  # a new mtime even on a coarse clock
  with pytest.raises(UserError, match="are the same image"):
    folder.read_manifest(config)
  assert hashed == ["img2.jpg"]


def test_folder_labels_file_names_the_classes_in_its_order_before_manual_dir_labels_txt(tmp_path):
  """data.labels_file: its classes, in its order (one it lists that no row uses included), and it
  wins over MANUAL_DIR/labels.txt; without it labels.txt applies, without both the sorted labels
  of the file."""
  from mlc_jax.data.datasets import folder
  config = _folder(tmp_path, ROWS, labels_txt=["cat", "bird", "dog"])
  own = tmp_path / "elsewhere" / "classes.txt"
  own.parent.mkdir()
  own.write_text("dog\nfish\ncat\nbird\n")
  config.data.labels_file = str(own)
  names, splits, _ = folder.read_manifest(config)
  assert list(names) == ["dog", "fish", "cat", "bird"]
  # img3 (val) is dog and bird: columns 0 and 3 of this order
  assert dict(r[:2] for r in splits["val"])["img3.jpg"] == [0, 3]
  config.data.labels_file = ""
  assert list(folder.read_manifest(config)[0]) == ["cat", "bird", "dog"]
  (tmp_path / "images" / "labels.txt").unlink()
  assert list(folder.read_manifest(config)[0]) == ["bird", "cat", "dog"]


def test_folder_test_fraction_carves_test_by_filename_hash(tmp_path):
  """data.test_fraction = 0.3 and data.val_fraction = 0.2 without a split column: a file is test
  when sha1(filename)'s first 12 hex digits / 16**12 < 0.3, val when < 0.5 (hashlib by hand)."""
  import hashlib
  from mlc_jax.data.datasets import folder
  config = _folder(tmp_path, [])
  root = tmp_path / "images"
  files = [f"pic{i:02d}.jpg" for i in range(40)]
  for i, name in enumerate(files):
    _jpeg(str(root / name), 100 + i, (8, 8))
  (root / "labels.csv").write_text("filename,labels\n" + "".join(f"{f},cat\n" for f in files))
  u = {f: int(hashlib.sha1(f.encode()).hexdigest()[:12], 16) / 16 ** 12 for f in files}
  for test_fraction in (0.1, 0.3):
    config.data.test_fraction, config.data.val_fraction = test_fraction, 0.2
    _, splits, _ = folder.read_manifest(config)
    got = {s: sorted(r[0] for r in rows) for s, rows in splits.items()}
    assert got["test"] == sorted(f for f in files if u[f] < test_fraction)
    assert got["val"] == sorted(f for f in files if test_fraction <= u[f] < test_fraction + 0.2)
    assert got["train"] == sorted(f for f in files if u[f] >= test_fraction + 0.2)
  assert 6 <= len(got["test"]) <= 18  # 0.3 of 40, loosely: the hash spreads the names


def test_shapes_seed_picks_the_drawn_set_and_seed_does_not(tmp_path):
  """data.shapes_seed = 5: the test split's label sets are those shapes_draw.render(5, 'test', i)
  draws; the training `seed` leaves them alone; shapes_seed 0 draws another set."""
  from conftest import tiny_shapes_config
  from mlc_jax.data.datasets import shapes_draw

  def label_rows(shapes_seed, seed):
    config = tiny_shapes_config(tmp_path / f"d{shapes_seed}_{seed}", train=4, val=2, test=8,
                                image_size=16)
    config.data.shapes_seed, config.seed = shapes_seed, seed
    matrix = np.asarray(registry.get(config).label_matrix("test"))
    return sorted(tuple(np.flatnonzero(row)) for row in matrix)

  drawn = lambda s: sorted(tuple(shapes_draw.render(s, "test", i, 16)[1]) for i in range(8))
  assert label_rows(5, 0) == drawn(5) == label_rows(5, 7)
  assert label_rows(0, 0) == drawn(0) != drawn(5)


def test_folder_val_fraction_carves_val_from_train_when_the_split_column_has_none(tmp_path):
  """A split column without val rows: data.val_fraction = 0.4 carves val out of train by the
  filename hash (hashlib by hand); test rows stay test. With val rows, nothing is carved."""
  import hashlib
  from mlc_jax.data.datasets import folder
  config = _folder(tmp_path, [])
  root = tmp_path / "images"
  files = [f"pic{i:02d}.jpg" for i in range(24)]
  for i, name in enumerate(files):
    _jpeg(str(root / name), 200 + i, (8, 8))
  split_of = lambda i: "test" if i < 4 else "train"
  (root / "labels.csv").write_text("filename,labels,split\n" + "".join(
      f"{f},cat,{split_of(i)}\n" for i, f in enumerate(files)))
  u = {f: int(hashlib.sha1(f.encode()).hexdigest()[:12], 16) / 16 ** 12 for f in files}
  config.data.val_fraction = 0.4
  _, splits, _ = folder.read_manifest(config)
  got = {s: sorted(r[0] for r in rows) for s, rows in splits.items()}
  assert got["test"] == files[:4]
  assert got["val"] == sorted(f for f in files[4:] if u[f] < 0.4) and got["val"]
  assert got["train"] == sorted(f for f in files[4:] if u[f] >= 0.4)
  (root / "labels.csv").write_text("filename,labels,split\n" + "".join(
      f"{f},cat,{'val' if i == 4 else split_of(i)}\n" for i, f in enumerate(files)))
  _, splits, _ = folder.read_manifest(config)
  assert [r[0] for r in splits["val"]] == [files[4]] and len(splits["train"]) == 19
