# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""A pretraining sample to a `(bands, height, width)` tensor with the model's band count ([`ImageDecoder`], reading
through [`~modeling_pera.raster`]), or an [`UnusableSampleError`] saying why not."""

import os
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from ..bands_pera import SENTINEL2_L2A_BANDS, pil_image_to_bands
from ..raster import RasterReadError, decode_image_bytes, read_image, select_bands


# How many bad samples each dataset object (each DataLoader worker holds its own) names in the log.
NUM_LOGGED_BAD_SAMPLES = 5
DEFAULT_MIN_IMAGE_SIZE = 16


class UnusableSampleError(ValueError):
    """
    A sample that cannot be used for pretraining.

    Attributes:
        reason (`str`): `"unreadable"`, `"band_count"`, `"too_small"` or `"not_finite"`.
        num_bands (`int` or `None`): the band count found, for `"band_count"`.
    """

    def __init__(self, message: str, reason: str, num_bands: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.num_bands = num_bands


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


class ImageDecoder:
    """
    Decodes one sample into a `(num_channels, height, width)` tensor, or raises [`UnusableSampleError`]: uint8 for
    8-bit images (a quarter of the memory, and the crops of `AlignedPairViews(defer_photometry=True)` stay 8-bit),
    float32 for any other dtype.

    Sources: a path to an image file or a band folder (read with [`~raster.read_image`]), a PIL image, a `datasets`
    image dict (`{"bytes": ..., "path": ...}`), or a 2-D/3-D array or tensor (channels first or last). Band counts are
    adapted only where the meaning is clear, by the package's rule for PIL images ([`pil_image_to_bands`]: alpha
    dropped, palettes to RGB, grayscale repeated when the model expects 3 bands), as in evaluation, fine-tuning and
    the processor. Any other mismatch with `num_channels` makes the sample unusable (a 4-band RGB+NIR TIFF is not
    silently cut to RGB).

    Args:
        num_channels (`int`):
            The model's band count.
        band_order (`Sequence[str]`, *optional*, defaults to `SENTINEL2_L2A_BANDS`):
            Bands to read from band folders, in input order.
        min_image_size (`int`, *optional*, defaults to 16):
            Images with a side shorter than this are unusable.
        bands (`Sequence[int]`, *optional*):
            The decoded image's bands to keep, in order (0-based), e.g. `[0, 1, 2]` for the RGB of RGB+NIR tiles; all
            of them by default. An image without one of these bands is unusable.
    """

    def __init__(
        self,
        num_channels: int,
        band_order: Sequence[str] = SENTINEL2_L2A_BANDS,
        min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
        bands: Sequence[int] | None = None,
    ) -> None:
        self.num_channels = num_channels
        self.band_order = list(band_order)
        self.min_image_size = min_image_size
        self.bands = None if bands is None else list(bands)

    def __call__(self, source: Any, description: str) -> torch.Tensor:
        """Decodes `source`; `description` (a path or a row) names it in error messages."""
        try:
            pixels = self._decode(source)
        except UnusableSampleError:
            raise
        except Exception as error:  # decoders raise many types (OSError, SyntaxError, ValueError, ...) on bad input
            message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            if description not in message:  # the raster readers name the path themselves
                message = f"cannot read {description}: {message}"
            raise UnusableSampleError(message, "unreadable") from error
        if self.bands is not None and pixels.ndim == 3:
            try:
                pixels = select_bands(pixels, self.bands, description)
            except RasterReadError as error:
                raise UnusableSampleError(str(error), "band_count", num_bands=pixels.shape[0]) from error
        if pixels.ndim != 3 or pixels.shape[0] != self.num_channels:
            num_bands = pixels.shape[0] if pixels.ndim == 3 else None
            raise UnusableSampleError(
                f"{description} has {num_bands} bands (shape {pixels.shape}) but the model expects "
                f"{self.num_channels}",
                "band_count",
                num_bands=num_bands,
            )
        if min(pixels.shape[1:]) < self.min_image_size:
            raise UnusableSampleError(
                f"{description} is {pixels.shape[1]}x{pixels.shape[2]} px, smaller than min_image_size="
                f"{self.min_image_size}",
                "too_small",
            )
        if pixels.dtype == np.uint8:
            return torch.from_numpy(np.require(pixels, requirements=["C", "W"]))
        image = torch.from_numpy(np.asarray(pixels, dtype=np.float32))
        if not torch.isfinite(image).all():
            raise UnusableSampleError(f"{description} contains NaN or infinite values", "not_finite")
        return image

    def _decode(self, source: Any) -> np.ndarray:
        if isinstance(source, (str, os.PathLike)):
            return read_image(source, self.num_channels, self.band_order)
        if isinstance(source, Image.Image):
            return pil_image_to_bands(source, self.num_channels)
        if isinstance(source, dict):
            return self._decode_image_dict(source)
        if isinstance(source, (np.ndarray, torch.Tensor, list)):
            return self._array_to_bands(np.asarray(source))
        raise TypeError(f"unsupported sample type {type(source).__name__}")

    def _decode_image_dict(self, value: dict) -> np.ndarray:
        """A `datasets.Image(decode=False)` value: encoded bytes, or a path (local, or remote for `datasets`)."""
        data, path = value.get("bytes"), value.get("path")
        if data:
            return decode_image_bytes(data, path or "the image bytes", self.num_channels)
        if path and os.path.exists(path):
            return read_image(path, self.num_channels, self.band_order)
        if path:  # a remote file (hf://, https://, archives): let `datasets` fetch and decode it
            return pil_image_to_bands(datasets.Image().decode_example(value), self.num_channels)
        raise ValueError("empty image value (no bytes and no path)")

    def _array_to_bands(self, pixels: np.ndarray) -> np.ndarray:
        """An array column: 2-D is one band; 3-D is channels-first unless only its last axis has `num_channels`."""
        if pixels.ndim == 2:
            return pixels[np.newaxis]
        if pixels.ndim == 3 and pixels.shape[0] != self.num_channels and pixels.shape[-1] == self.num_channels:
            return np.moveaxis(pixels, -1, 0)
        return pixels
