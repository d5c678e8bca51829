"""`ue protect` from S3 to S3 against a real S3 server (SeaweedFS): a release that checks out, and bad input
that fails in one line, fast, and leaves both buckets as they were.

Listings here are of objects (no delimiter): SeaweedFS keeps the emptied folders of deleted objects for a
while and shows them as common prefixes, which no object store client treats as content.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.storage import claim_output
from ue_core.data import read_dataset, write_shards
from ue_core.data.dataset import balanced_subset
from ue_core.data.fetch import RAW_FILE_SIZES
from ue_core.release import read_release

SOURCE = "s3://source/fmnist"
RELEASES = "s3://releases"
TINY = ["--set", "data.subset=100", "--set", "data.test_subset=0", "--rounds", "1",
        "--set", "beo.surrogate.epochs=1", "--no-progress"]


def ue(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"}, cwd=cwd, timeout=600, check=False)


def protect(source: str, out: str, tmp_path: Path, env: dict[str, str], *extra: str,
            engine: str = "reference") -> subprocess.CompletedProcess:
    return ue("protect", "--preset", "fashion-mnist", "--source", source, "--out", out, "--engine", engine,
              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *TINY, *extra, env=env, cwd=tmp_path)


@pytest.fixture(scope="module")
def buckets(s3_server, fashion_mnist_root):
    """s3://source/fmnist/FashionMNIST/raw/ holding the real idx files, and an empty s3://releases."""
    raw = Path(fashion_mnist_root) / "FashionMNIST" / "raw"
    keys = s3_server.upload(raw, f"{SOURCE}/FashionMNIST/raw")
    assert len(keys) == 4
    s3_server.create_bucket("releases")
    return s3_server


@pytest.fixture
def s3_env(buckets, monkeypatch):
    """This process's S3 settings (for ue_core's own readers in the test)."""
    buckets.use_in_this_process(monkeypatch)
    return buckets


def md5(path: Path) -> str:
    return f'"{hashlib.md5(path.read_bytes()).hexdigest()}"'


def test_protect_on_ray_from_s3_to_s3(buckets, s3_env, fashion_mnist_root, tmp_path):
    out = f"{RELEASES}/fmnist-beo"
    source_before, releases_before = buckets.snapshot(SOURCE), buckets.snapshot(RELEASES)
    result = protect(SOURCE, out, tmp_path, buckets.env(), engine="ray")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"release at {out}" in result.stdout

    # every file the manifest lists, read back with s3fs directly, has its sha256; nothing else is there
    fs = buckets.filesystem()
    manifest = json.loads(fs.cat("releases/fmnist-beo/manifest.json"))
    objects = sorted(fs.find("releases/fmnist-beo"))
    assert objects == sorted([f"releases/fmnist-beo/{name}" for name in manifest["files"]]
                             + ["releases/fmnist-beo/manifest.json"])
    for name, expected in manifest["files"].items():
        assert hashlib.sha256(fs.cat(f"releases/fmnist-beo/{name}")).hexdigest() == expected, name
    assert manifest["count"] == 100 and manifest["engine"] == "ray" and manifest["source"] == SOURCE

    verified = ue("verify", out, env=buckets.env(), cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert f"release {out} verified: 100 images" in verified.stdout

    release = read_release(out)
    source = read_dataset(fashion_mnist_root).sorted_by_index()
    rows = np.searchsorted(source.index, release.index)
    assert len(release) == 100 and len(np.unique(release.index)) == 100
    np.testing.assert_array_equal(source.index[rows], release.index)
    np.testing.assert_array_equal(release.labels, source.labels[rows])
    assert release.images.shape == (100, 28, 28, 1)
    assert np.abs(release.images.astype(int) - source.images[rows].astype(int)).max() <= 8

    # the source objects are the local files, before and after; no work dir, staging or probe is left
    raw = Path(fashion_mnist_root) / "FashionMNIST" / "raw"
    assert buckets.snapshot(SOURCE) == source_before == {
        f"source/fmnist/FashionMNIST/raw/{path.name}": md5(path) for path in raw.iterdir()
    }
    added = set(buckets.snapshot(RELEASES)) - set(releases_before)
    assert sorted(added) == objects


def assert_refused(result: subprocess.CompletedProcess, *names: str) -> None:
    """Exit 2 and one line, ``error: …``, naming every one of ``names``."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[-3000:]
    for name in names:
        assert name in result.stderr, result.stderr


@pytest.fixture
def unchanged(buckets):
    """Asserts at the end of a test that both buckets hold exactly the objects they held at its start."""
    before = {"source": buckets.snapshot("s3://source"), "releases": buckets.snapshot(RELEASES)}
    yield
    assert {"source": buckets.snapshot("s3://source"), "releases": buckets.snapshot(RELEASES)} == before
    assert not [b for b in buckets.filesystem().ls("") if b.startswith("no-such-")], "a bucket was created"


def test_missing_source_bucket(buckets, unchanged, tmp_path):
    result = protect("s3://no-such-source/fmnist", f"{RELEASES}/x", tmp_path, buckets.env())
    assert_refused(result, "s3://no-such-source/fmnist", "does not exist")


def test_missing_output_bucket(buckets, unchanged, tmp_path):
    result = protect(SOURCE, "s3://no-such-releases/fmnist", tmp_path, buckets.env())
    assert_refused(result, "s3://no-such-releases/fmnist", "does not exist")


def test_wrong_secret_key(buckets, unchanged, tmp_path):
    out = f"{RELEASES}/x"
    result = protect(SOURCE, out, tmp_path, buckets.env(AWS_SECRET_ACCESS_KEY="not-the-secret"))
    assert_refused(result, "access denied", "credentials")
    assert SOURCE in result.stderr or out in result.stderr


def test_unreachable_endpoint_fails_fast(buckets, unchanged, tmp_path):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    out = f"{RELEASES}/x"
    started = time.monotonic()
    result = protect(SOURCE, out, tmp_path, buckets.env(AWS_ENDPOINT_URL=closed))
    assert time.monotonic() - started < 30
    assert_refused(result, "unreachable")
    assert SOURCE in result.stderr or out in result.stderr


def test_corrupt_shard_in_a_parquet_source(buckets, fashion_mnist_root, tmp_path):
    # the shards are written locally and uploaded: this test is about reading them
    shards = tmp_path / "shards"
    write_shards(balanced_subset(read_dataset(fashion_mnist_root), 200, seed=0), shards, rows_per_shard=50)
    buckets.upload(shards, "s3://source/shards")
    fs = buckets.filesystem()
    fs.pipe("source/shards/part-00002.parquet", os.urandom(4096))
    source_before, releases_before = buckets.snapshot("s3://source"), buckets.snapshot(RELEASES)

    result = protect("s3://source/shards", f"{RELEASES}/from-shards", tmp_path, buckets.env())
    assert_refused(result, "source/shards/part-00002.parquet")
    assert buckets.snapshot("s3://source") == source_before and buckets.snapshot(RELEASES) == releases_before


def test_eps_out_of_range(buckets, unchanged, tmp_path):
    result = protect(SOURCE, f"{RELEASES}/x", tmp_path, buckets.env(), "--eps", "1.5")
    assert_refused(result, "eps must be in (0, 1)")


def test_existing_output_without_overwrite(buckets, tmp_path):
    fs = buckets.filesystem()
    fs.pipe("releases/taken/keep.txt", b"someone else's")
    with_existing = buckets.snapshot(RELEASES)
    result = protect(SOURCE, f"{RELEASES}/taken", tmp_path, buckets.env())
    assert_refused(result, f"{RELEASES}/taken", "--overwrite")
    assert buckets.snapshot(RELEASES) == with_existing
    assert fs.cat("releases/taken/keep.txt") == b"someone else's"


def test_a_claimed_output_is_refused(buckets, s3_env, unchanged, tmp_path):
    """Another job holds the claim of s3://releases/claimed: a protect job there fails at once, in one line."""
    out = f"{RELEASES}/claimed"
    with claim_output(out, {"command": "protect", "config": "another"}) as claim:
        assert claim == f"{RELEASES}/.claimed.claim"
        held = buckets.filesystem().cat("releases/.claimed.claim")
        result = protect(SOURCE, out, tmp_path, buckets.env())
        assert_refused(result, f"{out} is claimed by another job", claim, "--overwrite")
        assert buckets.filesystem().cat("releases/.claimed.claim") == held
    assert not buckets.filesystem().exists("releases/.claimed.claim")


def test_fetch_to_s3(buckets, s3_env, fashion_mnist_root, tmp_path):
    """`ue fetch` to an s3:// root writes the idx files under the prefix (nothing local named `s3:`), and
    read_dataset reads them back from S3 equal to the local copy."""
    buckets.create_bucket("datasets")
    root = "s3://datasets/fetched"
    result = ue("fetch", "fashion-mnist", "--root", root, env=buckets.env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == root
    assert not (tmp_path / "s3:").exists() and list(tmp_path.iterdir()) == []
    raw = Path(fashion_mnist_root) / "FashionMNIST" / "raw"
    objects = buckets.snapshot(root)
    assert objects == {f"datasets/fetched/FashionMNIST/raw/{name}": md5(raw / name) for name in RAW_FILE_SIZES}
    for split in ("train", "test"):
        remote, local = read_dataset(root, split=split), read_dataset(fashion_mnist_root, split=split)
        np.testing.assert_array_equal(remote.images, local.images)
        np.testing.assert_array_equal(remote.labels, local.labels)
    again = ue("fetch", "fashion-mnist", "--root", root, env=buckets.env(), cwd=tmp_path)  # already there
    assert again.returncode == 0 and buckets.snapshot(root) == objects
