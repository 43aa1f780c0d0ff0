"""Published results (resources/literature.json) and the markdown table that sets ours beside them.

Each published row records its protocol (split, image counts, unlabeled images, difficult objects,
top-3 variant, image size, backbone, CF1 and AP definitions); `differences` compares it with the
protocol our evaluation writes to metrics.json, so the table says, row by row, whether the numbers
were measured the way ours were. Each row also says which table its figures were checked against
('verification'); the rendered table marks rows found in no source ('unverified'), prints both
values where sources disagree ('a / b'), gives CNN-RNN's MAP@10 its own column (never mAP) and
marks the state-of-the-art reference rows.
"""
import importlib.resources
import json

TOP3 = ("CP", "CR", "CF1", "OP", "OR", "OF1")
TOPK_WORDS = {"exact": "exactly 3 labels per image",
              "min_score": "top 3 with probability >= 0.5",
              "beam_leq3": "up to 3 labels (beam search, no minimum length)",
              "unstated": "unstated"}
# the protocol fields every published row records, in the order differences reports them
FIELDS = ("split", "images", "unlabeled_images", "difficult", "topk", "image_size", "backbone",
          "cf1_definition", "ap")
LABELS = {"split": "split", "images": "image counts", "unlabeled_images": "unlabeled images",
          "difficult": "difficult", "topk": "top-3", "image_size": "image size",
          "backbone": "backbone", "cf1_definition": "CF1", "ap": "AP"}
TOPK_SHORT = {"exact": "exactly 3", "min_score": "top 3 with p >= 0.5",
              "beam_leq3": "up to 3 via beam search"}
# our metrics.json words for difficult objects -> the literature's
OUR_DIFFICULT = {"unknown (-1) at evaluation": "ignored", "positive": "positive",
                 "negative": "negative", "n/a": "n/a"}
DIFFICULT_WORDS = {"ignored": "ignored at evaluation", "positive": "positive", "negative": "negative"}
UNKNOWN_OURS = "unknown: our protocol not recorded"
MAP_AT_10 = "MAP@10 (ranking measure, not mAP)"
SOTA = "state_of_the_art"


def load():
  """The parsed literature.json: {'sources': {method: {...}}, 'datasets': {name: [rows]}, ...}."""
  text = importlib.resources.files("mlc_jax").joinpath("resources/literature.json").read_text()
  return json.loads(text)


def _pct(value):
  return "" if value is None else f"{value:.1f}"


def _unstated(value):
  return isinstance(value, str) and (value == "unstated" or value.startswith("unstated ("))


def _hint(value):
  """' (hint)' of an 'unstated (hint)' value, '' for a bare 'unstated'."""
  return value[len("unstated"):]


def _core(value):
  """What is compared of a free-text value: the part before ' (', lower case."""
  return str(value).split(" (")[0].strip().lower()


def _test_part(split):
  """'val2014' of 'train2014 (...) / val2014 as test': the set the numbers are measured on."""
  part = split.rsplit(" / ", 1)[-1].strip()
  return part[:-len(" as test")].strip() if part.endswith(" as test") else part


def _images(theirs, ours):
  """(phrase, definite) pairs for the train and test image counts."""
  if _unstated(theirs):
    return [(f"image counts unstated{_hint(theirs)}", False)]
  out = []
  for part in ("test", "train"):
    t, o = theirs.get(part), ours.get(part)
    if t is None:
      out.append((f"{part} images unstated", False))
    elif o is None:
      out.append((f"{part} images: ours not recorded", False))
    elif t != o:
      extra = f" (+{ours['val']:,} validation)" if part == "train" and ours.get("val") else ""
      out.append((f"{part} images: theirs {t:,}, ours {o:,}{extra}", True))
  return out


def _field(key, theirs, ours):
  """(phrase, definite) pairs saying how field `key` differs; [] when it is the same or n/a."""
  label = LABELS[key]
  if theirs == "n/a" or ours == "n/a":
    return []
  if _unstated(theirs):
    return [(f"{label} unstated{_hint(theirs)}", False)]
  if ours is None:
    return [(f"{label}: ours not recorded", False)]
  if key == "images":
    return _images(theirs, ours)
  if key == "split":
    t, o = _test_part(theirs), _test_part(ours)
    return [] if t.lower() == o.lower() else [(f"split: theirs {t}, ours {o}", True)]
  if key == "topk":
    same = theirs == ours
    t, o = TOPK_SHORT.get(theirs, theirs), TOPK_SHORT.get(ours, ours)
  elif key == "difficult":
    o_word = OUR_DIFFICULT.get(ours, ours)
    if o_word == "n/a":
      return []
    same = theirs == o_word
    t, o = DIFFICULT_WORDS.get(theirs, theirs), DIFFICULT_WORDS.get(o_word, o_word)
  elif key == "image_size":  # pixels, or a phrase such as 'multi-scale (...)'
    same = theirs == ours
    t, o = (f"{v} px" if isinstance(v, int) else str(v) for v in (theirs, ours))
  elif key == "ap":
    same = _core(theirs) == _core(ours)
    t, o = _core(theirs), _core(ours)
  else:  # free text: backbone, cf1_definition, unlabeled_images
    same = str(theirs).strip().lower() == str(ours).strip().lower()
    t, o = theirs, ours
  return [] if same else [(f"{label}: theirs {t}, ours {o}", True)]


def _compare(row_protocol, ours):
  out = []
  for key in FIELDS:
    out += _field(key, row_protocol.get(key, "unstated"), ours.get(key))
  return out


def differences(row_protocol, ours):
  """Short phrases saying how a published row's protocol differs from ours; [] = the same protocol.

  row_protocol: a row's 'protocol' dict from literature.json; ours: the 'protocol' dict our
  evaluation writes (split, images {train, val, test}, unlabeled_images, difficult, topk,
  image_size, backbone, cf1_definition, ap). A field the paper leaves unstated gives 'X unstated';
  a field that applies to neither side ('n/a' on either) gives nothing.
  """
  return [phrase for phrase, _ in _compare(row_protocol, ours)]


def same_protocol(row_protocol, ours):
  """The table's 'same protocol as ours?' cell: 'yes', 'no: ...' or 'unknown: ...'.

  'no' when some field differs for certain (the unstated ones are listed too); 'unknown' when the
  only gaps are fields the paper leaves unstated or our protocol lacks; ours None = not recorded.
  """
  if ours is None:
    return UNKNOWN_OURS
  found = _compare(row_protocol, ours)
  if not found:
    return "yes"
  verdict = "no" if any(definite for _, definite in found) else "unknown"
  return f"{verdict}: " + "; ".join(phrase for phrase, _ in found)


def _words(text):
  """The source words of a verification string: 'a (x) + b' -> {'a', 'b'}."""
  return {part.split(" (")[0].strip() for part in str(text).split(" + ")}


def unverified(row):
  """True when the row's figures were found in no source read (marked so in the table)."""
  return "unverified" in _words(row.get("verification", {}).get("figures", "unverified"))


def _method_cell(row):
  marks = ["state of the art, for scale"] if row.get("kind") == SOTA else []
  marks += ["unverified"] if unverified(row) else []
  return row["method"] + "".join(f" ({m})" for m in marks)


def _backbone_cell(protocol):
  """'ResNet-101, 448 px' from a protocol dict (ours or a published row's); '' when None."""
  if not protocol:
    return ""
  size = protocol.get("image_size")
  parts = [str(protocol.get("backbone", ""))]
  if isinstance(size, int):
    parts.append(f"{size} px")
  elif isinstance(size, str) and not _unstated(size) and size != "n/a":
    parts.append(size.split(" (")[0])
  return ", ".join(p for p in parts if p)


def _figure(row, value, block=None, key=None):
  """A published figure's cell: 'a' or, where a second source gives another value, 'a / b'."""
  other = row.get("disagreement", {})
  other = other.get(block, {}).get(key) if block else other.get(key)
  if other is None or value is None or other == value:
    return _pct(value)
  return f"{_pct(value)} / {_pct(other)}"


def _source_line(lit, row):
  src, ver = lit["sources"][row["method"]], row.get("verification", {})
  parts = [f"- {row['method']}: {src['paper']}, arXiv:{src['arxiv']}"]
  parts += [src["note"]] if src.get("note") else []
  parts += [f"table: {row['table']}"] if row.get("table") else []
  if ver:
    parts.append(f"figures: {ver.get('figures', 'unverified')}, protocol: {ver.get('protocol', 'none')}")
    if ver.get("correction", "none").startswith("issue 31:"):
      parts.append(f"corrected: {ver['correction'][len('issue 31:'):].strip()}")
  return "; ".join(parts)


def table(dataset, ours, protocol=None, *, k=3, topk_min_score=False):
  """Markdown for `dataset` (a registry name), or '' when the file has no published numbers for it.

  ours: [(name, metrics dict from metrics.compute)], metrics as fractions; rows print percentages.
  protocol: our evaluation's protocol dict (metrics.json), None when not recorded (older results);
  the last column compares each published row's protocol with it. A MAP@10 figure gets its own
  column (only where a row has one), never the mAP column.
  """
  lit = load()
  rows = lit["datasets"].get(dataset)
  if not rows:
    return ""
  with_top3 = any("top3" in r for r in rows)
  with_map10 = any(r.get("map_at_10") is not None for r in rows)
  header = (["method", "backbone, input", "mAP"] + ([MAP_AT_10] if with_map10 else [])
            + ([f"{m}@3" for m in TOP3] + ["top-3 variant"] if with_top3 else []))
  header.append("same protocol as ours?")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [_method_cell(r), _backbone_cell(r["protocol"]), _figure(r, r.get("mAP"), key="mAP")]
    cells += [_pct(r.get("map_at_10"))] if with_map10 else []
    if with_top3:
      top3 = r.get("top3", {})
      variant = TOPK_WORDS.get(r["protocol"]["topk"], "")
      cells += [_figure(r, top3.get(m), "top3", m) for m in TOP3] + [variant if top3 else ""]
    cells.append(same_protocol(r["protocol"], protocol))
    lines.append("| " + " | ".join(cells) + " |")
  ours_variant = TOPK_WORDS["min_score" if topk_min_score else "exact"]
  for name, m in ours:
    cells = [f"**{name}**", _backbone_cell(protocol), _pct(100 * m["mAP"])]
    cells += [""] if with_map10 else []
    if with_top3:
      if k == 3:
        cells += [_pct(100 * m[f"{n}_top3"]) for n in TOP3] + [ours_variant]
      else:  # our top-k is another k: not comparable, leave the cells empty
        cells += [""] * len(TOP3) + [f"(ours use k={k})"]
    cells.append("")
    lines.append("| " + " | ".join(cells) + " |")
  marks = (["'(unverified)' marks a figure found in no source read"] if any(map(unverified, rows))
           else []) + (["'a / b' = two sources disagree (notes below)"]
                       if any("disagreement" in r for r in rows) else [])
  notes = ["", "Each published figure was checked against the table named under Sources "
           "('figures': paper = the method's own paper table, other_paper = a later paper's "
           "comparison table, readme = the authors' README, secondary = a third-party reprint)"
           + "".join(f"; {m}" for m in marks) + "; details in resources/literature.json."]
  if with_map10:
    notes += ["", f"{MAP_AT_10}: CNN-RNN's MAP@10 (its ref. [34], Turpin & Scholer), a ranking "
                  "measure cut at 10, another metric than per-class mAP; it never sits under mAP."]
  table_notes = [f"- {r['method']}: {r['table_note']}" for r in rows if r.get("table_note")]
  notes += [""] + table_notes if table_notes else []
  refs = [_source_line(lit, r) for r in sorted(rows, key=lambda r: r["method"])]
  return "\n".join(lines + notes + ["", "Sources:"] + refs) + "\n"
