"""torchvision's CIFAR-10/100 dataset classes for releases written by ue_core.data.cifar.write_cifar_batches.

Kept apart from ue_core.data.cifar so that reading and writing the format does not import torchvision;
``ue_core.data`` exposes both classes and imports this module only when one of them is asked for.
"""

from __future__ import annotations

from typing import ClassVar

import torchvision


class ReleasedCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 loader for a modified (e.g. protected) copy from :func:`write_cifar_batches`.

    torchvision 0.29's ``CIFAR10.__init__`` calls ``_check_integrity``, which compares the md5 of all six
    batch files with the original release, and ``_load_meta`` does the same for ``batches.meta``; any
    changed pixel changes the md5, so the stock class refuses every release. This subclass keeps
    torchvision's loading code and only drops the expected md5s (``check_integrity`` then checks that the
    files exist). Like the stock class it needs both the train and the test files.
    """

    train_list: ClassVar[list[list[str | None]]] = [
        [n, None] for n, _ in torchvision.datasets.CIFAR10.train_list
    ]
    test_list: ClassVar[list[list[str | None]]] = [
        [n, None] for n, _ in torchvision.datasets.CIFAR10.test_list
    ]
    meta: ClassVar[dict[str, str | None]] = {**torchvision.datasets.CIFAR10.meta, "md5": None}


class ReleasedCIFAR100(torchvision.datasets.CIFAR100):
    """torchvision's CIFAR100 loader without the md5 checks of the original files (see ReleasedCIFAR10)."""

    train_list: ClassVar[list[list[str | None]]] = [
        [n, None] for n, _ in torchvision.datasets.CIFAR100.train_list
    ]
    test_list: ClassVar[list[list[str | None]]] = [
        [n, None] for n, _ in torchvision.datasets.CIFAR100.test_list
    ]
    meta: ClassVar[dict[str, str | None]] = {**torchvision.datasets.CIFAR100.meta, "md5": None}
