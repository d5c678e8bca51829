"""The wheel as a user installs it, outside the checkout.

Built from the package's files with `python -m build --wheel`, installed into a fresh virtualenv in a
temporary folder: first on its own (the base install: `ue --version`, and a one-line error naming the
``[ray]`` extra for a command that needs it), then with the cluster image's own install step — the RUN line
of cluster/Dockerfile, replayed with this virtualenv's pip — after which a 20-image reference protect runs
from the installed package and publishes the release the checkout publishes, bit for bit. The first install
takes torch's wheels from the machine's pip index (minutes, several GB in the temporary folder).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray

from pipelines import __version__ as VERSION
from ue_core.release import read_release, verify_release

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "cluster" / "Dockerfile"
WHEEL_NAME = f"unlearnable_beo-{VERSION}-py3-none-any.whl"
PACKAGED = ("pyproject.toml", "README.md", "ue_core", "pipelines")  # what the wheel is built from
TINY = ["--preset", "fashion-mnist", "--subset", "20", "--rounds", "1", "--set", "data.test_subset=20",
        "--set", "beo.estimator.sigma=1.0",
        "--set", "beo.surrogate.epochs=1", "--engine", "reference", "--device", "cpu", "--no-progress"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the packaged files (the checkout gets no build/ or egg-info)."""
    source = tmp_path_factory.mktemp("source")
    for name in PACKAGED:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert [p.name for p in dist.iterdir()] == [WHEEL_NAME]
    return dist / WHEEL_NAME


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh virtualenv (outside the checkout) with the wheel installed, no extras; and a clean env."""
    home = tmp_path_factory.mktemp("user")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlruns.db'}"
    root = home / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    assert run([base_python, "-m", "venv", str(root)], home, env).returncode == 0
    result = run([str(root / "bin" / "pip"), "install", "--quiet", str(wheel)], home, env)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, env


def test_wheel_carries_the_presets_and_sweeps(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "pipelines/presets/fashion-mnist.yaml" in names and "pipelines/sweeps/fashion-mnist.yaml" in names
    assert "ue_core/methods/beo.py" in names and not any(name.startswith("tests/") for name in names)


def test_base_install_runs_ue_version_and_names_the_missing_extra(venv, fashion_mnist_root):
    root, env = venv
    home = root.parent
    version = run([str(root / "bin" / "ue"), "--version"], home, env)
    assert version.returncode == 0 and version.stdout.strip() == f"ue {VERSION}", version
    where = run([str(root / "bin" / "python"), "-c", "import ue_core; print(ue_core.__file__)"], home, env)
    assert Path(where.stdout.strip()).is_relative_to(root), where  # the installed package, not the checkout
    assert run([str(root / "bin" / "python"), "-c", "import ray"], home, env).returncode != 0  # no extras
    out = home / "release-base"
    result = run([str(root / "bin" / "ue"), "protect", "--source", str(fashion_mnist_root), "--out", str(out),
                  *TINY], home, env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and "pip install 'unlearnable-beo[ray]'" in result.stderr
    assert not out.exists()


def test_dockerfile_builds_on_the_ray_image_of_the_client_and_installs_this_wheel():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    match = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>3\d+)-gpu", instructions[0][1])
    assert match and match["ray"] == ray.__version__, instructions[0][1]
    assert match["py"] == f"{sys.version_info.major}{sys.version_info.minor}"
    copies = [args.split() for kind, args in instructions if kind == "COPY"]
    assert copies == [[f"dist/{WHEEL_NAME}", "/tmp/wheels/"]]
    (install,) = [args for kind, args in instructions if kind == "RUN"]
    assert f"ray[data,train,tune,default]=={ray.__version__}" in shlex.split(install)


def test_image_install_step_runs_a_reference_protect_from_the_wheel(venv, wheel, fashion_mnist_root, tmp_path):
    """The Dockerfile's RUN line with this virtualenv's pip and the built wheel in /tmp/wheels' place."""
    root, env = venv
    home = root.parent
    (install,) = [args for kind, args in dockerfile_instructions() if kind == "RUN"]
    install = install.replace("/tmp/wheels", str(wheel.parent))
    install = install.replace("pip install", f"{root / 'bin' / 'pip'} install", 1)
    # the image skips pip's cache to stay small; the replay may take the same wheels from this machine's cache
    install = install.replace(" --no-cache-dir", "")
    for command in install.split("&&"):
        if command.split()[0] == "rm":  # the image drops its copy of the wheel; ours is the test's
            continue
        result = run(shlex.split(command), home, env)
        assert result.returncode == 0, result.stderr[-3000:]
    out = home / "release"
    result = run([str(root / "bin" / "ue"), "protect", "--source", str(fashion_mnist_root), "--out", str(out),
                  *TINY], home, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_release(out)["count"] == 20
    checkout = tmp_path / "checkout-release"
    env_here = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns.db'}")
    result = run([sys.executable, "-m", "pipelines.cli", "protect", "--source", str(fashion_mnist_root),
                  "--out", str(checkout), *TINY], tmp_path, env_here)
    assert result.returncode == 0, result.stderr[-3000:]
    installed, reference = read_release(out).sorted_by_index(), read_release(checkout).sorted_by_index()
    np.testing.assert_array_equal(installed.index, reference.index)
    np.testing.assert_array_equal(installed.images, reference.images)
