"""A job claims its --out before any work (pipelines.storage.claim_output): a second job on the same output
fails at once in one line, `--overwrite` takes the claim, and a rerun of a killed job takes its claim over.
The claims here are left by real `ue protect` processes killed with SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.storage import StorageError, claim_output
from ue_core.release import read_manifest, verify_release

TINY = ["--set", "data.subset=100", "--set", "data.test_subset=50", "--rounds", "1",
        "--set", "beo.surrogate.epochs=1", "--no-progress", "--engine", "reference"]


def command(source: Path, out: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "protect", "--preset", "fashion-mnist", "--source", str(source),
            "--out", str(out), "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", *TINY, *extra]


def ue_protect(source: Path, out: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(source, out, tmp_path, *extra), capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)


def kill_once(started: Callable[[], bool], source: Path, out: Path, tmp_path: Path, *extra: str) -> None:
    """Start `ue protect`, SIGKILL it (and its session) as soon as ``started()``; its release is not visible."""
    job = subprocess.Popen(command(source, out, tmp_path, *extra), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not started():
        assert job.poll() is None, job.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the job never reached the point to kill it at"
        time.sleep(0.01)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not out.exists()


def kill_once_claimed(source: Path, out: Path, tmp_path: Path, *extra: str) -> Path:
    """Start `ue protect`, SIGKILL it as soon as its claim exists; returns the claim."""
    claim = out.parent / f".{out.name}.claim"
    kill_once(claim.exists, source, out, tmp_path, *extra)
    return claim


def assert_one_line_naming(result: subprocess.CompletedProcess, *names: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[-3000:]
    for name in names:
        assert name in result.stderr, result.stderr


def test_another_job_is_refused_at_once_and_overwrite_takes_the_claim(fashion_mnist_root, tmp_path):
    out = tmp_path / "release"
    claim = kill_once_claimed(fashion_mnist_root, out, tmp_path)
    held = claim.read_text()

    started = time.monotonic()
    other = ue_protect(fashion_mnist_root, out, tmp_path, "--rounds", "2")  # another config: another job
    assert time.monotonic() - started < 60  # the time to import the CLI, not to protect anything
    assert_one_line_naming(other, f"{out} is claimed by another job", str(claim), "--overwrite",
                           "no longer running")
    assert claim.read_text() == held and not out.exists() and not (tmp_path / ".release.work").exists()

    taken = ue_protect(fashion_mnist_root, out, tmp_path, "--rounds", "2", "--overwrite")
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert not claim.exists()
    assert verify_release(out)["config"]["beo"]["rounds"] == 2


def test_a_rerun_of_the_killed_job_takes_its_claim_over(fashion_mnist_root, tmp_path):
    out = tmp_path / "release"
    claim = kill_once_claimed(fashion_mnist_root, out, tmp_path)
    rerun = ue_protect(fashion_mnist_root, out, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not claim.exists() and read_manifest(out)["config"]["beo"]["rounds"] == 1
    verify_release(out)


def test_a_driver_killed_while_publishing_leaves_no_release_and_the_rerun_publishes(fashion_mnist_root, tmp_path):
    """Killed once its release's staging folder exists (ue_core.data.atomic): no half-visible release at --out,
    and the same command again takes the claim over, removes the killed job's staging folder and publishes a
    release that verifies."""
    out = tmp_path / "release"
    formats = ("--set", "formats=[parquet,png,imagefolder]")  # a publish long enough to be killed in

    def publishing() -> bool:
        return any(tmp_path.glob(".release.partial-*"))

    kill_once(publishing, fashion_mnist_root, out, tmp_path, *formats)
    rerun = ue_protect(fashion_mnist_root, out, tmp_path, *formats)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert verify_release(out)["count"] == 100 and not (tmp_path / ".release.claim").exists()
    assert not any(tmp_path.glob(".release.partial-*"))  # the killed job's staging folder is gone


@pytest.fixture
def killed_claim(tmp_path):
    """The claim of job {"command": "test", "n": 1} on tmp_path/out, left by a process killed while holding it."""
    out = tmp_path / "out"
    script = ("import sys, time; from pipelines.storage import claim_output\n"
              "with claim_output(sys.argv[1], {'command': 'test', 'n': 1}):\n"
              "    print('claimed', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "claimed\n"
    holder.kill()
    holder.wait()
    return out, tmp_path / ".out.claim"


def test_the_same_job_takes_over_a_killed_claim(killed_claim):
    out, claim = killed_claim
    dead_pid = json.loads(claim.read_text())["pid"]
    with claim_output(str(out), {"command": "test", "n": 1}) as uri:
        assert uri == str(claim) and json.loads(claim.read_text())["pid"] == os.getpid() != dead_pid
    assert not claim.exists()


def test_another_job_is_refused_unless_overwrite(killed_claim):
    out, claim = killed_claim
    held = claim.read_text()
    with pytest.raises(StorageError, match="claimed by another job .* no longer running") as error:
        with claim_output(str(out), {"command": "test", "n": 2}):
            pass
    assert str(claim) in str(error.value) and "\n" not in str(error.value)
    assert claim.read_text() == held
    with claim_output(str(out), {"command": "test", "n": 2}, overwrite=True):
        assert json.loads(claim.read_text())["pid"] == os.getpid()
    assert not claim.exists()


def test_a_running_job_keeps_its_claim(tmp_path):
    out = str(tmp_path / "out")
    with claim_output(out, {"command": "test", "n": 1}):
        with pytest.raises(StorageError, match="claimed by this same job .* still running"):
            with claim_output(out, {"command": "test", "n": 1}):
                pass
        with claim_output(out, {"command": "test", "n": 2}, overwrite=True):
            taken = (tmp_path / ".out.claim").read_text()
        assert not (tmp_path / ".out.claim").exists()  # removed by the job that took it
    (tmp_path / ".out.claim").write_text(taken)  # a claim that is not ours is left alone at the end
    with pytest.raises(StorageError):
        with claim_output(out, {"command": "test", "n": 3}):
            pass
    assert (tmp_path / ".out.claim").read_text() == taken


def test_an_unreadable_claim_is_another_jobs(tmp_path):
    (tmp_path / ".out.claim").write_text("{not json")
    with pytest.raises(StorageError, match="claimed by another job"):
        with claim_output(str(tmp_path / "out"), {"command": "test"}):
            pass
