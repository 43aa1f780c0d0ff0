"""A full or read-only disk, said in one line: what could not be written, where, and what is intact.

Writes fail with OSError ENOSPC/EDQUOT/EROFS (or EACCES), or, from Orbax's TensorStore writer, with
an exception whose text carries the OS error code; `reason(exc)` recognises both anywhere in an
exception's cause chain. `guard(what, where, intact)` turns such a failure into DiskError (a
UserError: launch.py prints its one line, exit 1); other exceptions pass through unchanged.
`Quiet` is a logging filter that drops the library log records (Orbax's background-thread
tracebacks) that only repeat a disk failure the one line states.
"""
import contextlib
import errno

from mlc_jax.errors import UserError

CODES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
         errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
         errno.EPERM: "permission denied"}
# how TensorStore (Orbax's writer) and others name the errors in a message
TEXTS = {**{f"os_error_code='{c}'": c for c in CODES}, "No space left on device": errno.ENOSPC,
         "Read-only file system": errno.EROFS, "Disk quota exceeded": errno.EDQUOT}
SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskError(UserError):
  """A write refused by the disk; the message says what, where, and what is intact."""

  def __init__(self, message, code):
    super().__init__(message)
    self.code = code


def code(exc):
  """The errno of a disk refusal anywhere in exc's cause chain, or None."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, DiskError):
      return exc.code
    if isinstance(exc, OSError) and exc.errno in CODES:
      return exc.errno
    text = str(exc)
    for marker, number in TEXTS.items():
      if marker in text:
        return number
    exc = exc.__cause__ or exc.__context__
  return None


def way_out(number):
  """What to do about a refusal with this errno."""
  if number in SPACE:
    return "free some space there and run the same command to continue"
  return "make it writable (or pass another --workdir/--output) and run the same command again"


def message(what, where, intact, number):
  """'could not write WHAT in WHERE: REASON; INTACT; WAY OUT'."""
  return f"could not write {what} in {where}: {CODES[number]}; {intact}; {way_out(number)}"


@contextlib.contextmanager
def guard(what, where, intact="what was saved before is intact", cleanup=None):
  """Turns a disk refusal inside the block into DiskError(message(...)); cleanup() first, if given
  (its own errors ignored: the disk already failed). intact: text, or a function giving it then."""
  try:
    yield
  except DiskError:
    raise
  except Exception as e:  # noqa: BLE001 - only disk refusals are translated
    number = code(e)
    if number is None:
      raise
    if cleanup is not None:
      with contextlib.suppress(Exception):
        cleanup()
    intact = intact() if callable(intact) else intact
    raise DiskError(message(what, where, intact, number), number) from None


class Quiet:
  """logging filter: drops records of library loggers whose text (or exception) is a disk refusal."""

  def filter(self, record):
    if record.levelno < 30 or "mlc_jax" in record.pathname:
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      return code(record.exc_info[1]) is None and not any(m in text for m in TEXTS)
    return not any(m in text for m in TEXTS)
