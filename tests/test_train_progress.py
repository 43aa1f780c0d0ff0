"""mlc_jax.train.progress: stop requests by SIGTERM / Ctrl-C while a loop runs (the end-to-end stop
and resume: test_runner)."""
import os
import signal

import pytest

from mlc_jax.errors import Stopped
from mlc_jax.train import progress


def test_a_signal_asks_the_loop_to_stop_and_the_handlers_come_back():
  before = {s: signal.getsignal(s) for s in progress.SIGNALS}
  with progress.StopSignals() as stop:
    assert not stop.requested(synced=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the process lives on: the loop decides when to stop
    assert stop.requested(synced=False) and stop.signal_name == "SIGTERM"
    with pytest.raises(Stopped) as e:
      stop.exit("saved step 7; run the same command to continue")
    assert e.value.signum == signal.SIGTERM and "saved step 7" in str(e.value)
  assert {s: signal.getsignal(s) for s in progress.SIGNALS} == before


def test_a_second_ctrl_c_stops_at_once():
  with progress.StopSignals() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
