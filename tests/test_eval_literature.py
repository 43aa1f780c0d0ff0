"""The literature table says what it compares: each published row's protocol beside ours.

Expectations are written by hand from literature.json's rows and the protocol dicts built here.
"""
import re

import pytest

from mlc_jax.eval import literature

SPLIT = "train2014 (less data.val_fraction for validation) / val2014 as test"
# a COCO run evaluated as ML-GCN does, but with exactly 3 labels, 224 px and VGG16
OURS = {"name": "literature", "dataset": "coco/2014", "split": SPLIT,
        "images": {"train": 78000, "val": 4081, "test": 40137}, "unlabeled_images": "dropped",
        "difficult": "n/a", "topk": "exact", "image_size": 224, "backbone": "VGG16",
        "cf1_definition": "harmonic mean of CP and CR",
        "ap": "non-interpolated (sklearn average_precision_score)"}
# a published protocol identical to OURS (train count as ours, so it does not differ)
SAME = {"split": "train2014 / val2014 as test", "images": {"train": 78000, "test": 40137},
        "unlabeled_images": "dropped", "difficult": "n/a", "topk": "exact", "image_size": 224,
        "backbone": "VGG16", "cf1_definition": "harmonic mean of CP and CR",
        "ap": "non-interpolated (some other code)"}
METRICS = {"mAP": 0.5, **{f"{m}_top3": 0.25 for m in literature.TOP3}}
VOCAB = {"unlabeled_images": {"dropped", "kept", "unstated", "n/a"},
         "difficult": {"ignored", "positive", "negative", "unstated", "n/a"},
         "topk": {"exact", "min_score", "beam_leq3", "unstated", "n/a"},
         "cf1_definition": {"harmonic mean of CP and CR", "mean of per-class F1", "unstated", "n/a"},
         "ap": {"non-interpolated", "interpolated", "unstated", "n/a"}}
FIGURE_WORDS = {"secondary", "readme", "memory", "unknown", "paper"}
PROTOCOL_WORDS = {"code", "readme", "author_issue", "inferred", "convention", "memory", "secondary",
                  "none"}


def _rows(dataset):
  return {r["method"]: r for r in literature.load()["datasets"][dataset]}


def _cell(table, method):
  """The 'same protocol as ours?' cell of `method`'s row."""
  line = next(l for l in table.splitlines() if l.startswith(f"| {method} |"))
  return line.rstrip(" |").rsplit(" | ", 1)[1]


def test_identical_protocol_has_no_differences():
  assert literature.differences(SAME, OURS) == []
  assert literature.same_protocol(SAME, OURS) == "yes"


@pytest.mark.parametrize("key,value,expected", [
    ("split", "train2017 / val2017 as test", "split: theirs val2017, ours val2014"),
    ("images", {"train": 78000, "test": 40504}, "test images: theirs 40,504, ours 40,137"),
    ("images", {"train": 82081, "test": 40137},
     "train images: theirs 82,081, ours 78,000 (+4,081 validation)"),
    ("unlabeled_images", "kept", "unlabeled images: theirs kept, ours dropped"),
    ("topk", "min_score", "top-3: theirs top 3 with p >= 0.5, ours exactly 3"),
    ("topk", "beam_leq3", "top-3: theirs up to 3 via beam search, ours exactly 3"),
    ("image_size", 448, "image size: theirs 448 px, ours 224 px"),
    ("backbone", "ResNet-101", "backbone: theirs ResNet-101, ours VGG16"),
    ("cf1_definition", "mean of per-class F1",
     "CF1: theirs mean of per-class F1, ours harmonic mean of CP and CR"),
    ("ap", "interpolated (VOC2012-style)", "AP: theirs interpolated, ours non-interpolated"),
])
def test_each_differing_field_is_named(key, value, expected):
  theirs = dict(SAME, **{key: value})
  assert literature.differences(theirs, OURS) == [expected]
  assert literature.same_protocol(theirs, OURS) == f"no: {expected}"


@pytest.mark.parametrize("key,expected", [
    ("split", "split unstated"), ("images", "image counts unstated"),
    ("unlabeled_images", "unlabeled images unstated"), ("topk", "top-3 unstated"),
    ("image_size", "image size unstated"), ("backbone", "backbone unstated"),
    ("cf1_definition", "CF1 unstated"), ("ap", "AP unstated")])
def test_unstated_fields_are_reported(key, expected):
  theirs = dict(SAME, **{key: "unstated"})
  assert literature.differences(theirs, OURS) == [expected]
  assert literature.same_protocol(theirs, OURS) == f"unknown: {expected}"


def test_unstated_hint_and_mixed_verdict():
  theirs = dict(SAME, ap="unstated (possibly MAP@10)", image_size=448)
  assert literature.differences(theirs, OURS) == ["image size: theirs 448 px, ours 224 px",
                                                  "AP unstated (possibly MAP@10)"]
  assert literature.same_protocol(theirs, OURS) == (
      "no: image size: theirs 448 px, ours 224 px; AP unstated (possibly MAP@10)")


def test_difficult_and_not_applicable():
  voc = dict(SAME, difficult="ignored")
  ours_voc = dict(OURS, difficult="unknown (-1) at evaluation")
  assert literature.differences(voc, ours_voc) == []  # our -1 (unknown) entries are left out too
  assert literature.differences(voc, dict(OURS, difficult="positive")) == [
      "difficult: theirs ignored at evaluation, ours positive"]
  assert literature.differences(dict(SAME, difficult="unstated"), ours_voc) == ["difficult unstated"]
  # n/a on either side: the field is not compared (no top-3 figures, no difficult objects)
  assert literature.differences(dict(SAME, topk="n/a", cf1_definition="n/a"),
                                dict(OURS, topk="min_score", cf1_definition="x")) == []
  assert literature.differences(voc, OURS) == []  # COCO has no difficult objects


def test_missing_fields_of_ours_are_unknown():
  ours = {k: v for k, v in OURS.items() if k not in ("image_size", "images")}
  assert literature.differences(SAME, ours) == ["image counts: ours not recorded",
                                                "image size: ours not recorded"]
  assert literature.same_protocol(SAME, None) == "unknown: our protocol not recorded"


def test_coco_table_compares_each_published_row():
  table = literature.table("coco/2014", [("ours", METRICS)], OURS)
  assert table.splitlines()[0].endswith("| top-3 variant | same protocol as ours? |")
  methods = [l.split(" | ")[0][2:] for l in table.splitlines()[2:] if l.startswith("| ")]
  assert methods == ["WARP", "CNN-RNN", "ResNet-SRN", "ML-GCN", "**ours**"]
  assert _cell(table, "ML-GCN") == (
      "no: train images: theirs 82,081, ours 78,000 (+4,081 validation); "
      "top-3: theirs top 3 with p >= 0.5, ours exactly 3; image size: theirs 448 px, ours 224 px; "
      "backbone: theirs ResNet-101, ours VGG16")
  srn = _cell(table, "ResNet-SRN")
  assert srn.startswith("no: test images: theirs 40,504, ours 40,137;")
  for phrase in ("unlabeled images: theirs kept, ours dropped",
                 "top-3: theirs top 3 with p >= 0.5, ours exactly 3", "image size unstated",
                 "CF1: theirs mean of per-class F1, ours harmonic mean of CP and CR",
                 "AP: theirs interpolated, ours non-interpolated"):
    assert phrase in srn
  assert "top-3: theirs up to 3 via beam search, ours exactly 3" in _cell(table, "CNN-RNN")
  assert _cell(table, "WARP") == ("unknown: image counts unstated; unlabeled images unstated; "
                                  "top-3 unstated; image size unstated; backbone unstated")
  ours_row = "| **ours** | 50.0 | " + "25.0 | " * 6 + "exactly 3 labels per image |  |"
  assert ours_row in table


def test_table_with_a_matching_protocol_says_yes():
  """ML-GCN's own protocol as ours (VOC 2007): its row says yes, the others do not."""
  ours = {"split": "trainval (less data.val_fraction for validation) / test as test",
          "images": {"train": 5011, "test": 4952}, "unlabeled_images": "kept",
          "difficult": "unknown (-1) at evaluation", "topk": "min_score", "image_size": 448,
          "backbone": "ResNet-101", "cf1_definition": "harmonic mean of CP and CR",
          "ap": "non-interpolated (sklearn average_precision_score)"}
  table = literature.table("voc/2007", [("ours", METRICS)], ours, topk_min_score=True)
  assert "| ML-GCN | 94.0 | yes |" in table
  assert _cell(table, "HCP").startswith("no: image counts unstated; difficult unstated; ")
  assert _cell(table, "CNN-RNN") == ("no: image counts unstated; difficult unstated; image size "
                                     "unstated; backbone: theirs VGG16, ours ResNet-101; AP unstated")


def test_table_without_our_protocol_and_sources():
  table = literature.table("nus_wide", [("ours", METRICS)])
  for method in ("KNN", "WARP", "CNN-RNN", "ResNet-SRN", "ML-GCN"):
    assert _cell(table, method) == "unknown: our protocol not recorded"
  sources = table.split("Sources:\n")[1].splitlines()
  assert [s.split(":")[0] for s in sources] == ["- CNN-RNN", "- KNN", "- ML-GCN", "- ResNet-SRN",
                                                "- WARP"]
  ml_gcn = next(s for s in sources if s.startswith("- ML-GCN"))
  assert "arXiv:1904.03582" in ml_gcn and "figures: readme" in ml_gcn and "protocol: none" in ml_gcn
  assert "possibly MAP@10" in next(s for s in sources if s.startswith("- CNN-RNN"))
  assert literature.table("shapes", [("ours", METRICS)], OURS) == ""


def test_published_figures_and_protocol_facts():
  """Figures and protocol facts the notes established (hand-copied here)."""
  coco = _rows("coco/2014")
  assert coco["ML-GCN"]["protocol"]["images"] == {"train": 82081, "test": 40137}
  assert coco["ML-GCN"]["protocol"]["image_size"] == 448
  assert coco["ResNet-SRN"]["protocol"]["topk"] == "min_score"
  assert coco["ResNet-SRN"]["protocol"]["cf1_definition"] == "mean of per-class F1"
  assert coco["CNN-RNN"]["protocol"]["topk"] == "beam_leq3"
  assert coco["WARP"]["protocol"]["topk"] == "unstated"
  assert coco["CNN-RNN"]["protocol"]["backbone"] == "VGG16" and coco["CNN-RNN"]["mAP"] == 61.2
  assert _rows("voc/2007")["CNN-RNN"]["mAP"] == 84.0
  assert _rows("voc/2007")["ML-GCN"]["protocol"]["difficult"] == "ignored"
  nus = _rows("nus_wide")
  assert nus["CNN-RNN"]["mAP"] == 56.1 and "MAP@10" in nus["CNN-RNN"]["protocol"]["ap"]
  assert nus["ML-GCN"]["verification"]["protocol"] == "none"
  assert {"KNN", "WARP", "CNN-RNN", "ResNet-SRN"} <= set(nus)


def _words(text):
  """The source words of a verification string: 'a (x) + b' -> {'a', 'b'}."""
  return {part.split(" (")[0].strip() for part in text.split(" + ")}


@pytest.mark.parametrize("dataset", sorted(literature.load()["datasets"]))
def test_every_row_has_a_complete_protocol(dataset):
  lit = literature.load()
  for row in lit["datasets"][dataset]:
    where = f"{dataset} {row['method']}"
    assert row["method"] in lit["sources"], where
    assert re.fullmatch(r"\d{4}\.\d{4,5}", lit["sources"][row["method"]]["arxiv"]), where
    protocol = row["protocol"]
    assert set(protocol) == set(literature.FIELDS), where
    images = protocol["images"]
    counts = images == "unstated" or (
        set(images) == {"train", "test"} and all(isinstance(n, int) and n > 0 for n in images.values()))
    assert counts, where
    assert protocol["image_size"] == "unstated" or isinstance(protocol["image_size"], int), where
    for key in ("split", "backbone"):
      assert isinstance(protocol[key], str) and protocol[key], where
    for key, allowed in VOCAB.items():
      value = protocol[key]
      assert value.split(" (")[0] in allowed, f"{where} {key}={value!r}"
    # the protocol says which figures exist: top-3 variant and CF1 iff top-3 figures, AP iff mAP
    has_top3, has_map = "top3" in row, row.get("mAP") is not None
    assert (protocol["topk"] != "n/a") == has_top3, where
    assert (protocol["cf1_definition"] != "n/a") == has_top3, where
    assert (protocol["ap"] != "n/a") == has_map, where
    if has_top3:
      assert set(row["top3"]) == set(literature.TOP3), where
    assert _words(row["verification"]["figures"]) <= FIGURE_WORDS, where
    assert _words(row["verification"]["protocol"]) <= PROTOCOL_WORDS, where
    assert "paper" not in _words(row["verification"]["figures"]), where  # none was checked
    assert row["evidence"] and row["table"], where
    assert not re.search(r"\bTable \d", row["table"]), where  # no table number nobody saw
    assert set(row.get("protocol_notes", {})) <= set(literature.FIELDS), where
