"""One image reader: the files of tests/image_fixtures.py give their numpy-computed pixels through
the reader, a folder dataset's pipeline, Classifier and --mode=predict; a bomb is refused from its
header, by name, without being decoded. (The exported server: tests/test_inference_export.py.)"""
import importlib.util
import os
import pathlib
import resource
import warnings

import numpy as np
import pytest
from PIL import Image

import image_fixtures
from conftest import default_config
from mlc_jax.data import pixels as images, pipeline, reader, registry
from mlc_jax.errors import UserError
from mlc_jax.inference import predict
from mlc_jax.inference.classifier import Classifier

SIZE = 32


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fixtures")
  expected, bomb = image_fixtures.write(folder, SIZE)
  return folder, expected, bomb


def test_reader_gives_each_kind_its_numpy_pixels(fixtures):
  folder, expected, bomb = fixtures
  for name, want in expected.items():
    np.testing.assert_array_equal(reader.read(folder / name), want, err_msg=name)
    np.testing.assert_array_equal(reader.read((folder / name).read_bytes()), want, err_msg=name)
    with Image.open(folder / name) as image:  # a PIL image the user opened gets the same rules
      np.testing.assert_array_equal(images.to_array(image), want, err_msg=name)
  # stored JPEGs (COCO, VOC) are decoded by the pipeline's TensorFlow decoder: the same pixels
  np.testing.assert_array_equal(images.decode((folder / "photo.jpg").read_bytes()).numpy(),
                                expected["photo.jpg"])
  stored = np.rot90(expected["exif6.jpg"], k=1)  # undo the clockwise turn: the stored pixels
  np.testing.assert_array_equal(reader.read(folder / "exif6.jpg", exif=False), stored)
  assert expected["exif6.jpg"].shape == (SIZE * 3 // 2, SIZE, 3)  # upright: taller than wide
  with pytest.raises(reader.ImageError, match=r"too large \(12000 x 12000 = 144.0 megapixels, "
                     r"over data.max_pixels=90,000,000; raise data.max_pixels") as e:
    reader.read(folder / bomb)
  assert e.value.kind == reader.TOO_LARGE
  grey = folder / "grey.png"
  with pytest.raises(reader.ImageError, match="too large"):
    reader.read(grey, max_pixels=SIZE * SIZE - 1)
  np.testing.assert_array_equal(reader.read(grey, max_pixels=SIZE * SIZE), expected["grey.png"])


def _peak_growth_in_child(work):
  """Runs work() in a forked child (PIL and numpy only) -> its peak RSS growth in bytes."""
  read_fd, write_fd = os.pipe()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # fork() of a multi-threaded process: the child uses no threads
    pid = os.fork()
  if pid == 0:  # child
    try:
      os.close(read_fd)
      start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      with open("/proc/self/statm") as f:
        start = max(start, int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024)
      work()
      peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      os.write(write_fd, str((peak - start) * 1024).encode())
    finally:
      os._exit(0)
  os.close(write_fd)
  with os.fdopen(read_fd) as f:
    text = f.read()
  os.waitpid(pid, 0)
  return int(text)


def test_bomb_memory_stays_bounded_by_the_largest_allowed_image(fixtures):
  folder, expected, bomb = fixtures
  allowed = folder / "allowed.png"  # 2000 x 2000 RGB: 12 MB decoded, allowed
  Image.fromarray(np.zeros((2000, 2000, 3), np.uint8)).save(allowed)

  def work():
    for _ in range(4):
      try:
        reader.read(folder / bomb)
      except reader.ImageError:  # test_reader_... checks that it is refused; here: what it costs
        pass
    reader.read(allowed)

  growth = _peak_growth_in_child(work)
  assert growth < 120e6, f"{growth / 1e6:.0f} MB"  # decoding the bomb alone takes 432 MB as RGB


def _fixture_folder(tmp_path, fixtures):
  """A folder dataset: each fixture in test with its own label; plain images in train and val."""
  folder, expected, bomb = fixtures
  root = tmp_path / "images"
  root.mkdir()
  names = sorted(expected) + [bomb]
  for name in names:
    (root / name).write_bytes((folder / name).read_bytes())
  rng = np.random.default_rng(1)
  rows = ["filename,labels,split"] + [f"{n},{n.replace('.', '_')},test" for n in names]
  for i, split in enumerate(["train", "train", "val"]):
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    rows.append(f"p{i}.png,{'grey_png'},{split}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  config = default_config()
  config.dataset, config.image_size = "folder", SIZE
  config.data.manual_dir, config.data.data_dir = str(root), str(tmp_path / "tfds")
  return config, root


def test_pipeline_classifier_and_predict_give_the_reader_pixels(tmp_path, fixtures):
  folder, expected, bomb = fixtures
  config, root = _fixture_folder(tmp_path, fixtures)
  source = registry.get(config)
  assert [(os.path.basename(s["path"]), s["reason"][:9]) for s in source.skipped] == [
      (bomb, "too large")]
  want = {n: images.resize(a, SIZE).numpy() for n, a in expected.items()}  # resize of the truth
  for n in ("grey16.png", "palette.gif", "rgba.png", "lossless.webp"):
    np.testing.assert_array_equal(want[n], expected[n])  # square ones: the resize is the identity
  got = {}
  for batch in pipeline.batches(source, "test", batch_size=4, train=False, config=config):
    for image, target, keep in zip(batch["image"], batch["labels"], batch["mask"]):
      if keep:
        got[source.labels[int(np.argmax(target))].replace("_", ".")] = np.asarray(image)
  assert sorted(got) == sorted(expected)
  for name in expected:
    np.testing.assert_array_equal(got[name], want[name], err_msg=f"pipeline: {name}")

  classifier = Classifier(None, source.labels, image_size=SIZE)
  paths = [root / n for n in sorted(expected)]
  arrays = classifier.images_array(paths)
  for name, array in zip(sorted(expected), arrays):
    np.testing.assert_array_equal(array, want[name], err_msg=f"Classifier: {name}")
  with pytest.raises(UserError, match=f"image {root / bomb}: too large"):
    classifier.images_array([paths[0], root / bomb])

  kept, arrays, skipped = predict.read_images([*paths, root / bomb], SIZE)
  assert kept == paths and [(p, k) for p, k, _ in skipped] == [(root / bomb, predict.TOO_LARGE)]
  for name, array in zip(sorted(expected), arrays):
    np.testing.assert_array_equal(array, want[name], err_msg=f"predict: {name}")


def test_predict_cli_names_the_bomb_and_counts_it(tmp_path, fixtures, monkeypatch, capsys):
  folder, expected, bomb = fixtures
  fed = []

  class Stub:  # classifier.load's classifier without a trained run
    labels, image_size, resize, exif_orientation = ["a"], SIZE, "plain", True
    max_pixels = reader.DEFAULT_MAX_PIXELS  # as Classifier resolves it

    def predict(self, arrays):
      fed.append(np.asarray(arrays))
      return np.zeros((len(arrays), 1), np.float32)

  monkeypatch.setattr(predict.classifier_lib, "load", lambda *args: Stub())
  monkeypatch.setattr(predict, "model_note", lambda *args: "the stub")  # no workdir to describe
  result = predict.predict_cli(tmp_path / "run", [str(folder / "exif6.jpg"), str(folder / bomb)])
  err = capsys.readouterr().err
  assert f"skipped {folder / bomb}: too large (12000 x 12000" in err
  assert err.splitlines()[-1] == "predicted 1 images; 1 of 2 files skipped: 1 too large"
  assert result["filenames"] == [str(folder / "exif6.jpg")]
  upright = images.resize(expected["upright.png"], SIZE).numpy()
  np.testing.assert_array_equal(fed[0][0], upright)  # fed upright, as its upright copy is


def test_server_resize_follows_the_package_within_one_level():
  spec = importlib.util.spec_from_file_location(
      "serve", pathlib.Path(images.__file__).parents[1] / "resources" / "serve.py")
  serve = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(serve)
  rng = np.random.default_rng(0)
  differing = total = 0
  for h, w, size, method in [(97, 131, 32, "plain"), (20, 300, 64, "crop"), (325, 297, 48, "crop"),
                             (31, 17, 64, "plain"), (235, 259, 224, "crop"), (64, 64, 64, "crop")]:
    array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ours, theirs = images.resize(array, size, method).numpy(), serve.resize(array, size, method)
    assert ours.shape == theirs.shape == (size, size, 3)
    diff = np.abs(ours.astype(int) - theirs)
    assert diff.max() <= 1, (h, w, size, method)
    differing, total = differing + int((diff > 0).sum()), total + diff.size
  assert differing / total < 0.01


def test_exif_orientation_off_gives_the_stored_pixels_to_the_pipeline(tmp_path, fixtures):
  """data.exif_orientation = False: a folder dataset's pipeline gives exif6.jpg as stored (the
  upright truth turned back, numpy's rot90), not upright as with the default True."""
  folder, expected, _ = fixtures
  config, _ = _fixture_folder(tmp_path, fixtures)
  config.data.exif_orientation = False
  source = registry.get(config)
  got = None
  for batch in pipeline.batches(source, "test", batch_size=4, train=False, config=config):
    for image, target, keep in zip(batch["image"], batch["labels"], batch["mask"]):
      if keep and source.labels[int(np.argmax(target))] == "exif6_jpg":
        got = np.asarray(image)
  stored = np.rot90(expected["exif6.jpg"], k=1)
  np.testing.assert_array_equal(got, images.resize(stored, SIZE).numpy())
  assert not np.array_equal(got, images.resize(expected["exif6.jpg"], SIZE).numpy())
