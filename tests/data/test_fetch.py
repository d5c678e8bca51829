"""fetch_fashion_mnist: the real data (via the session fixture) and the message when every source fails."""

import gzip

import numpy as np
import pytest

from ue_core.data import fetch
from ue_core.errors import UEError


def test_fixture_root_holds_the_four_raw_files(fashion_mnist_root):
    assert fetch.has_fashion_mnist(fetch.fashion_mnist_raw_dir(fashion_mnist_root))
    assert fetch.fetch_fashion_mnist(fashion_mnist_root) == fashion_mnist_root  # already there: no work


def test_every_source_failing_is_one_line_saying_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda tool: None)

    def offline(root):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(fetch, "_fetch_with_torchvision", offline)
    with pytest.raises(UEError) as error:
        fetch.fetch_fashion_mnist(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "\n" not in message
    assert "Debian package dataset-fashion-mnist: apt-get is not available" in message
    assert "torchvision download: Error downloading" in message
    assert list(tmp_path.iterdir()) == []


def test_installing_wrong_files_leaves_nothing(tmp_path):
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    for name in fetch.RAW_FILE_SIZES:
        (gz_dir / f"{name}.gz").write_bytes(gzip.compress(np.zeros(10, np.uint8).tobytes()))
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    with pytest.raises(RuntimeError, match="sizes"):
        fetch._install_raw_files(gz_dir, raw)
    assert list(raw.parent.iterdir()) == []
