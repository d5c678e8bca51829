"""Decoding and encoding single image files (PNG, JPEG, BMP) for the folder-based layouts."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from fsspec import AbstractFileSystem
from PIL import Image

from ue_core.data.fsutil import first_line, read_bytes
from ue_core.errors import DatasetFormatError, InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GRAYSCALE_MODES = ("1", "L")


def is_image_file(path: str) -> bool:
    """True if the file name ends in a supported image suffix (case-insensitive)."""
    return path.lower().endswith(IMAGE_SUFFIXES)


def decode_image_files(fs: AbstractFileSystem, paths: Sequence[str], rgb: bool = False) -> np.ndarray:
    """Decode image files that must all have the same width and height.

    Args:
        fs: filesystem holding the files.
        paths: file paths in ``fs``, in the row order wanted.
        rgb: convert every image to RGB. Otherwise a set whose images are all grayscale (PIL modes "1"
            or "L") keeps one channel, and any other set is converted to RGB.

    Returns:
        uint8 array (N, H, W, C) with C = 1 or 3.
    """
    if not paths:
        raise InvalidInputError("no image files to decode")
    images: np.ndarray | None = None
    all_gray = True
    for row, path in enumerate(paths):
        pixels, gray = _decode_one(fs, path)
        if images is None:
            images = np.empty((len(paths), *pixels.shape[:2], 3), dtype=np.uint8)
        if pixels.shape[:2] != images.shape[1:3]:
            raise DatasetFormatError(
                f"image size {pixels.shape[1]}x{pixels.shape[0]} differs from the first image's "
                f"{images.shape[2]}x{images.shape[1]}: {path}"
            )
        images[row] = pixels
        all_gray &= gray
    assert images is not None
    return images[..., :1].copy() if all_gray and not rgb else images


def _decode_one(fs: AbstractFileSystem, path: str) -> tuple[np.ndarray, bool]:
    """One file as uint8 (H, W, 1) for grayscale modes or (H, W, 3) otherwise, and whether it was gray."""
    try:
        with Image.open(io.BytesIO(read_bytes(fs, path))) as image:
            image.load()
            if image.mode in GRAYSCALE_MODES:
                return np.asarray(image.convert("L"))[..., None], True
            return np.asarray(image.convert("RGB")), False
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetFormatError(f"cannot decode image {path}: {first_line(error)}") from error


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 (H, W, C) image with C = 1 (grayscale) or 3 (RGB)."""
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise InvalidInputError(f"PNG images need 1 or 3 channels, got shape {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()
