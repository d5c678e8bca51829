"""The local cluster stops only its own processes: a pid in its state file that now names another process
(pids are reused within minutes on a busy machine) is left alone."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cluster" / "local"))
from localcluster import alive, process_start, stop_group


@pytest.fixture
def sleeper():
    """A process leading its own group, as every cluster component does."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_component_of_this_start_time_is_stopped(sleeper):
    component = {"pid": sleeper.pid, "started": process_start(sleeper.pid)}
    assert alive(component)
    stop_group(component)  # which also reaps it (it is this test's child)
    assert not alive(component) and process_start(sleeper.pid) is None


def test_a_reused_pid_is_not_ours_and_is_left_running(sleeper):
    """The state file's start time differs from the process that now has the pid: another process."""
    component = {"pid": sleeper.pid, "started": process_start(sleeper.pid) - 1}
    assert not alive(component)
    stop_group(component)
    time.sleep(0.5)
    assert sleeper.poll() is None  # still running


def test_a_state_file_without_start_times_still_stops_its_components(sleeper):
    component = {"pid": sleeper.pid}  # written before start times were recorded
    assert alive(component)
    stop_group(component)
    assert not alive(component) and process_start(sleeper.pid) is None
