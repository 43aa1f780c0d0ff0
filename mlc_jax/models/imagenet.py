"""The 1000 ImageNet classes in Keras's output order (sorted WordNet ids), from resources/."""
import importlib.resources


def _read_classes():
  text = importlib.resources.files("mlc_jax").joinpath("resources/imagenet_classes.tsv").read_text()
  rows = [line.split("\t") for line in text.splitlines()[1:] if line]
  return [row[1] for row in rows], [row[2] for row in rows]


# The 1000 ImageNet classes in Keras's output order (sorted WordNet ids).
IMAGENET_WNIDS, IMAGENET_CLASSES = _read_classes()
