"""`--dry-run` of protect, evaluate and sweep: `ue` as a user runs it, in a subprocess, on real Fashion-MNIST.

A dry run runs the job's own checks, reads what the job reads first, joins (here: starts and stops) the Ray
the job would use, prints what would run, and leaves nothing behind: no output, claim, work folder,
tracking store or release."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import load_sweep_config
from pipelines.sweep import plan_trials, release_jobs

TINY_SWEEP = ["--set", "protect.data.subset=200", "--set", "grid.ratio=[0,0.5]", "--set", "grid.defence=[none]",
              "--set", "grid.method=[beo,random]", "--set", "grid.eps=[8/255]"]


def ue(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def random_release(fashion_mnist_root, tmp_path_factory) -> Path:
    """A published release of 200 images (random noise: instant), for evaluate."""
    folder = tmp_path_factory.mktemp("release")
    result = ue("protect", "--preset", "fashion-mnist", "--method", "random", "--subset", "200", "--engine",
                "reference", "--source", str(fashion_mnist_root), "--out", str(folder / "random"), cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder / "random"


def test_protect_dry_run_checks_says_what_would_run_and_writes_nothing(fashion_mnist_root, tmp_path):
    out = tmp_path / "release"
    result = ue("protect", "--preset", "fashion-mnist", "--source", str(fashion_mnist_root), "--out", str(out),
                "--subset", "300", "--rounds", "4", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"source {fashion_mnist_root}: fashion-mnist, 300 images 28×28×1, 10 classes"
    assert lines[1] == f"release {out}: new"
    assert lines[2].startswith("method beo at eps=8/255: 4 rounds of sign steps, surrogate small_cnn")
    assert lines[3] == f"work folder {tmp_path / '.release.work'}: new"
    assert lines[4].startswith("a local Ray (started for this check; the job starts its own): 1 node(s), ")
    assert lines[5].startswith("Ray engine: 1 pass actor(s) of ")
    assert lines[-2] == f"tracking sqlite:///{tmp_path / 'mlflow.db'}: experiment ue-protect"
    assert lines[-1] == "dry run: no job was started, nothing was claimed or written"
    assert listing(tmp_path) == []

    out.mkdir()  # the job's own checks: an existing output is refused as the job would refuse it
    (out / "notes.txt").write_text("someone's files")
    refused = ue("protect", "--preset", "fashion-mnist", "--source", str(fashion_mnist_root), "--out", str(out),
                 "--dry-run", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == ""
    assert [line for line in refused.stderr.splitlines() if line.startswith("error: ")] == [
        line for line in refused.stderr.splitlines() if line.strip()]
    assert str(out) in refused.stderr and "--overwrite" in refused.stderr
    assert listing(tmp_path) == ["release", "release/notes.txt"]


def test_evaluate_dry_run_verifies_the_release_and_names_the_victims(fashion_mnist_root, random_release, tmp_path):
    out = tmp_path / "results"
    result = ue("evaluate", "--source", str(fashion_mnist_root), "--release", str(random_release), "--out", str(out),
                "--victim", "small_cnn", "--epochs", "2", "--ratio", "0.5", "--test-subset", "500", "--dry-run",
                cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"source {fashion_mnist_root}: fashion-mnist, 200 images 28×28×1, 10 classes; test images: 500"
    assert lines[1] == f"release {random_release}: verified, 200 images"
    assert lines[2] == f"results {out}: new"
    assert lines[4] == ("victims: clean-all, clean-only, mixed at ratio 0.5, small_cnn (standard, 2 epochs, "
                        "1 Ray Train worker(s) on CPUs each), defence none")
    assert lines[-1] == "dry run: no job was started, nothing was claimed or written"
    assert listing(tmp_path) == []

    (random_release / "parquet" / sorted(p.name for p in (random_release / "parquet").iterdir())[0]).write_bytes(b"x")
    damaged = ue("evaluate", "--source", str(fashion_mnist_root), "--release", str(random_release), "--out", str(out),
                 "--dry-run", cwd=tmp_path)
    assert damaged.returncode == 2 and "sha256" in damaged.stderr and listing(tmp_path) == []


def test_sweep_dry_run_lists_the_releases_to_make_and_the_trials(fashion_mnist_root, tmp_path):
    out, releases = tmp_path / "sweep", tmp_path / "releases"
    result = ue("sweep", "fashion-mnist", "--source", str(fashion_mnist_root), "--out", str(out), *TINY_SWEEP,
                "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    config = load_sweep_config("fashion-mnist", {"protect.data.subset": 200, "grid.ratio": [0, 0.5],
                                                 "grid.defence": ["none"], "grid.method": ["beo", "random"],
                                                 "grid.eps": ["8/255"]})
    addresses = list(release_jobs(str(fashion_mnist_root), config, str(releases)))
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        f"source {fashion_mnist_root}: fashion-mnist, 200 images 28×28×1, 10 classes",
        f"results {out}: new",
        f"2 release(s) from 2 protect job(s): 0 reused, 2 to run; {len(plan_trials(config))} trial(s)",
        f"release beo eps=8/255: {addresses[0]} (to protect)",
        f"release random eps=8/255: {addresses[1]} (to protect)",
    ]
    assert lines[-3].startswith("victims at once: ")
    assert lines[-1] == "dry run: no job was started, nothing was claimed or written"
    assert listing(tmp_path) == []
