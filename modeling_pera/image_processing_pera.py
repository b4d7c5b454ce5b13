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
"""Image processor class for PerA: any number of spectral bands, any integer or float pixel type.

The band presets, their statistics and the pixel rules the processor applies live in `bands_pera.py` (and are
importable from here too). This file travels to the Hub as custom code (`trust_remote_code=True`): it only imports
torch, numpy, PIL, transformers and `bands_pera.py` (relatively, which transformers copies with it).
"""

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import logging

from .bands_pera import (
    PERA_IMAGE_SIZE,
    PERA_PROCESSOR_PRESETS,
    PERA_RGB_MEAN,
    PERA_RGB_STD,
    RGB_BANDS,
    RGBN_MEAN,
    RGBN_STD,
    SENTINEL2_L1C_BANDS,
    SENTINEL2_L1C_MEAN,
    SENTINEL2_L1C_STD,
    SENTINEL2_L2A_BANDS,
    SENTINEL2_L2A_MEAN,
    SENTINEL2_L2A_STD,
    SENTINEL2_WAVELENGTHS,
    band_layout,
    eight_bit_range_problem,
    has_8_bit_statistics,
    pil_image_to_bands,
)


logger = logging.get_logger(__name__)


# PIL's integer codes for the interpolation filters this processor implements, and the torch modes they map to.
_TORCH_MODE_FOR_RESAMPLE = {2: "bilinear", 3: "bicubic"}

_NUMPY_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)
_TORCH_DTYPES = (
    torch.uint8,
    torch.uint16,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.float32,
    torch.float64,
)

# Options of `ImagesKwargs` this processor does not implement: refuse them instead of ignoring them silently.
_UNSUPPORTED_OPTIONS = ("do_center_crop", "crop_size", "do_pad", "pad_size", "do_convert_rgb", "data_format")

# Options that can be overridden per call of `preprocess`. The band layout (`num_channels`, `band_names`,
# `wavelengths`) and the pixel size (`ground_sampling_distance`) belong to the processor and are fixed.
_PREPROCESS_OPTIONS = (
    "do_resize",
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "offset",
    "do_normalize",
    "image_mean",
    "image_std",
)

# Every option this processor implements.
_PROCESSOR_OPTIONS = _PREPROCESS_OPTIONS + ("num_channels", "band_names", "wavelengths", "ground_sampling_distance")

# Keys transformers itself writes to `preprocessor_config.json` (now or in older versions) besides the options.
_SERVICE_KEYS = ("image_processor_type", "auto_map", "processor_class", "feature_extractor_type")


class PeraImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    offset (`float`, *optional*, defaults to `0.0`):
        Value subtracted from every pixel before rescaling. Sentinel-2 products of processing baseline 04.00 and later
        store DN = 10000 * reflectance + 1000: pass `offset=1000` for those.
    num_channels (`int`, *optional*, defaults to `3`):
        Number of spectral bands every image must have.
    band_names (`list[str]`, *optional*):
        Name of each band, in the order of the image's band axis. Defaults to `["red", "green", "blue"]` for 3 bands.
    wavelengths (`list[float]`, *optional*):
        Central wavelength of each band, in micrometres.
    ground_sampling_distance (`float`, *optional*):
        Metres on the ground per pixel of the images the model was pretrained on (for large scenes, of the windows as
        read). Recorded for users and shown in the model card; the processor does not resample by it.
    """

    offset: float | None
    num_channels: int | None
    band_names: list[str] | None
    wavelengths: list[float] | None
    ground_sampling_distance: float | None


def _as_float_list(values: Any) -> Any:
    """Turns a sequence of numbers into a list of floats; anything else is returned as is for validation to reject."""
    if isinstance(values, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(values, str):
        return [float(value) for value in values]
    return values


def _as_number(value: Any) -> Any:
    """An int or float as a float (None and anything else as is, for validation to reject)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _as_per_band_list(values: Any, num_channels: int) -> Any:
    """Like `_as_float_list`, but a single number is repeated for each of the `num_channels` bands."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return [float(values)] * num_channels
    return _as_float_list(values)


class PeraImageProcessor(BaseImageProcessor):
    r"""
    Constructs a PerA image processor for RGB, RGB+NIR and multispectral (e.g. Sentinel-2) imagery.

    Every image goes through the same float32 pipeline in torch, band by band: subtract `offset`, multiply by
    `rescale_factor`, resize to `size`, then normalise with `image_mean` and `image_std`. Unlike transformers' stock
    image processors it takes any number of bands and 16-bit or float pixels. Use
    [`PeraImageProcessor.from_preset`] for the common sensors (`PERA_PROCESSOR_PRESETS`).

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize every image to `size`.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 448, "width": 448}`):
            Output size `{"height": int, "width": int}`. An int means a square of that side.
        resample (`int`, *optional*, defaults to `2`):
            Interpolation filter as PIL numbers it: `2` (bilinear) or `3` (bicubic). Downsampling is antialiased.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply the pixels by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Scale factor applied when `do_rescale` is `True`. With 1/255 (statistics for 8-bit pixels), float images
            with values in [0, 1] are taken as already rescaled, and images with values outside 0-255 (16-bit data)
            are refused with a message naming the fix.
        offset (`float`, *optional*, defaults to `0.0`):
            Value subtracted from every pixel before rescaling (see [`PeraImageProcessorKwargs`]).
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise every band with `image_mean` and `image_std`.
        image_mean (`float` or `list[float]`, *optional*, defaults to `[0.3585, 0.3741, 0.3155]`):
            Mean of each band, after offset and rescaling. A single number is used for every band.
        image_std (`float` or `list[float]`, *optional*, defaults to `[0.1483, 0.1283, 0.1198]`):
            Standard deviation of each band, after offset and rescaling. Must be positive.
        num_channels (`int`, *optional*, defaults to `3`):
            Number of bands every image must have.
        band_names (`list[str]`, *optional*):
            Name of each band. Defaults to `["red", "green", "blue"]` when `num_channels` is 3, else `None`.
        wavelengths (`list[float]`, *optional*):
            Central wavelength of each band in micrometres.
        ground_sampling_distance (`float`, *optional*):
            Metres on the ground per pixel of the pretraining images (see [`PeraImageProcessorKwargs`]).

    Example:

    ```python
    >>> import numpy as np
    >>> from modeling_pera.image_processing_pera import PeraImageProcessor

    >>> processor = PeraImageProcessor.from_preset("sentinel2-l2a", offset=1000)
    >>> patch = np.random.randint(1000, 6000, size=(12, 120, 120), dtype=np.uint16)
    >>> processor(patch)["pixel_values"].shape
    torch.Size([1, 12, 448, 448])
    ```
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = PeraImageProcessorKwargs

    do_resize = True
    size = PERA_IMAGE_SIZE
    resample = 2
    do_rescale = True
    rescale_factor = 1 / 255
    offset = 0.0
    do_normalize = True
    image_mean = PERA_RGB_MEAN
    image_std = PERA_RGB_STD
    num_channels = 3
    band_names = None
    wavelengths = None
    ground_sampling_distance = None

    def __init__(self, **kwargs: Unpack[PeraImageProcessorKwargs]) -> None:
        for name in _UNSUPPORTED_OPTIONS:
            if kwargs.get(name):
                raise ValueError(
                    f"PeraImageProcessor does not implement `{name}`; crop, pad or convert the images before "
                    "passing them, or drop the option."
                )
        unknown = sorted(set(kwargs) - set(self.valid_kwargs.__annotations__) - set(_SERVICE_KEYS))
        if unknown:
            logger.warning(
                f"PeraImageProcessor ignores the unknown options {unknown}; its options are "
                f"{list(_PROCESSOR_OPTIONS)}."
            )
        super().__init__(**kwargs)
        self._set_attributes(**kwargs)
        if self.band_names is None and self.num_channels == len(RGB_BANDS):
            self.band_names = list(RGB_BANDS)
        self._validate_preprocess_kwargs(**{name: getattr(self, name) for name in self._valid_kwargs_names})

    @classmethod
    def from_preset(cls, name: str, **overrides: Unpack[PeraImageProcessorKwargs]) -> "PeraImageProcessor":
        """
        Instantiates a processor from one of `PERA_PROCESSOR_PRESETS`, with any option overridden.

        Args:
            name (`str`):
                One of `"pera-rgb"`, `"rgbn"`, `"sentinel2-l1c"` and `"sentinel2-l2a"`.
            overrides:
                Options replacing the preset's, e.g. `offset=1000` for Sentinel-2 products of processing baseline
                04.00 and later, or `size=224`.

        Returns:
            [`PeraImageProcessor`]: the configured processor.
        """
        if name not in PERA_PROCESSOR_PRESETS:
            raise ValueError(f"Unknown PerA preset {name!r}. Valid presets: {', '.join(PERA_PROCESSOR_PRESETS)}.")
        unknown = sorted(set(overrides) - set(_PROCESSOR_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown options {unknown} for preset {name!r}. Valid options: {', '.join(_PROCESSOR_OPTIONS)}."
            )
        options = copy.deepcopy(PERA_PROCESSOR_PRESETS[name])
        options.update(overrides)
        return cls(**options)

    def _standardize_kwargs(
        self,
        num_channels: int | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        band_names: Sequence[str] | None = None,
        wavelengths: Sequence[float] | None = None,
        resample: int | None = None,
        rescale_factor: float | None = None,
        offset: float | None = None,
        ground_sampling_distance: float | None = None,
        **kwargs,
    ) -> dict:
        """
        Brings the options to the types stored in `preprocessor_config.json`, so that a saved and reloaded processor
        has identical attributes: per-band lists of floats, an int `resample`, a float `offset` and `rescale_factor`.
        """
        kwargs = super()._standardize_kwargs(**kwargs)
        if isinstance(num_channels, int):
            image_mean = _as_per_band_list(image_mean, num_channels)
            image_std = _as_per_band_list(image_std, num_channels)
        if band_names is not None and not isinstance(band_names, str):
            band_names = [str(band_name) for band_name in band_names]
        kwargs.update(
            num_channels=num_channels,
            image_mean=image_mean,
            image_std=image_std,
            band_names=band_names,
            wavelengths=_as_float_list(wavelengths),
            resample=int(resample) if resample is not None else None,
            rescale_factor=float(rescale_factor) if rescale_factor is not None else None,
            offset=float(offset) if offset is not None else None,
            ground_sampling_distance=_as_number(ground_sampling_distance),
        )
        return kwargs

    def _validate_preprocess_kwargs(
        self,
        num_channels: int | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        band_names: list[str] | None = None,
        wavelengths: list[float] | None = None,
        do_resize: bool | None = None,
        size: Any = None,
        resample: int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        offset: float | None = None,
        ground_sampling_distance: float | None = None,
        **kwargs,
    ) -> None:
        """Checks that the band layout and the statistics agree, and that every option has a usable value."""
        if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 1:
            raise ValueError(f"`num_channels` must be a positive int, got {num_channels!r}.")
        fix = (
            f"give one value per band, or start from a preset: PeraImageProcessor.from_preset(name) with name in "
            f"{list(PERA_PROCESSOR_PRESETS)}."
        )
        for option, values in (("image_mean", image_mean), ("image_std", image_std)):
            if not isinstance(values, list):
                raise ValueError(f"`{option}` must be a number or a list of numbers, got {values!r}.")
            if len(values) != num_channels:
                raise ValueError(f"`{option}` has {len(values)} values but `num_channels` is {num_channels}: {fix}")
            if not all(math.isfinite(value) for value in values):
                raise ValueError(f"`{option}` must be finite, got {values}.")
        if any(value <= 0 for value in image_std):
            raise ValueError(f"Every value of `image_std` must be positive, got {image_std}.")
        if band_names is not None:
            if isinstance(band_names, str) or len(band_names) != num_channels:
                raise ValueError(
                    f"`band_names` must name each of the {num_channels} bands (`num_channels`), got {band_names!r}: "
                    f"{fix}"
                )
            if len(set(band_names)) != len(band_names):
                raise ValueError(f"`band_names` must be unique, got {band_names}.")
        if wavelengths is not None:
            if not isinstance(wavelengths, list) or len(wavelengths) != num_channels:
                raise ValueError(
                    f"`wavelengths` must give one wavelength (micrometres) for each of the {num_channels} bands "
                    f"(`num_channels`), got {wavelengths!r}: {fix}"
                )
            if not all(math.isfinite(value) and value > 0 for value in wavelengths):
                raise ValueError(f"`wavelengths` must be positive numbers of micrometres, got {wavelengths}.")
        if resample not in _TORCH_MODE_FOR_RESAMPLE:
            raise ValueError(f"`resample` must be 2 (bilinear) or 3 (bicubic), got {resample!r}.")
        if size is None or size.get("height") is None or size.get("width") is None:
            raise ValueError(f"`size` must be an int or a dict with 'height' and 'width', got {size!r}.")
        if size["height"] < 1 or size["width"] < 1:
            raise ValueError(f"`size` must be positive, got {dict(size)}.")
        if do_rescale and not (rescale_factor is not None and math.isfinite(rescale_factor) and rescale_factor > 0):
            raise ValueError(
                f"`rescale_factor` must be a positive number when `do_rescale` is True, got {rescale_factor!r}."
            )
        if offset is None or not math.isfinite(offset):
            raise ValueError(f"`offset` must be a finite number, got {offset!r}.")
        if ground_sampling_distance is not None and not (
            isinstance(ground_sampling_distance, float)
            and math.isfinite(ground_sampling_distance)
            and ground_sampling_distance > 0
        ):
            raise ValueError(
                f"`ground_sampling_distance` must be a positive number of metres per pixel, got "
                f"{ground_sampling_distance!r}."
            )

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = "pt",
        input_data_format: str | None = None,
        input_band_names: Sequence[str] | None = None,
        **kwargs: Unpack[PeraImageProcessorKwargs],
    ) -> BatchFeature:
        """
        Preprocesses an image or a batch of images.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                One image or a list of images; a 4-D array or tensor is a batch. Each image is 2-D (one band),
                channels-first `(bands, height, width)` or channels-last `(height, width, bands)`. Arrays and tensors
                may be uint8, uint16, int16, int32, int64, float16, float32 or float64. PIL images: modes `RGB`,
                `RGBA`, `P`, `L`, `I;16`, `I` and `F` (and `1`, `LA`, `PA`); `RGBA` keeps its 4 bands for a 4-band
                processor (PIL opens 4-band RGB+NIR GeoTIFFs as RGBA) and drops alpha otherwise, `P` becomes RGB.
                Single-band images are only accepted by a 1-band processor: nothing is replicated silently.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` for a `torch.Tensor` of shape `(batch, bands, height, width)`, `"np"` for a `np.ndarray`, `None`
                for a list of `(bands, height, width)` tensors, which may differ in size when `do_resize=False`.
            input_data_format (`str`, *optional*):
                `"channels_first"` or `"channels_last"` for 3-D arrays and tensors. Inferred from `num_channels` when
                unset; required when both the first and the last axis have `num_channels` entries.
            input_band_names (`Sequence[str]`, *optional*):
                The name of each band of the images, in their order (e.g. all 13 Sentinel-2 L1C bands, or B02 B03 B04
                for a red-green-blue processor): the processor's `band_names` are picked from them and put in the
                processor's order; a band the processor needs and the images lack is an error that names it. Unset:
                the images must have the processor's bands, in its order.
            kwargs:
                Per-call values of `do_resize`, `size`, `resample`, `do_rescale`, `rescale_factor`, `offset`,
                `do_normalize`, `image_mean` and `image_std`.

        Returns:
            [`BatchFeature`]: with `pixel_values`, float32.
        """
        unexpected = sorted(set(kwargs) - set(_PREPROCESS_OPTIONS))
        if unexpected:
            raise TypeError(
                f"PeraImageProcessor.preprocess() got unexpected options {unexpected}; per-call options are "
                f"{list(_PREPROCESS_OPTIONS)}."
            )
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
        if input_data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(
                f"`input_data_format` must be 'channels_first' or 'channels_last', got {input_data_format!r}."
            )

        options = {name: getattr(self, name) for name in self._valid_kwargs_names}
        options.update({name: value for name, value in kwargs.items() if value is not None})
        options = self._standardize_kwargs(**options)
        self._validate_preprocess_kwargs(**options)
        input_band_names, band_order = self._band_order(input_band_names)

        pixel_values = []
        for index, image in enumerate(self._flatten_images(images)):
            tensor, is_float = self._to_channels_first(image, index, input_data_format, input_band_names)
            if band_order is not None:
                tensor = tensor[band_order]
            rescale = self._rescales(tensor, is_float, index, options)
            pixel_values.append(self._transform(tensor, **{**options, "do_rescale": rescale}))
        if return_tensors is not None:
            shapes = {tuple(image.shape[1:]) for image in pixel_values}
            if len(shapes) > 1:
                raise ValueError(
                    f"The images have different sizes {sorted(shapes)} and `do_resize` is False, so they cannot be "
                    "stacked into one batch: set `do_resize=True`, resize them beforehand, or pass "
                    "`return_tensors=None` to get a list."
                )
            pixel_values = torch.stack(pixel_values)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def _band_order(self, input_band_names: Sequence[str] | None) -> tuple[list[str], list[int] | None]:
        """The band names the images have (the processor's when not given), and where each of the processor's bands
        is among them (None when they are the processor's, in its order)."""
        if input_band_names is None:
            return self.band_names, None
        if isinstance(input_band_names, str):
            raise ValueError(f"`input_band_names` must be a list of band names, got the string {input_band_names!r}.")
        input_band_names = [str(name) for name in input_band_names]
        if self.band_names is None:
            raise ValueError(
                "`input_band_names` was given, but this processor has no `band_names` to match them with: save the "
                "processor with the names of its bands (e.g. from a preset), or leave `input_band_names` out."
            )
        if len(set(input_band_names)) != len(input_band_names):
            raise ValueError(f"`input_band_names` must be unique, got {input_band_names}.")
        missing = [name for name in self.band_names if name not in input_band_names]
        if missing:
            raise ValueError(
                f"This processor expects the bands {self.band_names} (in this order), but the images' bands "
                f"{input_band_names} lack {missing}: give images that have them."
            )
        if input_band_names == self.band_names:
            return input_band_names, None
        return input_band_names, [input_band_names.index(name) for name in self.band_names]

    @staticmethod
    def _flatten_images(images: Any) -> list:
        """Returns the images as a flat list; lists and 4-D arrays or tensors are batches."""
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        flat = []
        for image in batch:
            if isinstance(image, (list, tuple)):
                raise ValueError("Nested lists of images are not supported: pass one image or a flat list of images.")
            if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
                flat.extend(image)
            else:
                flat.append(image)
        if not flat:
            raise ValueError("No images were given.")
        return flat

    @staticmethod
    def _rescales(image: torch.Tensor, is_float: bool, index: int, options: dict) -> bool:
        """
        Whether `image` is rescaled. Statistics rescaled by 1/255 are for 8-bit pixels: floats in [0, 1] are taken as
        already rescaled (the same image as their 8-bit equivalent), values outside 0-255 are refused.
        """
        if not options["do_rescale"] or not has_8_bit_statistics(options["rescale_factor"], options["offset"]):
            return options["do_rescale"]
        low, high = float(image.min()), float(image.max())
        problem = eight_bit_range_problem(low, high, is_float)
        if problem is None:
            return True
        if is_float and low >= 0 and high <= 1:
            return False
        raise ValueError(
            f"Image {index} has {problem}, but this processor's statistics are for 8-bit pixels (0-255, rescaled by "
            "1/255). For 16-bit or other data use statistics made for its range: a preset such as 'sentinel2-l2a' "
            "for Sentinel-2 digital numbers, or `rescale_factor` set to 1 / the data's maximum (e.g. 1/65535) with "
            "`image_mean` and `image_std` of your data; or convert the images to 8-bit."
        )

    def _to_channels_first(
        self, image: Any, index: int, input_data_format: str | None, band_names: list[str] | None
    ) -> tuple[torch.Tensor, bool]:
        """Converts one image to a finite `(bands, height, width)` float32 tensor with the bands `band_names` (or
        `num_channels` bands when unnamed); also says whether its pixels were floating point."""
        num_bands = len(band_names) if band_names is not None else self.num_channels
        if isinstance(image, Image.Image):
            image = pil_image_to_bands(image, num_bands)
            input_data_format = "channels_first"
        if isinstance(image, np.ndarray):
            if image.dtype.type not in _NUMPY_DTYPES:
                raise ValueError(
                    f"Image {index} has the unsupported dtype {image.dtype}; supported: "
                    f"{', '.join(np.dtype(dtype).name for dtype in _NUMPY_DTYPES)}."
                )
            # A copy in numpy handles big-endian and non-contiguous arrays (e.g. from TIFF readers), and the output
            # never aliases the caller's array, even when every step is switched off.
            is_float = np.issubdtype(image.dtype, np.floating)
            tensor = torch.from_numpy(np.array(image, dtype=np.float32, copy=True))
        elif isinstance(image, torch.Tensor):
            if image.dtype not in _TORCH_DTYPES:
                raise ValueError(
                    f"Image {index} has the unsupported dtype {image.dtype}; supported: "
                    f"{', '.join(str(dtype) for dtype in _TORCH_DTYPES)}."
                )
            is_float = image.is_floating_point()
            tensor = image.detach().to(device="cpu", dtype=torch.float32, copy=True)
        else:
            raise ValueError(
                f"Image {index} is a {type(image).__name__}; expected a PIL image, a numpy array or a torch tensor "
                "(read files with PIL.Image.open or modeling_pera.raster.read_raster first)."
            )

        layout = band_layout(tuple(tensor.shape), index, input_data_format, num_bands, band_names)
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(0)
        elif layout == "channels_last":
            tensor = tensor.permute(2, 0, 1)
        if tensor.numel() == 0:
            raise ValueError(f"Image {index} has shape {tuple(tensor.shape)}: it holds no pixels.")
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"Image {index} contains NaN or infinite values; fill or mask them first (e.g. np.nan_to_num)."
            )
        return tensor, is_float

    @staticmethod
    def _transform(
        image: torch.Tensor,
        do_resize: bool,
        size: Any,
        resample: int,
        do_rescale: bool,
        rescale_factor: float,
        offset: float,
        do_normalize: bool,
        image_mean: list[float],
        image_std: list[float],
        **kwargs,
    ) -> torch.Tensor:
        """Applies offset, rescaling, resizing and normalisation to one `(bands, height, width)` float32 tensor."""
        if offset:
            image = image - offset
        if do_rescale:
            image = image * rescale_factor
        target_size = (size["height"], size["width"])
        if do_resize and tuple(image.shape[1:]) != target_size:
            downsampling = target_size[0] < image.shape[1] or target_size[1] < image.shape[2]
            image = F.interpolate(
                image.unsqueeze(0),
                size=target_size,
                mode=_TORCH_MODE_FOR_RESAMPLE[resample],
                align_corners=False,
                antialias=downsampling,
            ).squeeze(0)
        if do_normalize:
            mean = torch.tensor(image_mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(image_std, dtype=torch.float32).view(-1, 1, 1)
            image = (image - mean) / std
        return image


__all__ = [
    "PERA_PROCESSOR_PRESETS",
    "PERA_RGB_MEAN",
    "PERA_RGB_STD",
    "RGBN_MEAN",
    "RGBN_STD",
    "SENTINEL2_L1C_BANDS",
    "SENTINEL2_L1C_MEAN",
    "SENTINEL2_L1C_STD",
    "SENTINEL2_L2A_BANDS",
    "SENTINEL2_L2A_MEAN",
    "SENTINEL2_L2A_STD",
    "SENTINEL2_WAVELENGTHS",
    "PeraImageProcessor",
    "PeraImageProcessorKwargs",
    "eight_bit_range_problem",
    "has_8_bit_statistics",
    "pil_image_to_bands",
]
