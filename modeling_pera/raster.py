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
"""The one way from an image file to bands, used by pretraining, evaluation, fine-tuning and visualisation: listing
(suffixes, band folders), decoding into `(bands, height, width)` arrays without GDAL (GeoTIFF/TIFF with tifffile,
JPEG/PNG and the other formats PIL knows with PIL, BigEarthNet-style band folders), PIL's modes turned into bands by
[`pil_image_to_bands`] (the processor's own rule), and resampling bands to one grid. Large scenes (GeoTIFF/COG of
any size) are read a window at a time by `scene_io.py`.

The arrays feed [`PeraImageProcessor`] directly. This module is part of the installed package, not of the Hub code
files.
"""

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from .bands_pera import (
    PERA_PROCESSOR_PRESETS,
    SENTINEL2_L1C_BANDS,
    SENTINEL2_L2A_BANDS,
    pil_image_to_bands,
)


logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")
_TIFF_EXTENSIONS = (".tif", ".tiff")
# First bytes of classic and BigTIFF files, little- and big-endian.
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TORCH_MODE_FOR_RESAMPLE = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


class RasterReadError(ValueError):
    """Raised when a raster file is empty, truncated, corrupt or laid out in a way this module does not read."""


def is_tiff(header: bytes) -> bool:
    """Whether a file starting with `header` (its first 4 bytes or more) is a TIFF/BigTIFF, whatever its name."""
    return header[:4] in _TIFF_SIGNATURES


def band_of_file(file_name: str) -> str | None:
    """The band a BigEarthNet-style band file `<patch>_<band>.tif` holds (the part of its name after the last
    underscore, upper-case), or None for a name without one or a file that is not a TIFF."""
    stem, suffix = os.path.splitext(file_name)
    if suffix.lower() not in _TIFF_EXTENSIONS or "_" not in stem:
        return None
    return stem.rsplit("_", 1)[-1].upper()


def is_image_file_name(file_name: str) -> bool:
    """Whether a file of this name is read as an image: one of `IMAGE_EXTENSIONS` (any case), and not hidden."""
    return not file_name.startswith(".") and file_name.lower().endswith(IMAGE_EXTENSIONS)


def _is_band_folder(file_names: Sequence[str]) -> bool:
    """Two or more Sentinel-2 band files (`*_B01.tif`, ..., `*_B8A.tif`) make a folder one sample."""
    return sum(band_of_file(name) in SENTINEL2_L1C_BANDS for name in file_names) >= 2


def find_images(root: str | os.PathLike) -> list[Path]:
    """
    Lists the images under `root`, recursively, in a deterministic (sorted) order.

    An image is a file of `IMAGE_EXTENSIONS` (`.jpg`, `.jpeg`, `.png`, `.webp`, `.tif`, `.tiff`, any case), or a
    BigEarthNet-style band folder: a folder holding two or more single-band files `<name>_B01.tif`, `<name>_B02.tif`,
    ... (Sentinel-2 bands `B01`-`B12` and `B8A`), which is one image (read with [`read_band_folder`]); its band files
    are not listed on their own. Hidden files and folders (names starting with `.`) are skipped, as are zero-byte
    files and files of other extensions (counted and logged with a warning). Symbolic links are followed, each real
    folder once.

    Args:
        root (`str` or `os.PathLike`):
            The folder to search.

    Returns:
        `list[Path]`: image files and band folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: pass the folder that holds the images.")
    samples, zero_byte_files, missing_files, other_files = [], [], [], []
    visited = set()
    for folder, subfolders, file_names in os.walk(root, followlinks=True):
        real_folder = os.path.realpath(folder)
        if real_folder in visited:
            subfolders.clear()
            continue
        visited.add(real_folder)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        folder = Path(folder)
        band_folder = _is_band_folder(file_names)
        if band_folder:
            samples.append(folder)
        for name in file_names:
            if name.startswith(".") or (band_folder and band_of_file(name) in SENTINEL2_L1C_BANDS):
                continue
            path = folder / name
            if not is_image_file_name(name):
                other_files.append(path)
                continue
            try:
                size = path.stat().st_size
            except OSError:  # a broken symbolic link
                missing_files.append(path)
                continue
            if size == 0:
                zero_byte_files.append(path)
            else:
                samples.append(path)
    other_kinds = f"files that are not {'/'.join(IMAGE_EXTENSIONS)} images"
    skipped_kinds = ((zero_byte_files, "zero-byte files"), (missing_files, "broken links"), (other_files, other_kinds))
    for skipped, kind in skipped_kinds:
        if skipped:
            examples = ", ".join(str(path) for path in sorted(skipped)[:3])
            logger.warning(f"find_images: skipped {len(skipped)} {kind} under {root}, e.g. {examples}")
    return sorted(samples)


def read_image(
    path: str | os.PathLike, num_channels: int | None = None, band_order: Sequence[str] = SENTINEL2_L2A_BANDS
) -> np.ndarray:
    """
    Reads an image file ([`read_raster`]) or a band folder ([`read_band_folder`] with `band_order`) into a
    `(bands, height, width)` array: what [`find_images`] lists.
    """
    if Path(path).is_dir():
        return read_band_folder(path, band_order)
    return read_raster(path, num_channels)


def read_encoder_input(
    path: str | os.PathLike, num_channels: int | None, bands: Sequence[int] | None = None
) -> np.ndarray:
    """
    The pixels an encoder of `num_channels` bands (None: any count) gets from an image file or band folder: read with
    [`read_image`], then its `bands` (0-based, in the encoder's order; all by default, see [`select_bands`]), as a
    writable C-contiguous `(bands, height, width)` array. Raises a `ValueError` naming the file, the band counts and
    what to do when they differ.
    """
    pixels = select_bands(read_image(path, None if bands else num_channels), bands, str(path))
    if num_channels is not None and pixels.shape[0] != num_channels:
        raise ValueError(
            f"{path} has {pixels.shape[0]} bands{' after --bands' if bands else ''} but the encoder takes "
            f"{num_channels}: {band_count_advice(pixels.shape[0], num_channels, pretraining=False)}."
        )
    # Stock processors wrap the array with torch.from_numpy, which warns on the read-only arrays PIL gives.
    return np.require(pixels, requirements=("C_CONTIGUOUS", "WRITEABLE"))


def read_raster(path: str | os.PathLike, num_channels: int | None = None) -> np.ndarray:
    """
    Reads an image file into an array of shape `(bands, height, width)`, in the dtype stored in the file.

    TIFF and GeoTIFF (recognised by their first bytes, whatever the file name) are read with tifffile: band-interleaved
    (`YXS`) and planar (`SYX`) layouts and multi-page band stacks all come back channels-first, a single band as
    `(1, height, width)`, and pyramids at full resolution. Georeferencing is not returned. Other formats (JPEG, PNG,
    ...) are read with PIL, their mode turned into bands by [`pil_image_to_bands`]: grayscale gives 1 band (3 when
    `num_channels` is 3), RGB 3, palettes and other colour spaces RGB, and an alpha band is dropped (kept as a fourth
    band only when `num_channels` is 4).

    Args:
        path (`str` or `os.PathLike`):
            The file to read.
        num_channels (`int`, *optional*):
            The band count of the model the pixels are for, which decides the two cases above.

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
    size = path.stat().st_size
    if size == 0:
        raise RasterReadError(f"Cannot read {path}: the file is empty (0 bytes).")
    with open(path, "rb") as file:
        if is_tiff(file.read(4)):
            file.seek(0)
            return _read_tiff(file, str(path), size)
    return _read_with_pil(path, str(path), num_channels)


def decode_image_bytes(data: bytes, description: str, num_channels: int | None = None) -> np.ndarray:
    """An encoded image held in memory (e.g. a `datasets` image column), read as [`read_raster`] reads files;
    `description` names it in errors."""
    if is_tiff(data):
        return _read_tiff(io.BytesIO(data), description, len(data))
    return _read_with_pil(io.BytesIO(data), description, num_channels)


def _read_tiff(file: BinaryIO, description: str, size: int) -> np.ndarray:
    """Reads the first series of a TIFF file of `size` bytes at full resolution, bands first."""
    try:
        with tifffile.TiffFile(file) as tiff:
            series = tiff.series[0]
            # tifffile reads what is there and fails late, with a decoder message, on a cut-off file: say it plainly.
            for page in series.pages:
                end_of_data = max(
                    (offset + count for offset, count in zip(page.dataoffsets, page.databytecounts)), default=0
                )
                if end_of_data > size:
                    raise RasterReadError(
                        f"Cannot read {description}: the file is truncated (its pixel data runs to byte "
                        f"{end_of_data}, the file has {size} bytes)."
                    )
            pixels = series.asarray()
            axes = series.axes
    except RasterReadError:
        raise
    except Exception as error:  # tifffile and its codecs raise many types for corrupt input
        raise RasterReadError(f"Cannot read {description} as TIFF: {type(error).__name__}: {error}") from error

    # Drop length-1 axes other than the image plane (e.g. a single sample or page axis).
    keep = [index for index, axis in enumerate(axes) if axis in "YX" or pixels.shape[index] != 1]
    pixels = pixels.reshape([pixels.shape[index] for index in keep])
    axes = "".join(axes[index] for index in keep)
    if "Y" not in axes or "X" not in axes or len(axes) > 3:
        raise RasterReadError(
            f"Cannot read {description}: unsupported TIFF layout {series.axes} of shape {series.shape}; expected a "
            "single image of one or more bands."
        )
    if len(axes) == 2:
        return pixels[np.newaxis]
    band_axis = next(index for index, axis in enumerate(axes) if axis not in "YX")
    return np.moveaxis(pixels, band_axis, 0)


def _read_with_pil(file: str | os.PathLike | BinaryIO, description: str, num_channels: int | None) -> np.ndarray:
    """Reads a JPEG, PNG or other PIL-readable file, bands first."""
    try:
        with Image.open(file) as image:
            image.load()
            return pil_image_to_bands(image, num_channels)
    except Exception as error:  # PIL raises OSError subclasses, SyntaxError and ValueError for corrupt input
        raise RasterReadError(f"Cannot read {description} as an image: {type(error).__name__}: {error}") from error


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
        band = band_of_file(file.name)
        if band is not None and file.is_file():
            files_by_band.setdefault(band, []).append(file)

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


__all__ = [
    "IMAGE_EXTENSIONS",
    "RasterReadError",
    "band_count_advice",
    "band_of_file",
    "decode_image_bytes",
    "find_images",
    "is_image_file_name",
    "is_tiff",
    "read_band_folder",
    "read_encoder_input",
    "read_image",
    "read_raster",
    "select_bands",
]
