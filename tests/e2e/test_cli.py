"""`ue` as a user runs it: a subprocess, real files, exit codes. The inputs it refuses (one line, exit status 2,
nothing written) are the table in test_bad_inputs.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ue_core.data import read_dataset
from ue_core.release import read_manifest, read_release, verify_release

TINY = ["--set", "data.subset=100", "--set", "data.test_subset=50", "--rounds", "1",
        "--set", "beo.surrogate.epochs=1", "--no-progress", "--engine", "reference"]


@pytest.fixture(scope="module", autouse=True)
def tracking_store(tmp_path_factory):
    """Every CLI run here tracks into a temporary sqlite store (the default would be ./mlflow.db)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlruns.db'}")
        yield


def ue(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def release_dir(fashion_mnist_root, tmp_path_factory, tracking_store):
    out = tmp_path_factory.mktemp("releases") / "fmnist"
    result = ue("protect", "--preset", "fashion-mnist", "--source", str(fashion_mnist_root), "--out", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    assert f"release at {out}" in result.stdout
    return out


def test_protect_publishes_a_verified_release(release_dir, fashion_mnist_root):
    manifest = verify_release(release_dir)
    assert manifest["count"] == 100 and manifest["eps"] == pytest.approx(8 / 255)
    assert manifest["config"]["beo"]["rounds"] == 1
    assert len(manifest["history"]) == 1 and "bayes_error" in manifest["history"][0]
    release = read_release(release_dir)
    np.testing.assert_array_equal(read_dataset(str(release_dir)).images, release.images)  # layout "release"
    source = read_dataset(str(fashion_mnist_root)).sorted_by_index()
    originals = source.images[np.searchsorted(source.index, release.index)]
    assert np.abs(release.images.astype(int) - originals).max() <= 8
    np.testing.assert_array_equal(release.labels, source.labels[np.searchsorted(source.index, release.index)])
    png = read_dataset(str(release_dir / "png"))  # the PNG copy holds the same pixels
    np.testing.assert_array_equal(png.sorted_by_index().images, release.sorted_by_index().images)


def test_device_cpu_publishes_the_default_release_bit_for_bit(release_dir, fashion_mnist_root, tmp_path):
    """`--device cpu` equals the default (auto, which is the CPU on a machine without CUDA)."""
    out = tmp_path / "cpu"
    result = ue("protect", "--preset", "fashion-mnist", "--source", str(fashion_mnist_root), "--out", str(out),
                *TINY, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    ours, default = read_release(out).sorted_by_index(), read_release(release_dir).sorted_by_index()
    np.testing.assert_array_equal(ours.index, default.index)
    np.testing.assert_array_equal(ours.images, default.images)
    assert read_manifest(out)["summary"] == read_manifest(release_dir)["summary"]


def test_protect_publishes_the_imagefolder_and_delta_exports(fashion_mnist_root, tmp_path):
    out = tmp_path / "out"
    result = ue("protect", "--engine", "reference", "--preset", "fashion-mnist",
                "--source", str(fashion_mnist_root), "--out", str(out), "--set", "data.subset=40",
                "--set", "data.test_subset=20", "--rounds", "1",
                "--set", "beo.surrogate.epochs=1", "--set", "beo.estimator.sigma=1.0",
                "--set", "formats=[parquet,imagefolder,delta]", "--no-progress")
    assert result.returncode == 0, result.stderr
    verified = ue("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    files = read_manifest(out)["files"]
    assert {"imagefolder/metadata.csv", "delta/delta.npy", "delta/index.npy", "delta/delta.pt"} <= set(files)
    assert sum(name.startswith("imagefolder/") and name.endswith(".png") for name in files) == 40
    release = read_release(out).sorted_by_index()
    source = read_dataset(str(fashion_mnist_root)).sorted_by_index()
    clean = source.images[np.searchsorted(source.index, release.index)].transpose(0, 3, 1, 2)
    delta = np.load(out / "delta" / "delta.npy")
    np.testing.assert_array_equal(np.load(out / "delta" / "index.npy"), release.index)
    np.testing.assert_array_equal((clean + delta.astype(np.int16)).astype(np.uint8),
                                  release.images.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------- ue logs (refused inputs: test_bad_inputs)


def test_logs_of_an_unreachable_cluster():
    result = ue("logs", "--address", "http://127.0.0.1:9", "ue-protect-00000000")
    assert result.returncode == 2 and result.stderr.startswith("error: cannot reach the Ray job API")


def test_a_baseline_is_published_like_beo_with_its_own_config(fashion_mnist_root, tmp_path):
    """`--method tap`: the same verified release layout; the manifest records the method and only the config
    sections it reads (its budget, its own tap section)."""
    out = tmp_path / "tap"
    result = ue("protect", "--preset", "fashion-mnist", "--source", str(fashion_mnist_root), "--out", str(out),
                *TINY, "--method", "tap", "--set", "tap.model=small_cnn", "--set", "tap.epochs=1",
                "--set", "tap.steps=3", "--set", "tap.batch_size=50")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("protected 100 images with tap (clean train accuracy ")
    assert " dB, SSIM 0." in result.stdout
    manifest = verify_release(out)
    assert manifest["method"] == "tap" and manifest["count"] == 100
    assert set(manifest["config"]) == {"data", "method", "budget", "tap", "formats"}
    assert set(manifest["config"]["budget"]) == {"eps", "norm"} and manifest["config"]["tap"]["steps"] == 3
    assert 0 <= manifest["summary"]["target_rate"] <= 1
    release = read_release(out).sorted_by_index()
    source = read_dataset(str(fashion_mnist_root)).sorted_by_index()
    originals = source.images[np.searchsorted(source.index, release.index)]
    changed = np.abs(release.images.astype(int) - originals)
    assert changed.max() <= 8 and changed.max() > 0
    squared = ((release.images.astype(float) - originals) ** 2).reshape(100, -1).mean(axis=1)
    expected_psnr = np.mean(np.where(squared > 0, 10 * np.log10(255**2 / np.maximum(squared, 1e-12)), 100.0))
    assert manifest["summary"]["psnr_db"] == pytest.approx(expected_psnr, rel=1e-9)
    assert 0 < manifest["summary"]["ssim"] < 1


def test_the_ops_baseline_publishes_a_verified_l0_release(fashion_mnist_root, tmp_path):
    """`--method ops` with an L0 budget of one pixel: a release `ue verify` accepts, one changed pixel per
    image."""
    out = tmp_path / "ops"
    result = ue("protect", "--engine", "reference", "--method", "ops", "--preset", "fashion-mnist",
                "--source", str(fashion_mnist_root), "--out", str(out), "--set", "data.subset=60",
                "--set", "data.test_subset=20", "--set", "budget.norm=l0", "--set", "budget.eps=1",
                "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("protected 60 images with ops (changed fraction ")
    verified = ue("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    manifest = read_manifest(out)
    assert manifest["method"] == "ops" and manifest["config"]["budget"] == {"eps": 1, "norm": "l0"}
    release = read_release(out).sorted_by_index()
    source = read_dataset(str(fashion_mnist_root)).sorted_by_index()
    originals = source.images[np.searchsorted(source.index, release.index)]
    changed = (release.images != originals).any(axis=3).reshape(60, -1).sum(axis=1)
    assert changed.max() == 1 and manifest["summary"]["changed_fraction"] == pytest.approx(changed.mean())


@pytest.mark.parametrize(("norm", "eps", "levels"), [("l2", "1.0", 255.0), ("linf", "8/255", 8)])
def test_the_ar_baseline_publishes_a_verified_release_in_either_norm(fashion_mnist_root, tmp_path, norm, eps, levels):
    """`--method ar` with the paper's L2 budget (eps 1.0) and with its L∞ variant: a release `ue verify`
    accepts, every image changed and within the budget in integers, the manifest recording the ar section."""
    out = tmp_path / f"ar-{norm}"
    result = ue("protect", "--engine", "reference", "--method", "ar", "--preset", "fashion-mnist",
                "--source", str(fashion_mnist_root), "--out", str(out), "--set", "data.subset=60",
                "--set", "data.test_subset=20", "--set", f"budget.norm={norm}", "--eps", eps, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("protected 60 images with ar (rejected draws ")
    verified = ue("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    manifest = read_manifest(out)
    assert manifest["method"] == "ar" and manifest["config"]["budget"]["norm"] == norm
    assert set(manifest["config"]) == {"data", "method", "budget", "ar", "formats"}
    assert manifest["config"]["ar"] == {"seed": 0, "crop": 4}
    release = read_release(out).sorted_by_index()
    source = read_dataset(str(fashion_mnist_root)).sorted_by_index()
    originals = source.images[np.searchsorted(source.index, release.index)]
    difference = (release.images.astype(float) - originals).reshape(60, -1)
    size = np.sqrt((difference**2).sum(axis=1)) if norm == "l2" else np.abs(difference).max(axis=1)
    assert size.max() <= levels and size.min() > 0
def test_the_lsp_baseline_publishes_a_verified_l2_release(fashion_mnist_root, tmp_path):
    """`--method lsp` with the reference's L2 radius for 28×28 gray images (6/255 per pixel, root-mean-square):
    a release `ue verify` accepts, every ‖q − x‖₂ within 168 levels, the manifest recording the lsp section."""
    out = tmp_path / "lsp"
    result = ue("protect", "--engine", "reference", "--method", "lsp", "--preset", "fashion-mnist",
                "--source", str(fashion_mnist_root), "--out", str(out), "--set", "data.subset=60",
                "--set", "data.test_subset=20", "--set", "budget.norm=l2", "--eps", "168/255",
                "--set", "lsp.seed=4", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("protected 60 images with lsp (rms levels 6, peak levels ")
    verified = ue("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    manifest = read_manifest(out)
    assert manifest["method"] == "lsp" and manifest["config"]["budget"] == {"eps": 168 / 255, "norm": "l2"}
    assert manifest["config"]["lsp"] == {"seed": 4, "patch_size": 8, "class_sep": 10.0}
    release = read_release(out).sorted_by_index()
    source = read_dataset(str(fashion_mnist_root)).sorted_by_index()
    originals = source.images[np.searchsorted(source.index, release.index)]
    difference = release.images.astype(float) - originals
    norms = np.sqrt(np.square(difference).reshape(60, -1).sum(axis=1))
    assert norms.max() <= 168 + 1e-9 and norms.min() > 0
