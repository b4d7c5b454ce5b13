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
"""Bands and pixels, the package's single home of both: band names, wavelengths and normalisation statistics of the
common sensors (RGB, RGB+NIR, Sentinel-2) and the image processor's presets built from them, how a PIL image's mode
becomes bands, which axis of an array holds the bands, and the rule for statistics made for 8-bit pixels.

[`PeraImageProcessor`] (`image_processing_pera.py`) uses them, and so do pretraining, evaluation and fine-tuning. This
file is part of the Hub code: `image_processing_pera.py` imports it relatively, and transformers copies it with the
processor's code. It only imports numpy and PIL.
"""

import math
from typing import Any

import numpy as np
from PIL import Image


SENTINEL2_L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
# Level-2A (bottom-of-atmosphere) products drop the cirrus band B10.
SENTINEL2_L2A_BANDS = [band for band in SENTINEL2_L1C_BANDS if band != "B10"]

# Central wavelengths in micrometres of the Sentinel-2A MSI bands (ESA spectral response functions).
SENTINEL2_WAVELENGTHS = {
    "B01": 0.443,
    "B02": 0.492,
    "B03": 0.560,
    "B04": 0.665,
    "B05": 0.704,
    "B06": 0.741,
    "B07": 0.783,
    "B08": 0.833,
    "B8A": 0.865,
    "B09": 0.945,
    "B10": 1.374,
    "B11": 1.614,
    "B12": 2.202,
}

# SSL4EO-S12 statistics in digital numbers (DN = 10000 * reflectance), in the order of the band lists above.
SENTINEL2_L1C_MEAN = [
    1605.58, 1390.78, 1314.87, 1363.52, 1549.44, 2091.75, 2371.72, 2299.90, 2560.30, 830.07, 22.10, 2177.07, 1524.07
]  # fmt: skip
SENTINEL2_L1C_STD = [
    786.79, 850.35, 875.06, 1138.85, 1122.18, 1161.59, 1274.39, 1248.43, 1345.53, 577.32, 51.15, 1336.10, 1136.54
]  # fmt: skip
SENTINEL2_L2A_MEAN = [
    752.40, 884.30, 1144.16, 1297.47, 1624.91, 2194.64, 2422.21, 2517.76, 2581.65, 2645.52, 2368.51, 1805.07
]  # fmt: skip
SENTINEL2_L2A_STD = [
    1108.03, 1155.15, 1183.63, 1368.11, 1370.27, 1355.55, 1416.51, 1474.79, 1439.31, 1582.28, 1455.52, 1343.48
]  # fmt: skip

RGB_BANDS = ["red", "green", "blue"]
RGBN_BANDS = ["red", "green", "blue", "nir"]

# Statistics the released PerA RGB weights were used with downstream, on pixels rescaled to [0, 1].
PERA_RGB_MEAN = [0.3585, 0.3741, 0.3155]
PERA_RGB_STD = [0.1483, 0.1283, 0.1198]

# 4-band NAIP-style imagery (uint8 red, green, blue, near-infrared). Red, green and blue reuse the PerA RGB statistics
# so that the first three inputs match what the RGB weights expect. The NIR mean and std are the pooled statistics
# of the three NAIP crops (2018-2020, 2.0 M pixels) in the project's test data; one place only, so replace them with
# statistics of your own imagery when you have more of it.
RGBN_MEAN = PERA_RGB_MEAN + [0.5512]
RGBN_STD = PERA_RGB_STD + [0.2790]

PERA_IMAGE_SIZE = {"height": 448, "width": 448}

PERA_PROCESSOR_PRESETS: dict[str, dict[str, Any]] = {
    "pera-rgb": {
        "num_channels": 3,
        "band_names": RGB_BANDS,
        "image_mean": PERA_RGB_MEAN,
        "image_std": PERA_RGB_STD,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "offset": 0.0,
        "size": PERA_IMAGE_SIZE,
    },
    "rgbn": {
        "num_channels": 4,
        "band_names": RGBN_BANDS,
        "image_mean": RGBN_MEAN,
        "image_std": RGBN_STD,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "offset": 0.0,
        "size": PERA_IMAGE_SIZE,
    },
    # The Sentinel-2 statistics are in DN, so pixels are not rescaled. Products of processing baseline 04.00 and later
    # (from January 2022) store DN = 10000 * reflectance + 1000: pass `offset=1000` for those.
    "sentinel2-l1c": {
        "num_channels": len(SENTINEL2_L1C_BANDS),
        "band_names": SENTINEL2_L1C_BANDS,
        "wavelengths": [SENTINEL2_WAVELENGTHS[band] for band in SENTINEL2_L1C_BANDS],
        "image_mean": SENTINEL2_L1C_MEAN,
        "image_std": SENTINEL2_L1C_STD,
        "do_rescale": False,
        "rescale_factor": 1.0,
        "offset": 0.0,
        "size": PERA_IMAGE_SIZE,
    },
    "sentinel2-l2a": {
        "num_channels": len(SENTINEL2_L2A_BANDS),
        "band_names": SENTINEL2_L2A_BANDS,
        "wavelengths": [SENTINEL2_WAVELENGTHS[band] for band in SENTINEL2_L2A_BANDS],
        "image_mean": SENTINEL2_L2A_MEAN,
        "image_std": SENTINEL2_L2A_STD,
        "do_rescale": False,
        "rescale_factor": 1.0,
        "offset": 0.0,
        "size": PERA_IMAGE_SIZE,
    },
}

# How a PIL image's mode becomes bands, the one rule of the package (the image processor, pretraining, evaluation,
# fine-tuning): these modes are converted first (alpha dropped, palettes and other colour spaces to RGB, bilevel to
# grayscale), RGBA keeps its fourth band only for a 4-band model, and the others (L, RGB, the 16- and 32-bit integer
# and float modes) are read as they are.
_PIL_MODE_CONVERSIONS = {
    "1": "L",
    "LA": "L",
    "La": "L",
    "P": "RGB",
    "PA": "RGB",
    "RGBa": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


def eight_bit_range_problem(low: float, high: float, is_float: bool) -> str | None:
    """
    The package's one rule for band statistics rescaled by 1/255, which are made for 8-bit pixels: what is wrong with
    an image whose values span `[low, high]`, or None. Values beyond 0-255 are never 8-bit pixels; floats within
    [0, 1] are pixels already rescaled (the processor takes them as they are, pretraining's rescaling cannot).
    """
    if low < 0 or high > 255:
        return f"values in [{low:g}, {high:g}], beyond the 0-255 of 8-bit pixels"
    if is_float and high <= 1:
        return f"values in [{low:g}, {high:g}]: already scaled to [0, 1], not 8-bit pixels"
    return None


def has_8_bit_statistics(rescale_factor: float, offset: float) -> bool:
    """Whether band statistics with this rescaling are made for 8-bit pixels (rescaled by 1/255, no offset)."""
    return not offset and math.isclose(rescale_factor, 1 / 255)


def pil_image_to_bands(image: Image.Image, num_channels: int | None = None) -> np.ndarray:
    """
    The pixels of a PIL image as a `(bands, height, width)` array, by the package's one rule: alpha is dropped (RGBA
    keeps it as a fourth band only when `num_channels` is 4, e.g. RGB+NIR stored as a 4-band PNG), palettes and other
    colour spaces become RGB, bilevel images grayscale, and grayscale is repeated into 3 bands when `num_channels` is
    3; 16-bit, 32-bit and float modes are read as they are.
    """
    if image.mode == "RGBA" and num_channels != 4:
        image = image.convert("RGB")
    elif image.mode in _PIL_MODE_CONVERSIONS:
        image = image.convert(_PIL_MODE_CONVERSIONS[image.mode])
    pixels = np.asarray(image)
    pixels = pixels[np.newaxis] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    if pixels.shape[0] == 1 and num_channels == 3:
        pixels = np.repeat(pixels, 3, axis=0)
    return pixels


# The preset an error suggests for an image of this many bands.
PRESET_FOR_BAND_COUNT = {3: "pera-rgb", 4: "rgbn", 12: "sentinel2-l2a", 13: "sentinel2-l1c"}


def band_layout(
    shape: tuple[int, ...], index: int, input_data_format: str | None, expected: int, band_names: list[str] | None
) -> str:
    """
    Where the bands of image `index`, of `shape`, are: "channels_first" or "channels_last" (a 2-D image is one band,
    first). Without `input_data_format`, the axis is the first or last of size `expected`. Raises a `ValueError`
    naming the fix when the image does not have `expected` bands or its band axis is ambiguous.
    """
    names = f" ({', '.join(band_names)})" if band_names else ""
    if len(shape) == 2:
        shape, input_data_format = (1, *shape), "channels_first"
    elif len(shape) != 3:
        raise ValueError(
            f"Image {index} has shape {shape}; expected (height, width), (bands, height, width) or "
            "(height, width, bands)."
        )
    if input_data_format is None:
        first_matches, last_matches = shape[0] == expected, shape[-1] == expected
        if first_matches and last_matches:
            raise ValueError(
                f"Image {index} has shape {shape}: both its first and last axes could hold the {expected} bands. Pass "
                "input_data_format='channels_first' or input_data_format='channels_last'."
            )
        if first_matches or last_matches:
            input_data_format = "channels_first" if first_matches else "channels_last"
    if input_data_format == "channels_last":
        shape = (shape[2], shape[0], shape[1])
    if input_data_format is not None and shape[0] == expected:
        return input_data_format
    if input_data_format is None:
        got = f"shape {shape} with neither the first nor the last axis of size {expected}"
        got_bands = min(shape[0], shape[-1])
    else:
        got = f"{shape[0]} bands (shape {shape} read as {input_data_format})"
        got_bands = shape[0]
    suggestion = ""
    if got_bands in PRESET_FOR_BAND_COUNT:
        suggestion = f" e.g. PeraImageProcessor.from_preset('{PRESET_FOR_BAND_COUNT[got_bands]}'), or"
    raise ValueError(
        f"This processor expects {expected} bands{names} but image {index} has {got}. Use a processor configured for "
        f"the image's bands:{suggestion} pass num_channels, image_mean and image_std (one value per band); or fix "
        "input_data_format if the band axis was misread."
    )


__all__ = [
    "PRESET_FOR_BAND_COUNT",
    "band_layout",
    "PERA_IMAGE_SIZE",
    "PERA_PROCESSOR_PRESETS",
    "PERA_RGB_MEAN",
    "PERA_RGB_STD",
    "RGBN_BANDS",
    "RGBN_MEAN",
    "RGBN_STD",
    "RGB_BANDS",
    "SENTINEL2_L1C_BANDS",
    "SENTINEL2_L1C_MEAN",
    "SENTINEL2_L1C_STD",
    "SENTINEL2_L2A_BANDS",
    "SENTINEL2_L2A_MEAN",
    "SENTINEL2_L2A_STD",
    "SENTINEL2_WAVELENGTHS",
    "eight_bit_range_problem",
    "has_8_bit_statistics",
    "pil_image_to_bands",
]
