"""Files the package writes and later trusts: written with a digest, checked on read.

Beside each such file NAME lies a hidden `.NAME.sha256` (JSON: the file's size and sha256, and
the digest it replaced). `write_*` writes the record first, then the file (each to a temporary name
and renamed), and a reader accepts either the new or the replaced digest, so a kill between the
two renames leaves a pair that still checks. `problem(path)` says what is wrong with a file
against its record (truncated, changed) or None; a file without a record (written by an older
version) is trusted as it is. Callers decide what damage means: a rebuildable file (a cache,
thresholds) is rebuilt with a one-line notice, an irreplaceable one (config.json, labels.txt) is
refused with one line naming the file and the way out (`refuse`).

`size_only=True` records and checks the size alone: for caches of hundreds of MB read on every
run, where a truncation (a full disk, a kill) is the damage to catch.
"""
import hashlib
import json
import os
import pathlib
import tempfile

from mlc_jax.errors import UserError


def record_path(path):
  """The digest record of `path`: .NAME.sha256 beside it."""
  path = pathlib.Path(path)
  return path.with_name(f".{path.name}.sha256")


def sha256(path):
  """Hex sha256 of a file, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def write_atomic(target, data):
  """Writes bytes to target atomically (a temporary file beside it, then a rename), no record."""
  target = pathlib.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _read_record(path):
  try:
    record = json.loads(record_path(path).read_text())
    return record if isinstance(record, dict) else {}
  except (OSError, ValueError):
    return None


def _write_record(path, size, digest):
  old = _read_record(path) or {}
  accept = [old["sha256"]] if old.get("sha256") and old["sha256"] != digest else []
  write_atomic(record_path(path), json.dumps({"bytes": size, "sha256": digest, "accept": accept,
                                         "size_only": digest is None}).encode())


def write_bytes(path, data):
  """Writes data to path atomically, with its digest record (see the module doc)."""
  _write_record(path, len(data), hashlib.sha256(data).hexdigest())
  write_atomic(path, data)


def write_text(path, text):
  """write_bytes of text in UTF-8."""
  write_bytes(path, text.encode())


def seal(path, size_only=False):
  """Records the digest (or, size_only, the size) of a file already written in place."""
  path = pathlib.Path(path)
  _write_record(path, path.stat().st_size, None if size_only else sha256(path))


def problem(path):
  """What is wrong with path against its record, in a few words, or None (also when unrecorded)."""
  path = pathlib.Path(path)
  if not record_path(path).exists():
    return None
  record = _read_record(path)
  if record is None or "bytes" not in record:
    return f"its digest record {record_path(path).name} is damaged"
  if not path.is_file():
    return "it is missing"
  size = path.stat().st_size
  digests = [d for d in [record.get("sha256"), *record.get("accept", [])] if d]
  if not digests:
    return None if size == record["bytes"] else (
        f"it is {size} bytes, not the {record['bytes']} written (truncated or replaced)")
  if sha256(path) in digests:
    return None
  if size < record["bytes"]:
    return f"it is {size} bytes, not the {record['bytes']} written (truncated)"
  return f"it changed after it was written (its sha256 differs from {record_path(path).name})"


def refuse(path, what, way_out):
  """UserError when path fails its record: '{path}: {problem}; {what}: {way_out}'."""
  wrong = problem(path)
  if wrong:
    raise UserError(f"{path}: {wrong}; {what}: {way_out}")


def read_text(path, what, way_out):
  """The text of path after `refuse`; UserError (same form) when it is not UTF-8 either."""
  refuse(path, what, way_out)
  try:
    return pathlib.Path(path).read_text()
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: it is not UTF-8 text ({e.reason} at byte {e.start}); {what}: "
                    f"{way_out}") from None
