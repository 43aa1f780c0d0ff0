"""report.md of WORKDIR/eval/SPLIT from the saved results there (metrics.json + scores.npz each).

Results: the fine-tuned model in eval/SPLIT itself, the ImageNet baseline in eval/SPLIT/baseline,
external predictions files in eval/SPLIT/predictions_NAME. Whatever exists is reported, so
evaluate, baseline and a predictions run each rewrite one report that sets them side by side.
"""
import json
import pathlib

import numpy as np

from mlc_jax import metrics, workdir as workdir_lib
from mlc_jax.eval import literature, protocol

# (key, label, percent?) rows of the summary table
SUMMARY = [("mAP", "mAP", True)] + [(m, m, True) for m in ("CP", "CR", "CF1", "OP", "OR", "OF1")] + [
    ("f1_macro", "F1 macro", True), ("f1_micro", "F1 micro", True), ("f1_samples", "F1 samples", True),
    ("jaccard_samples", "Jaccard samples", True), ("subset_accuracy", "subset accuracy", True),
    ("hamming_loss", "Hamming loss", False), ("lrap", "LRAP", True),
    ("ranking_loss", "ranking loss", False), ("coverage", "coverage", False),
    ("one_error", "one-error", True)]
TOPK_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def read_result(directory):
  """(metrics.json dict, scores.npz dict of arrays) of a saved result, or None when absent."""
  directory = pathlib.Path(directory)
  if not (directory / "metrics.json").is_file():
    return None
  doc = json.loads((directory / "metrics.json").read_text())
  with np.load(directory / "scores.npz") as z:
    arrays = {k: z[k] for k in z.files}
  return doc, arrays


def fmt(value, percent):
  """A metric cell: percentages with 2 decimals, other values with 4."""
  if value is None:
    return ""
  return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _columns(model, k, head=None):
  """[(column name, metrics dict)] for the summary: threshold 0.5, then tuned thresholds if any,
  then the head alone on the frozen backbone (eval.head_alone) if scored."""
  doc = model[0]
  cols = [(f"threshold {doc['meta']['threshold']}", doc["metrics"])]
  if doc.get("tuned"):
    cols.append((f"per-class thresholds tuned on {doc['tuned']['tuned_on']}", doc["tuned"]["metrics"]))
  if head is not None:
    cols.append(("head alone (frozen backbone), threshold "
                 f"{head[0]['meta']['threshold']}", head[0]["metrics"]))
  return cols


def summary_table(columns, k):
  """Markdown table: one row per metric (percent where it is a rate), one column per result."""
  rows = [[label] + [fmt(m.get(key), pct) for _, m in columns] for key, label, pct in SUMMARY]
  rows += [[f"{key} top-{k}"] + [fmt(m.get(f"{key}_top{k}"), True) for _, m in columns]
           for key in TOPK_KEYS]
  return _table(["metric"] + [name for name, _ in columns], rows)


def per_class_section(per_class, thresholds=None):
  """Per-class table sorted by AP (best first)."""
  order = sorted(range(len(per_class)), key=lambda i: -per_class[i]["AP"])
  header = ["class", "AP", "precision", "recall", "F1", "support"]
  if thresholds is not None:
    header.append("tuned threshold")
  rows = []
  for i in order:
    r = per_class[i]
    row = [r["name"], fmt(r["AP"], True), fmt(r["precision"], True), fmt(r["recall"], True),
           fmt(r["F1"], True), r["support"]]
    if thresholds is not None:
      row.append(f"{thresholds[i]:.3f}")
    rows.append(row)
  return _table(header, rows)


def _subset_metrics(result, columns, meta):
  """metrics.compute of a saved result restricted to `columns` (indices)."""
  scores, labels = result[1]["scores"][:, columns], result[1]["labels"][:, columns]
  return metrics.compute(scores, labels, k=min(meta["k"], len(columns)), threshold=meta["threshold"],
                         topk_min_score=meta["topk_min_score"])


def _imagenet_name(source):
  """'VGG16 (ImageNet, unmodified)' -> 'ImageNet VGG16' (any backbone the baseline ran)."""
  return "ImageNet " + source.split(" (ImageNet")[0]


def _baseline_section(base, model, base_dir):
  doc = base[0]
  meta = doc["meta"]
  names = list(base[1]["names"])
  mapped = [names.index(n) for n in meta["mapped"]]
  source = meta.get("source", "VGG16 (ImageNet, unmodified)")
  imagenet = "ImageNet" in source
  cols = [(f"{_imagenet_name(source)}, no fine-tuning" if imagenet else "single-label source model",
           doc["metrics"])]
  if model is not None and list(model[1]["names"]) == names:
    cols.append((f"fine-tuned, same {len(mapped)} classes", _subset_metrics(model, mapped, meta)))
    cols.append((f"fine-tuned, all {len(names)} classes", model[0]["metrics"]))
  kind = "ImageNet" if imagenet else "source"
  title = _imagenet_name(source) if imagenet else source
  text = [f"## Baseline: {title} without fine-tuning\n",
          f"Its softmax over the {kind} classes mapped onto the labels ({meta['mapping']}; a "
          f"label's score is the {meta['reduce']} of its {kind} classes' probabilities); "
          f"weights `{meta['weights']}`.",
          f"Labels without a {kind} counterpart, left out of the means: "
          f"{', '.join(meta['unmapped']) or 'none'}.\n", summary_table(cols, meta["k"]),
          "![AP per class, baseline](baseline/ap_per_class.png)\n",
          "![precision-recall, baseline](baseline/pr_curves.png)\n"]
  if not imagenet and model is not None and list(model[1]["names"]) == names == meta["mapped"]:
    text += [f"Each image's top k labels, k = 1-4: the {source} against the fine-tuned "
             "multi-label model.\n",
             topk_table([(source, doc, base[1]), ("fine-tuned multi-label model", model[0],
                                                   model[1])])]
  if (base_dir / "examples.png").is_file():
    text.append("![test images with the baseline's labels](baseline/examples.png)\n")
  return "\n".join(text)


def _compare_pairs(eval_dir, compare):
  """eval.compare's ((label, workdir), ...): as given (then kept in eval_dir/compare.json, so a
  later report written without them keeps the rows), else as kept; () when neither."""
  kept = eval_dir / "compare.json"
  if compare:
    pairs = [[str(label), str(other)] for label, other in compare]
    workdir_lib.write_text(kept, json.dumps(pairs))
    return pairs
  try:
    return json.loads(kept.read_text()) if kept.is_file() else []
  except (OSError, ValueError):
    return []


def _compare_section(eval_dir, model, head, compare):
  """Rows of the runs eval.compare names ((label, workdir), ...; e.g. the same recipe from a random
  backbone) on the same split, beside this run's fine-tuned model and head alone."""
  pairs = _compare_pairs(eval_dir, compare)
  if not pairs or model is None:
    return []
  k = model[0]["meta"]["k"]
  rows = [("this run: fine-tuned", model[0]["metrics"])]
  if head is not None:
    rows.append(("this run: head alone (frozen backbone)", head[0]["metrics"]))
  skipped = []
  for label, other in pairs:
    d = workdir_lib.eval_dir(other, eval_dir.name)
    for name, result in ((f"{label}: fine-tuned", read_result(d)),
                         (f"{label}: head alone", read_result(d / "head"))):
      if result is None:
        continue
      if not np.array_equal(result[1]["labels"], model[1]["labels"]):
        skipped.append(f"{name} ({d}: other images)")
        continue
      rows.append((name, result[0]["metrics"]))
  keys = [("mAP", "mAP"), (f"CF1_top{k}", f"CF1 top-{k}"), (f"OF1_top{k}", f"OF1 top-{k}"),
          ("CF1", "CF1"), ("OF1", "OF1"), ("subset_accuracy", "subset accuracy")]
  table = _table(["run"] + [label for _, label in keys],
                 [[name] + [fmt(m.get(key), True) for key, _ in keys] for name, m in rows])
  return ["## Comparison on the same test images\n", table,
          f"Left out (different images): {', '.join(skipped)}.\n" if skipped else ""]


def topk_table(results, ks=(1, 2, 3, 4)):
  """Markdown table of top-k precision/recall/F1 per image (OP, OR, OF1) and CF1, k = 1..4, for
  each (name, metrics.json doc, scores.npz arrays) (the proposal's single- vs multi-label question)."""
  rows = []
  for name, doc, arrays in results:
    meta = doc["meta"]
    for k in ks:
      m = metrics.compute(arrays["scores"], arrays["labels"], k=k, threshold=meta["threshold"],
                          topk_min_score=meta["topk_min_score"])
      rows.append([name, k] + [fmt(m[f"{key}_top{k}"], True) for key in ("OP", "OR", "OF1", "CF1")])
  return _table(["model", "k", "OP top-k", "OR top-k", "OF1 top-k", "CF1 top-k"], rows)


def _predictions_section(pred, model):
  doc = pred[0]
  meta = doc["meta"]
  cols = [(f"predictions `{meta['file']}`", doc["metrics"])]
  if model is not None:
    cols.append(("fine-tuned", model[0]["metrics"]))
  return "\n".join([f"## External predictions: {meta['file']}\n",
                    f"Free-text tags mapped onto the labels through `{meta['synonyms']}`; tags "
                    f"naming no label: {meta['unknown_tags']} ({meta.get('unknown_tag_count', 0)} "
                    "dropped).\n", summary_table(cols, meta["k"])])


def _sources_sections(eval_dir):
  """A mixture's parts (eval_dir/sources/ALIAS): each its summary and its published rows."""
  out = []
  for part in sorted((eval_dir / "sources").glob("*")):
    result = read_result(part)
    if result is None:
      continue
    meta, k = result[0]["meta"], result[0]["meta"]["k"]
    out += [f"## Source {part.name}: {meta['dataset']} ({meta['num_images']} images, "
            f"{len(result[1]['names'])} of the union's labels, its own protocol)\n",
            *protocol.lines(meta.get("protocol")), summary_table(_columns(result, k), k),
            f"Full report: [sources/{part.name}/report.md](sources/{part.name}/report.md).\n"]
    table = literature.table(meta["dataset"], [("ours, this model on this source",
                                                result[0]["metrics"])],
                             meta.get("protocol"), k=k, topk_min_score=meta["topk_min_score"])
    if table:
      out += [f"Published results on {meta['dataset']}:\n", table]
  return out


def write(eval_dir, compare=()):
  """Writes eval_dir/report.md from the results found there (and those of the runs `compare`
  names: eval.compare); returns its path."""
  eval_dir = pathlib.Path(eval_dir)
  model = read_result(eval_dir)
  head = read_result(eval_dir / "head")
  base = read_result(eval_dir / "baseline")
  preds = [(d, read_result(d)) for d in sorted(eval_dir.glob("predictions_*"))]
  preds = [(d, r) for d, r in preds if r is not None]
  first = model or base or (preds[0][1] if preds else None)
  if first is None:
    raise FileNotFoundError(f"no evaluation results in {eval_dir}")
  meta = first[0]["meta"]
  k = meta["k"]
  variant = (f"the top {k} labels with probability >= {meta['threshold']}" if meta["topk_min_score"]
             else f"exactly the top {k} labels of every image")
  out = [f"# Evaluation: {meta['dataset']}, split {meta['split']}\n",
         f"{meta['num_images']} images, {len(first[1]['names'])} classes. Rates in percent. "
         f"Threshold {meta['threshold']}; top-{k} metrics use {variant}.\n",
         *protocol.lines(meta.get("protocol"))]
  if model is not None:
    mmeta = model[0]["meta"]
    out += ["## Fine-tuned model\n",
            f"Checkpoint: {mmeta.get('checkpoint', '')}.\n",
            summary_table(_columns(model, k, head), k),
            (f"The head-alone column is {head[0]['meta']['checkpoint']}: the head trained on the "
             "frozen backbone's features, before fine-tuning.\n") if head is not None else "",
            "Rank metrics (mAP, LRAP, ranking loss, coverage, one-error, top-k) do not depend on "
            "thresholds: the tuned column leaves them out.\n" if model[0].get("tuned") else "",
            "### Per class (sorted by AP)\n",
            per_class_section(model[0]["per_class"],
                              model[0]["tuned"]["thresholds"] if model[0].get("tuned") else None),
            "### Plots\n",
            "![AP per class](ap_per_class.png)\n", "![precision-recall](pr_curves.png)\n"]
    if (eval_dir / "training_curves.png").is_file():
      out.append("![training curves](training_curves.png)\n")
    if (eval_dir / "examples.png").is_file():
      out.append("![test images with predicted and true labels](examples.png)\n")
  ours = []
  if model is not None:
    backbone = model[0]["meta"].get("protocol", {}).get("backbone", "VGG16").split(" (")[0]
    ours.append((f"ours, fine-tuned {backbone}", model[0]["metrics"]))
  if base is not None:
    source = base[0]["meta"].get("source", "VGG16 (ImageNet, unmodified)")
    ours.append((f"ours, {_imagenet_name(source) if 'ImageNet' in source else source} baseline",
                 base[0]["metrics"]))
  table = literature.table(meta["dataset"], ours, meta.get("protocol"), k=k,
                           topk_min_score=meta["topk_min_score"])
  if table:
    out += ["## Published results\n",
            "The last column says how each published row's protocol differs from ours; the baseline "
            "row covers only its mapped classes.\n", table]
  out += _compare_section(eval_dir, model, head, compare)
  out += _sources_sections(eval_dir)
  if base is not None:
    out.append(_baseline_section(base, model, eval_dir / "baseline"))
  for _, pred in preds:
    out.append(_predictions_section(pred, model))
  path = eval_dir / "report.md"
  workdir_lib.write_text(path, "\n".join(out))
  return path
