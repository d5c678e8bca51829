"""Fixtures shared by every test directory."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """A directory whose FashionMNIST/raw holds the real Fashion-MNIST (fetched once if missing).

    The location is $UE_DATA_DIR if set, else the repository's gitignored data/ directory.
    """
    from ue_core.data import fetch_fashion_mnist

    return fetch_fashion_mnist(Path(os.environ.get("UE_DATA_DIR", REPO_ROOT / "data")))
