"""A config value of the wrong type or range, from any layer (here ``--set``), is one line on stderr naming
the key and the value, exit status 2, before any work: with the default (Ray) engine, before Ray is even
imported."""

import os
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="module", autouse=True)
def tracking_store(tmp_path_factory):
    """Every CLI run here would track into a temporary sqlite store (the default would be ./mlflow.db)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlruns.db'}")
        yield


@pytest.fixture(scope="module")
def ray_tripwire(tmp_path_factory) -> dict[str, str]:
    """An environment where ``import ray`` fails loudly (a `ray` package first on the path that exits)."""
    shadow = tmp_path_factory.mktemp("shadow")
    (shadow / "ray").mkdir()
    tripwire = "raise SystemExit('ray imported before the config was checked')\n"
    (shadow / "ray" / "__init__.py").write_text(tripwire)
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize("override, named", [
    ("beo.batch_size=abc", ["config.beo.batch_size", "expected an integer", "'abc'"]),
    ("beo.rounds=1.5", ["config.beo.rounds", "expected an integer", "1.5"]),
    ("beo.pga.eps=8/0", ["config.budget.eps", "fraction like 8/255", "'8/0'"]),  # the old name of budget.eps
    ("formats=[gif]", ["config.formats[0]", "one of parquet, png, cifar, imagefolder, delta", "'gif'"]),
    ("budget.eps=wide", ["config.budget.eps", "fraction like 8/255", "'wide'"]),
    ("beo.estimator.sigma=-1", ["sigma", "must be > 0", "-1"]),
    ("beo.pga.update=foo", ["config.beo.pga.update", "one of adam, sign", "'foo'"]),
    ("beo.surrogate.epochs=[1,2]", ["config.beo.surrogate.epochs", "expected an integer", "[1, 2]"]),
    ("beo.rounds=true", ["config.beo.rounds", "expected an integer", "True"]),
    ("data.subset=some", ["config.data.subset", "an integer or null", "'some'"]),
])
def test_a_bad_value_is_one_line_before_ray(override, named, fashion_mnist_root, tmp_path, ray_tripwire):
    out = tmp_path / "out"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "protect", "--preset", "fashion-mnist",
         "--source", str(fashion_mnist_root), "--out", str(out), "--set", override, "--no-progress"],
        capture_output=True, text=True, cwd=tmp_path, env=ray_tripwire, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(part in lines[0] for part in named), lines[0]
    assert not out.exists() and not (tmp_path / "mlruns.db").exists()
    assert time.monotonic() - start < 60  # the interpreter and torch load; no cluster, no job
