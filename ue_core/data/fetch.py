"""Getting the real Fashion-MNIST without the internet (it is this project's default dataset).

Debian ships it as the package ``dataset-fashion-mnist`` (31 MB), which ``apt-get download`` fetches
without installing anything; torchvision's own download is the fallback. The result is torchvision's
layout, ``ROOT/FashionMNIST/raw/`` with the four uncompressed idx files, which both
``read_dataset(ROOT)`` and ``torchvision.datasets.FashionMNIST(ROOT)`` read. ROOT may be a URI of any
fsspec filesystem (``s3://bucket/prefix``): the files are fetched into a temporary folder and uploaded
one by one (an object appears only once complete), and ``read_dataset("s3://bucket/prefix")`` reads them.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from ue_core.data.fsutil import filesystem, first_line, join
from ue_core.errors import UEError

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DATA_DIR = "usr/share/datasets/fashion-mnist"
# File name → size in bytes of the uncompressed idx file (header + values).
RAW_FILE_SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}


def fashion_mnist_raw_dir(root: str | os.PathLike) -> str:
    """``ROOT/FashionMNIST/raw``, where torchvision (and this project) keep the idx files (a path or URI)."""
    return join(os.fspath(root), "FashionMNIST/raw")


def has_fashion_mnist(directory: str | os.PathLike) -> bool:
    """True if ``directory`` (a path or URI) holds the four uncompressed idx files of the expected sizes."""
    fs, path = filesystem(directory)
    return all(fs.isfile(join(path, name)) and fs.size(join(path, name)) == size
               for name, size in RAW_FILE_SIZES.items())


def fetch_fashion_mnist(root: str | os.PathLike) -> Path | str:
    """Make Fashion-MNIST (60,000 train + 10,000 test, 28×28×1, 10 classes) available under ``root``.

    Does nothing if ``ROOT/FashionMNIST/raw`` is already complete. Otherwise tries, in order, the Debian
    package (``apt-get download``; as root, ``apt-get update`` once and again if the first try fails)
    and torchvision's download. The Debian route makes the files appear only once complete (torchvision
    writes as it downloads). Returns ``root``: a Path for a local folder, the URI as given for a URI.
    """
    if "://" in os.fspath(root):
        return _fetch_to_uri(os.fspath(root))
    root = Path(root)
    raw = fashion_mnist_raw_dir(root)
    if has_fashion_mnist(raw):
        return root
    attempts = []
    for description, fetch in (
        (f"Debian package {DEBIAN_PACKAGE}", _fetch_from_debian),
        ("torchvision download", _fetch_with_torchvision),
    ):
        try:
            fetch(root)
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as error:
            attempts.append(f"{description}: {first_line(error)}")
            continue
        if has_fashion_mnist(raw):
            return root
        attempts.append(f"{description}: the files are still missing or incomplete")
    raise UEError(f"could not fetch Fashion-MNIST into {raw}; tried {' | '.join(attempts)}")


def _fetch_to_uri(uri: str) -> str:
    """Fetch into a temporary local folder, then upload the four idx files under ``URI/FashionMNIST/raw``."""
    raw = fashion_mnist_raw_dir(uri)
    try:
        if has_fashion_mnist(raw):
            return uri
        fs, path = filesystem(raw)
        with tempfile.TemporaryDirectory(prefix="ue-fashion-mnist-") as temp:
            fetch_fashion_mnist(temp)
            for name in RAW_FILE_SIZES:
                fs.put_file(join(fashion_mnist_raw_dir(temp), name), join(path, name))
    except OSError as error:  # how s3fs reports a missing bucket or a refused write
        raise UEError(f"could not write Fashion-MNIST to {raw}: {first_line(error)}") from None
    return uri


def _fetch_from_debian(root: Path) -> None:
    """Download the .deb, unpack it in a temporary directory and install its idx files under ``root``."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not available")
    with tempfile.TemporaryDirectory(prefix="ue-fashion-mnist-") as temp:
        _apt_download(Path(temp))
        debs = sorted(Path(temp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError("apt-get download produced no .deb file")
        unpacked = Path(temp) / "unpacked"
        _run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)])
        _install_raw_files(unpacked / DEBIAN_DATA_DIR, Path(fashion_mnist_raw_dir(root)))


def _apt_download(directory: Path) -> None:
    """``apt-get download`` into ``directory``; as root, retry once after ``apt-get update``."""
    try:
        _run(["apt-get", "download", DEBIAN_PACKAGE], cwd=directory)
    except RuntimeError:
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update"])
        _run(["apt-get", "download", DEBIAN_PACKAGE], cwd=directory)


def _run(command: list[str], cwd: Path | None = None) -> None:
    """Run a command; a non-zero exit raises RuntimeError quoting the command's last line of stderr."""
    result = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["(no error output)"])[-1]
        raise RuntimeError(f"'{' '.join(command)}' exited with {result.returncode}: {last_line}")


def _install_raw_files(gz_dir: Path, raw: Path) -> None:
    """Gunzip the four ``.gz`` idx files of ``gz_dir`` into ``raw``.

    They are written and checked in a staging directory next to ``raw`` first; that directory becomes
    ``raw`` by one rename if ``raw`` does not exist, else each file replaces its namesake by a rename.
    """
    raw.parent.mkdir(parents=True, exist_ok=True)
    staging = raw.parent / f".raw.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        for name in RAW_FILE_SIZES:
            with gzip.open(gz_dir / f"{name}.gz", "rb") as source, open(staging / name, "wb") as target:
                shutil.copyfileobj(source, target)
        if not has_fashion_mnist(staging):
            raise RuntimeError(f"the idx files in {gz_dir} do not have Fashion-MNIST's sizes")
        if raw.exists():
            for name in RAW_FILE_SIZES:
                os.replace(staging / name, raw / name)
        else:
            os.rename(staging, raw)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch_with_torchvision(root: Path) -> None:
    """torchvision's own download into ``ROOT/FashionMNIST/raw`` (needs the internet)."""
    import torchvision

    torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
