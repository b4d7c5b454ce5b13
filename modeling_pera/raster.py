# Copyright 2025 The PerA authors and contributors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Reading remote-sensing rasters into `(bands, height, width)` arrays without GDAL.

GeoTIFF/TIFF files are read with tifffile, JPEG/PNG (and the other formats PIL knows) with PIL. The arrays feed
[`PeraImageProcessor`] directly. This module is part of the installed package, not of the Hub code files.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from .image_processing_pera import PERA_PROCESSOR_PRESETS, SENTINEL2_L2A_BANDS


# First bytes of classic and BigTIFF files, little- and big-endian.
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TIFF_SUFFIXES = (".tif", ".tiff")
_TORCH_MODE_FOR_RESAMPLE = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


class RasterReadError(ValueError):
    """Raised when a raster file is empty, truncated, corrupt or laid out in a way this module does not read."""


def is_tiff(header: bytes) -> bool:
    """Whether a file starting with `header` (its first 4 bytes or more) is a TIFF/BigTIFF, whatever its name."""
    return header[:4] in _TIFF_SIGNATURES


def read_raster(path: str | os.PathLike) -> np.ndarray:
    """
    Reads an image file into an array of shape `(bands, height, width)`, in the dtype stored in the file.

    TIFF and GeoTIFF (recognised by their first bytes, whatever the file name) are read with tifffile: band-interleaved
    (`YXS`) and planar (`SYX`) layouts and multi-page band stacks all come back channels-first, a single band as
    `(1, height, width)`, and pyramids at full resolution. Georeferencing is not returned. Other formats (JPEG, PNG,
    ...) are read with PIL: grayscale gives 1 band, RGB 3, palette images are expanded to RGB, and an alpha band is
    kept as the last band (RGBA gives 4 bands; take `[:3]` for RGB). Bilevel (mode `1`) images give uint8 0/1.

    Args:
        path (`str` or `os.PathLike`):
            The file to read.

    Returns:
        `np.ndarray`: the pixels, `(bands, height, width)`.

    Raises:
        `FileNotFoundError`: if `path` does not exist.
        `RasterReadError` (a `ValueError`): if the file is empty, truncated, corrupt or not an image, naming the path
        and the cause.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No raster file at {path}.")
    if path.stat().st_size == 0:
        raise RasterReadError(f"Cannot read {path}: the file is empty (0 bytes).")
    with open(path, "rb") as file:
        header = file.read(4)
    if is_tiff(header):
        return _read_tiff(path)
    return _read_with_pil(path)


def _read_tiff(path: Path) -> np.ndarray:
    """Reads the first series of a TIFF file at full resolution, bands first."""
    file_size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            # tifffile reads what is there and fails late, with a decoder message, on a cut-off file: say it plainly.
            for page in series.pages:
                end_of_data = max(
                    (offset + count for offset, count in zip(page.dataoffsets, page.databytecounts)), default=0
                )
                if end_of_data > file_size:
                    raise RasterReadError(
                        f"Cannot read {path}: the file is truncated (its pixel data runs to byte {end_of_data}, "
                        f"the file has {file_size} bytes)."
                    )
            pixels = series.asarray()
            axes = series.axes
    except RasterReadError:
        raise
    except Exception as error:  # tifffile and its codecs raise many types for corrupt input
        raise RasterReadError(f"Cannot read {path} as TIFF: {type(error).__name__}: {error}") from error

    # Drop length-1 axes other than the image plane (e.g. a single sample or page axis).
    keep = [index for index, axis in enumerate(axes) if axis in "YX" or pixels.shape[index] != 1]
    pixels = pixels.reshape([pixels.shape[index] for index in keep])
    axes = "".join(axes[index] for index in keep)
    if "Y" not in axes or "X" not in axes or len(axes) > 3:
        raise RasterReadError(
            f"Cannot read {path}: unsupported TIFF layout {series.axes} of shape {series.shape}; expected a "
            "single image of one or more bands."
        )
    if len(axes) == 2:
        return pixels[np.newaxis]
    band_axis = next(index for index, axis in enumerate(axes) if axis not in "YX")
    return np.moveaxis(pixels, band_axis, 0)


def _read_with_pil(path: Path) -> np.ndarray:
    """Reads a JPEG, PNG or other PIL-readable file, bands first."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P":
                image = image.convert("RGB")
            pixels = np.asarray(image, dtype=np.uint8 if image.mode == "1" else None)
    except Exception as error:  # PIL raises OSError subclasses, SyntaxError and ValueError for corrupt input
        raise RasterReadError(f"Cannot read {path} as an image: {type(error).__name__}: {error}") from error
    if pixels.ndim == 2:
        return pixels[np.newaxis]
    return np.moveaxis(pixels, -1, 0)


def _band_of(file_name: str) -> str:
    """The band a file holds, from BigEarthNet-style names `<patch>_<band>.tif`."""
    return Path(file_name).stem.rsplit("_", 1)[-1].upper()


def read_band_folder(
    folder: str | os.PathLike,
    band_order: Sequence[str] = SENTINEL2_L2A_BANDS,
    size: int | tuple[int, int] | None = None,
    resample: str = "bilinear",
) -> np.ndarray:
    """
    Stacks a folder of single-band GeoTIFFs into one `(bands, height, width)` float32 array on a common grid.

    This is the BigEarthNet layout: `<patch>/<patch>_B01.tif`, `<patch>/<patch>_B02.tif`, ..., one file per band, the
    band being the part of the name after the last underscore (`.tif` or `.tiff`, case-insensitive). Other files,
    such as `<patch>_labels_metadata.json`, are ignored. Sentinel-2 bands come at 10, 20 and 60 m (120x120, 60x60 and
    20x20 pixels in BigEarthNet); every band is resampled to one grid in float32 with `torch.nn.functional.interpolate`
    (antialiased when downsampling). The result is float32 even where no band needed resampling, since resampled
    values are fractional; uint16 digital numbers are exact in float32.

    Args:
        folder (`str` or `os.PathLike`):
            The folder holding the band files.
        band_order (`Sequence[str]`, *optional*, defaults to `SENTINEL2_L2A_BANDS`):
            The bands to read, in the order of the output's first axis. Use `SENTINEL2_L1C_BANDS` for L1C patches.
        size (`int` or `tuple[int, int]`, *optional*):
            Output `(height, width)`, or the side of a square. Defaults to the size of the largest band (the 10 m grid
            for Sentinel-2).
        resample (`str`, *optional*, defaults to `"bilinear"`):
            `"bilinear"`, `"bicubic"` or `"nearest"`.

    Returns:
        `np.ndarray`: float32, `(len(band_order), height, width)`.

    Raises:
        `ValueError`: if bands are missing or found twice, a band file holds more than one band, or an option is
        invalid; `RasterReadError` (a `ValueError`) for unreadable files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of band files.")
    if resample not in _TORCH_MODE_FOR_RESAMPLE:
        raise ValueError(f"`resample` must be one of {list(_TORCH_MODE_FOR_RESAMPLE)}, got {resample!r}.")

    files_by_band: dict[str, list[Path]] = {}
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix.lower() in _TIFF_SUFFIXES:
            files_by_band.setdefault(_band_of(file.name), []).append(file)

    wanted = [band.upper() for band in band_order]
    missing = [band for band in wanted if band not in files_by_band]
    if missing:
        raise ValueError(
            f"Missing band files {missing} in {folder}: expected one '*_<band>.tif' file per band of "
            f"{list(band_order)}, found bands {sorted(files_by_band) or 'none'}."
        )
    duplicated = {band: [file.name for file in files_by_band[band]] for band in wanted if len(files_by_band[band]) > 1}
    if duplicated:
        raise ValueError(f"Several files hold the same band in {folder}: {duplicated}. Keep one file per band.")

    bands = []
    for band in wanted:
        pixels = read_raster(files_by_band[band][0])
        if pixels.shape[0] != 1:
            raise ValueError(
                f"{files_by_band[band][0]} should hold the single band {band} but has {pixels.shape[0]} bands."
            )
        bands.append(torch.from_numpy(pixels.astype(np.float32)))

    if size is None:
        target_size = max((tuple(band.shape[1:]) for band in bands), key=lambda shape: shape[0] * shape[1])
    elif isinstance(size, int):
        target_size = (size, size)
    else:
        target_size = tuple(size)
    if len(target_size) != 2 or min(target_size) < 1:
        raise ValueError(f"`size` must be a positive int or a (height, width) pair, got {size!r}.")

    resampled = [_resample(band, target_size, resample) for band in bands]
    return torch.cat(resampled).numpy()


def _resample(band: torch.Tensor, size: tuple[int, int], resample: str) -> torch.Tensor:
    """Resamples a `(1, height, width)` float32 tensor to `size`; returns it unchanged if it already has that size."""
    if tuple(band.shape[1:]) == size:
        return band
    mode = _TORCH_MODE_FOR_RESAMPLE[resample]
    downsampling = size[0] < band.shape[1] or size[1] < band.shape[2]
    interpolate_kwargs = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": downsampling}
    return F.interpolate(band.unsqueeze(0), size=size, mode=mode, **interpolate_kwargs).squeeze(0)


def select_bands(pixels: np.ndarray, bands: Sequence[int] | None, description: str) -> np.ndarray:
    """
    The bands `bands` (0-based indices, in the order given) of a `(bands, height, width)` array; all of them when
    `bands` is None. Raises a [`RasterReadError`] naming `description` when an index is out of range.
    """
    if bands is None:
        return pixels
    missing = [band for band in bands if not -pixels.shape[0] <= band < pixels.shape[0]]
    if missing:
        raise RasterReadError(
            f"{description} has {pixels.shape[0]} bands (indices 0-{pixels.shape[0] - 1}); --bands asks for {missing}."
        )
    return pixels[list(bands)]


def band_count_advice(found: int, expected: int, pretraining: bool = True) -> str:
    """What to do when images have `found` bands and a model takes `expected`: select bands for a pretrained encoder
    and, in `pretraining`, give a new model the images' band count."""
    advice = []
    if found > expected:
        first = " ".join(str(band) for band in range(expected))
        advice.append(
            f"to use a pretrained {expected}-band encoder, select {expected} of the {found} bands, in the encoder's "
            f"order, with --bands (e.g. --bands {first} for the first {expected})"
        )
    elif not pretraining:
        advice.append(f"use an encoder pretrained on {found}-band images: this one needs {expected} bands")
    if pretraining:
        presets = [name for name, preset in PERA_PROCESSOR_PRESETS.items() if preset["num_channels"] == found]
        preset = f" {presets[0]}" if presets else ""
        advice.append(
            f"to pretrain a new model on all {found} bands, give it that band count (--config_overrides "
            f"num_channels={found}) with band statistics for them (--processor_preset{preset})"
        )
    return "; or ".join(advice)


__all__ = ["RasterReadError", "band_count_advice", "is_tiff", "read_band_folder", "read_raster", "select_bands"]
