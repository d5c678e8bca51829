"""URIs are never paths: every command that takes a source or destination refuses a URI it cannot use in
one line, and nothing named after the scheme (``foo:``, ``gs:``) appears in its working directory."""

import os
import subprocess
import sys

import pytest

UNKNOWN = "foo://bucket/x"  # a scheme fsspec does not know
MISSING = "gs://bucket/x"  # a scheme whose package (gcsfs) is not installed
DATA = "{data}"  # replaced by the real Fashion-MNIST root

CASES = {
    "fetch root": ["fetch", "fashion-mnist", "--root", UNKNOWN],
    "fetch root, missing package": ["fetch", "fashion-mnist", "--root", MISSING],
    "protect source": ["protect", "--preset", "fashion-mnist", "--engine", "reference", "--source", UNKNOWN,
                       "--out", "out"],
    "protect out": ["protect", "--preset", "fashion-mnist", "--engine", "reference", "--source", DATA,
                    "--out", MISSING],
    "evaluate source": ["evaluate", "--source", UNKNOWN, "--release", DATA, "--out", "out"],
    "evaluate release": ["evaluate", "--source", DATA, "--release", UNKNOWN, "--out", "out"],
    "evaluate out": ["evaluate", "--source", DATA, "--release", DATA, "--out", UNKNOWN],
    "evaluate storage": ["evaluate", "--source", DATA, "--release", DATA, "--out", "out", "--storage", MISSING],
    "sweep source": ["sweep", "fashion-mnist", "--source", UNKNOWN, "--out", "out"],
    "sweep out": ["sweep", "fashion-mnist", "--source", DATA, "--out", UNKNOWN],
    "sweep releases": ["sweep", "fashion-mnist", "--source", DATA, "--out", "out", "--releases", UNKNOWN],
    "verify": ["verify", UNKNOWN],
    "verify, missing package": ["verify", MISSING],
}


@pytest.mark.parametrize("arguments", CASES.values(), ids=CASES.keys())
def test_a_uri_that_cannot_be_used_is_refused_in_one_line(arguments, fashion_mnist_root, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    arguments = [str(fashion_mnist_root) if a == DATA else a for a in arguments]
    uri = next(a for a in arguments if "://" in a)
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *arguments], capture_output=True, text=True,
                            cwd=cwd, timeout=300,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert uri in result.stderr
    assert list(cwd.iterdir()) == []  # no `foo:` or `gs:` folder, no output, no claim

