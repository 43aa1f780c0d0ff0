"""What a training loop shows and hears while it runs: the progress line and stop requests."""
import signal
import sys
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from mlc_jax.errors import Stopped

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Progress:
  """tqdm on a terminal, plain log lines otherwise."""

  def __init__(self, stage, epoch, epochs, total, start, chief):
    self.prefix = f"{stage} epoch {epoch + 1}/{epochs}"
    self.bar = None
    if chief and sys.stderr.isatty():
      self.bar = tqdm(total=total, initial=start, desc=self.prefix, unit="step", leave=True)
    self.total, self.done = total, start

  def update(self, done, loss, images_per_second):
    """Shows the step count, the running training loss and the images per second."""
    if self.bar is not None:
      self.bar.update(done - self.done)
      self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.0f}")
    else:
      logging.info("%s step %d/%d loss %.4f %.0f img/s", self.prefix, done, self.total, loss,
                   images_per_second)
    self.done = done

  def close(self):
    """Ends the bar."""
    if self.bar is not None:
      self.bar.close()


class StopSignals:
  """While entered, SIGTERM and Ctrl-C (SIGINT) ask the loop to stop instead of killing it.

  The loop polls `requested`, saves a checkpoint and calls `exit`. A second Ctrl-C stops at once.
  With several processes the request is agreed on at host syncs (an all-gather of the flag), so
  every process saves the same step, whichever of them was signalled.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # asked twice: stop now
    self.signum = signum
    logging.warning("%s received: saving a checkpoint at the next step, then stopping",
                    signal.Signals(signum).name)

  @property
  def signal_name(self):
    """'SIGTERM' or 'SIGINT'."""
    return signal.Signals(self.signum).name if self.signum else ""

  def requested(self, synced):
    """True once a stop was asked for; `synced`: whether all processes are at this point together."""
    if jax.process_count() == 1:
      return self.signum is not None
    if not synced:
      return False
    flags = np.asarray(multihost_utils.process_allgather(np.int32(self.signum or 0)))
    if self.signum is None and flags.any():
      self.signum = int(flags[flags > 0][0])
    return self.signum is not None

  def exit(self, message):
    """Ends the run with one line (errors.Stopped)."""
    raise Stopped(message, self.signum)
