"""What a job says while it runs and what `--print-config` prints: `ue` as a user runs it, in a subprocess.

Progress lines (pipelines.progress) go to stderr, one per protect round and per victim epoch, with
--no-progress too (it hides the bars only); `--print-config` prints YAML that reads back as the same config,
before Ray is imported and without touching --out."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import load_evaluate_config, load_protect_config, load_sweep_config, parse_override

NUMBER = r"\d+\.\d{4}"


@pytest.fixture(scope="module", autouse=True)
def tracking_store(tmp_path_factory):
    """Every CLI run here tracks into a temporary sqlite store (the default would be ./mlruns.db)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlruns.db'}")
        yield


def ue(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def no_ray(tmp_path_factory) -> dict[str, str]:
    """An environment where ``import ray`` exits (a `ray` package first on the path that raises SystemExit)."""
    shadow = tmp_path_factory.mktemp("shadow")
    (shadow / "ray").mkdir()
    (shadow / "ray" / "__init__.py").write_text("raise SystemExit('ray imported by --print-config')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}


def printed_config(tmp_path: Path, env: dict[str, str], *args: str) -> Path:
    """Run ``ue ARGS --print-config`` in ``tmp_path``; its output as a file there, after checking that it
    exited 0 and wrote nothing else there."""
    result = ue(*args, "--print-config", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "--print-config wrote files"
    printed = tmp_path.parent / f"{tmp_path.name}-printed.yaml"
    printed.write_text(result.stdout)
    return printed


def test_print_config_of_protect_reads_back_as_the_same_config(tmp_path, no_ray):
    flags = ["--eps", "12/255", "--rounds", "3", "--set", "beo.estimator.sigma=0.5", "--set", "formats=[parquet,delta]"]
    printed = printed_config(tmp_path, no_ray, "protect", "--preset", "fashion-mnist-demo", "--source", "data",
                             "--out", str(tmp_path / "release"), *flags)
    expected = load_protect_config("fashion-mnist-demo", overrides={
        "budget.eps": "12/255", "beo.rounds": 3, "beo.estimator.sigma": 0.5, "formats": ["parquet", "delta"]})
    assert load_protect_config(config_file=str(printed)) == expected
    assert expected != load_protect_config("fashion-mnist-demo")  # the flags are in it


def test_print_config_of_evaluate_reads_back_as_the_same_config(tmp_path, no_ray):
    printed = printed_config(tmp_path, no_ray, "evaluate", "--victim", "small_cnn", "--epochs", "3",
                             "--defence", "grayscale+cutout", "--poison-only", "--set", "victim.width=64")
    expected = load_evaluate_config(overrides={
        "victim.model": "small_cnn", "victim.epochs": 3, "defence.names": ["grayscale", "cutout"],
        "modes": ["clean-all", "clean-only", "mixed", "poison-only"], "victim.width": 64})
    assert load_evaluate_config(str(printed)) == expected


def test_print_config_of_sweep_reads_back_as_the_same_sweep(tmp_path, no_ray):
    sets = ["grid.ratio=[0,0.5]", "grid.method=[beo,ops]", "grid.protect.beo.rounds=[1,2]"]
    printed = printed_config(tmp_path, no_ray, "sweep", "fashion-mnist-baselines", "--source", "elsewhere",
                             *[a for s in sets for a in ("--set", s)])
    expected = load_sweep_config("fashion-mnist-baselines", dict(parse_override(s) for s in sets))
    read = load_sweep_config(str(printed))
    assert read.source == "elsewhere"  # --source is in the printed sweep
    assert read == load_sweep_config("fashion-mnist-baselines", {**dict(parse_override(s) for s in sets),
                                                                 "source": "elsewhere"})
    assert read.releases() == expected.releases()


def test_without_print_config_source_and_out_are_still_required(tmp_path):
    result = ue("protect", "--preset", "fashion-mnist", cwd=tmp_path)
    assert result.returncode == 2 and "the following arguments are required: --source, --out" in result.stderr


@pytest.fixture(scope="module")
def two_rounds(fashion_mnist_root, tmp_path_factory, tracking_store) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-round reference protect of 100 images, --no-progress: (release, the finished process)."""
    out = tmp_path_factory.mktemp("releases") / "fmnist"
    result = ue("protect", "--preset", "fashion-mnist", "--source", str(fashion_mnist_root), "--out", str(out),
                "--set", "data.subset=100", "--set", "data.test_subset=50", "--rounds", "2",
                "--set", "beo.surrogate.epochs=1", "--no-progress", "--engine", "reference")
    assert result.returncode == 0, result.stderr
    return out, result


def test_protect_prints_a_line_per_round_without_bars(two_rounds):
    _, result = two_rounds
    lines = [line for line in result.stderr.splitlines() if line.startswith("protect round")]
    figures = rf"bayes_error={NUMBER} surrogate_train_accuracy={NUMBER} surrogate_test_accuracy={NUMBER} seconds=\d+\.\d"
    patterns = [rf"protect round {k}/2: {figures}" for k in (1, 2)]
    assert len(lines) == 2 and all(re.fullmatch(p, line) for p, line in zip(patterns, lines)), lines
    assert "protect round" not in result.stdout and "protected 100 images" in result.stdout


def test_evaluate_prints_a_line_per_epoch_of_each_victim(two_rounds, fashion_mnist_root, tmp_path):
    """The epochs run in a Ray Train worker; their lines are printed by the driver, in order, before the table."""
    release, _ = two_rounds
    result = ue("evaluate", "--source", str(fashion_mnist_root), "--release", str(release), "--out",
                str(tmp_path / "results"), "--victim", "small_cnn", "--epochs", "2", "--test-subset", "50",
                "--set", "modes=[mixed]", "--no-progress")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("victim ")]
    epoch = rf"train_loss={NUMBER} train_accuracy={NUMBER} test_accuracy={NUMBER} epoch_seconds=\d+\.\d"
    patterns = [rf"victim mixed epoch {k}/2: {epoch}" for k in (1, 2)]
    patterns.append(rf"victim mixed done: final_test_accuracy={NUMBER} best_test_accuracy={NUMBER}")
    assert len(lines) == 3 and all(re.fullmatch(p, line) for p, line in zip(patterns, lines)), lines
    final = float(lines[-1].split("final_test_accuracy=")[1].split()[0])
    row = next(line for line in result.stdout.splitlines() if line.startswith("| mixed |"))
    assert row.split(" | ")[4] == f"{100 * final:.2f}"  # the table's final accuracy is the line's
