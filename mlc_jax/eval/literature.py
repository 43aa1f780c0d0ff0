"""Published results (resources/literature.json) and the markdown table that sets ours beside them."""
import importlib.resources
import json

TOP3 = ("CP", "CR", "CF1", "OP", "OR", "OF1")
TOPK_WORDS = {"exact": "exactly 3 labels per image",
              "min_score": "top 3 with probability >= 0.5 (ML-GCN code)"}


def load():
  """The parsed literature.json: {'sources': {method: {...}}, 'datasets': {name: [rows]}}."""
  text = importlib.resources.files("mlc_jax").joinpath("resources/literature.json").read_text()
  return json.loads(text)


def _pct(value):
  return "" if value is None else f"{value:.1f}"


def table(dataset, ours, *, k=3, topk_min_score=False):
  """Markdown for `dataset` (a registry name), or '' when the file has no published numbers for it.

  ours: [(name, metrics dict from metrics.compute)], metrics as fractions; rows print percentages.
  """
  lit = load()
  rows = lit["datasets"].get(dataset)
  if not rows:
    return ""
  with_top3 = any("top3" in r for r in rows)
  header = ["method", "mAP"] + ([f"{m}@3" for m in TOP3] + ["top-3 variant"] if with_top3 else [])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r["method"], _pct(r.get("mAP"))]
    if with_top3:
      top3 = r.get("top3", {})
      variant = TOPK_WORDS.get(r.get("topk"), "") + ("" if r.get("topk_known", True) else " (inferred)")
      cells += [_pct(top3.get(m)) for m in TOP3] + [variant if top3 else ""]
    lines.append("| " + " | ".join(cells) + " |")
  ours_variant = TOPK_WORDS["min_score" if topk_min_score else "exact"]
  for name, m in ours:
    cells = [f"**{name}**", _pct(100 * m["mAP"])]
    if with_top3:
      if k == 3:
        cells += [_pct(100 * m[f"{n}_top3"]) for n in TOP3] + [ours_variant]
      else:  # our top-k is another k: not comparable, leave the cells empty
        cells += [""] * len(TOP3) + [f"(ours use k={k})"]
    lines.append("| " + " | ".join(cells) + " |")
  cited = sorted({r["method"] for r in rows})
  refs = [f"- {m}: {lit['sources'][m]['paper']}, arXiv:{lit['sources'][m]['arxiv']}"
          + (f"; {lit['sources'][m]['backbone']}" if lit['sources'][m].get('backbone') else "")
          + (f"; {lit['sources'][m]['note']}" if lit['sources'][m].get('note') else "")
          for m in cited]
  return "\n".join(lines + ["", "Sources:"] + refs) + "\n"
