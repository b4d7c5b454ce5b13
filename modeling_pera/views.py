# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""PerA's "perfectly aligned" student/teacher views of an image, and the collator that batches them.

Each crop of an image is cut once (one `RandomResizedCrop` and one pair of flips) and then given two photometric
augmentations: a strong one for the student and a weak one for the teacher. Both views therefore show exactly the same
pixels in the same geometry. Every random draw comes from a `torch.Generator` passed by the caller, so the views of a
sample are a pure function of the generator's seed (reproducible whatever the number of DataLoader workers, and
resumable). Masks (the student/teacher/predicted patch sets) are not drawn here: the model draws them.
"""

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from .configuration_pera import PeraConfig
from .image_processing_pera import PeraImageProcessor


# Order of the four colour-jitter operations as drawn by `torch.randperm(4)`, as in torchvision's `ColorJitter`.
_JITTER_OPERATIONS = ("brightness", "contrast", "saturation", "hue")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw from U[low, high) taken from `generator`."""
    return low + (high - low) * torch.rand((), generator=generator).item()


def _bernoulli(generator: torch.Generator, probability: float) -> bool:
    """One coin flip with success `probability`, taken from `generator`."""
    return torch.rand((), generator=generator).item() < probability


def _spectral_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiplies every band by one common factor."""
    return image * factor


def _spectral_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blends each band with its own spatial mean: spatial contrast changes, band means (the spectrum) do not."""
    band_means = image.mean(dim=(-2, -1), keepdim=True)
    return band_means + factor * (image - band_means)


def _spectral_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blends each band with the across-band mean image: the spectrum of every pixel is flattened or boosted."""
    band_average = image.mean(dim=-3, keepdim=True)
    return band_average + factor * (image - band_average)


def _spectral_jitter(image: torch.Tensor, band_factors: torch.Tensor) -> torch.Tensor:
    """Multiplies each band by its own factor (`band_factors` of shape `(bands, 1, 1)`): the hue-shift equivalent."""
    return image * band_factors


def _spectral_grayscale(image: torch.Tensor) -> torch.Tensor:
    """Replaces every band by the across-band mean image."""
    return image.mean(dim=-3, keepdim=True).expand_as(image).clone()


class AlignedPairViews:
    r"""
    Makes PerA's aligned view pairs of one image: `num_global_crops` global and `num_local_crops` local crops, each
    seen twice (student and teacher) with the same pixels and geometry but different photometry.

    Per crop:

    1. one `RandomResizedCrop` (area fraction in `*_crops_scale`, aspect ratio log-uniform in `ratio`, torchvision's
       sampling rule with 10 attempts and a centre-crop fallback), resized to the crop size with bilinear
       interpolation (antialiased when downsampling). Images smaller than the crop size are upsampled, so small
       tiles work; rejecting images that are too small to be useful is the data layer's job.
    2. one horizontal and one vertical flip, each with probability `flip_probability`, shared by both views.
    3. student view: with probability `student_color_probability` either grayscale (a fraction
       `student_grayscale_probability` of those) or colour jitter, else unchanged. Teacher view: colour jitter with
       probability `teacher_color_probability`, else unchanged. Colour jitter applies brightness, contrast,
       saturation and hue adjustments in a random order, with factors drawn as torchvision's `ColorJitter` draws them.
    4. per-band normalisation `(pixel - image_mean) / image_std`.

    Pixels are first converted to float32 as the image processor does: `(pixel - offset) * rescale_factor`.

    **Photometric operations by band count.** With 3 bands the image is taken as RGB and torchvision's operations
    are used (which expect, and clip to, values in [0, 1] after rescaling, as for 8-bit RGB with
    `rescale_factor=1/255`). For any other band count the RGB operations have no meaning, and these per-band
    equivalents are used, without clipping (the value range of multispectral data is not fixed):

    - brightness: all bands multiplied by one factor in `[1 - brightness, 1 + brightness]`;
    - contrast: each band blended with its own spatial mean by one factor in `[1 - contrast, 1 + contrast]` (bands of
      multispectral sensors have very different levels: blending with one common mean would shift the spectrum,
      which is what saturation does);
    - saturation: each band blended with the across-band mean image by one factor in
      `[1 - saturation, 1 + saturation]`;
    - hue (spectral jitter): each band multiplied by its own factor in `[1 - hue, 1 + hue]`;
    - grayscale: every band replaced by the across-band mean image.

    Args:
        config ([`PeraConfig`], *optional*):
            Gives the crop sizes (`image_size`, `local_crop_size`) and counts (`num_global_crops`,
            `num_local_crops`). Defaults to `PeraConfig()`.
        image_processor ([`PeraImageProcessor`], *optional*):
            Gives `offset`, `rescale_factor` (1 when `do_rescale` is off), `image_mean` and `image_std` (0 and 1 when
            `do_normalize` is off). Defaults to `PeraImageProcessor()` (8-bit RGB, the released PerA statistics).
        global_crop_size, local_crop_size, num_global_crops, num_local_crops (`int`, *optional*):
            Override the crop sizes and counts of `config`.
        image_mean, image_std (`Sequence[float]`, *optional*), offset, rescale_factor (`float`, *optional*):
            Override the pixel conversion and statistics of `image_processor`.
        global_crops_scale (`tuple[float, float]`, *optional*, defaults to `(0.4, 1.0)`):
            Range of the area fraction of the global crops.
        local_crops_scale (`tuple[float, float]`, *optional*, defaults to `(0.05, 0.4)`):
            Range of the area fraction of the local crops.
        ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`):
            Range of the aspect ratio (width / height) of the crops.
        flip_probability (`float`, *optional*, defaults to 0.5):
            Probability of each of the horizontal and vertical flips.
        student_color_probability (`float`, *optional*, defaults to 0.8):
            Probability that the student view is photometrically augmented at all.
        student_grayscale_probability (`float`, *optional*, defaults to 0.1):
            Fraction of the augmented student views made grayscale instead of colour-jittered (0.08 overall).
        teacher_color_probability (`float`, *optional*, defaults to 0.1):
            Probability that the teacher view is colour-jittered.
        brightness, contrast, saturation (`float`, *optional*, defaults to 0.4, 0.4, 0.2):
            Strength of the jitter: factors are drawn from `[max(0, 1 - value), 1 + value]`.
        hue (`float`, *optional*, defaults to 0.1):
            Strength of the hue shift (RGB: a shift in `[-hue, hue]` of the hue circle) or of the spectral jitter.

    Example:

    ```python
    >>> import torch
    >>> from modeling_pera import PeraConfig, PeraImageProcessor
    >>> from modeling_pera.views import AlignedPairViews

    >>> views = AlignedPairViews(PeraConfig(image_size=224), PeraImageProcessor())
    >>> image = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8)
    >>> crops = views(image, torch.Generator().manual_seed(0))
    >>> crops["student_global"].shape, crops["teacher_local"].shape
    (torch.Size([2, 3, 224, 224]), torch.Size([8, 3, 96, 96]))
    ```
    """

    def __init__(
        self,
        config: PeraConfig | None = None,
        image_processor: PeraImageProcessor | None = None,
        *,
        global_crop_size: int | None = None,
        local_crop_size: int | None = None,
        num_global_crops: int | None = None,
        num_local_crops: int | None = None,
        global_crops_scale: tuple[float, float] = (0.4, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        offset: float | None = None,
        rescale_factor: float | None = None,
        flip_probability: float = 0.5,
        student_color_probability: float = 0.8,
        student_grayscale_probability: float = 0.1,
        teacher_color_probability: float = 0.1,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
    ) -> None:
        config = config if config is not None else PeraConfig()
        image_processor = image_processor if image_processor is not None else PeraImageProcessor()
        if image_mean is None and config.num_channels != image_processor.num_channels:
            raise ValueError(
                f"The model has {config.num_channels} bands (config.num_channels) but the image processor "
                f"{image_processor.num_channels} (image_processor.num_channels): use a processor for the model's "
                "bands, e.g. PeraImageProcessor.from_preset(...), or pass image_mean and image_std."
            )
        if image_mean is None:
            image_mean = image_processor.image_mean if image_processor.do_normalize else [0.0] * config.num_channels
        if image_std is None:
            image_std = image_processor.image_std if image_processor.do_normalize else [1.0] * config.num_channels
        if rescale_factor is None:
            rescale_factor = image_processor.rescale_factor if image_processor.do_rescale else 1.0

        self.global_crop_size = global_crop_size if global_crop_size is not None else config.image_size
        self.local_crop_size = local_crop_size if local_crop_size is not None else config.local_crop_size
        self.num_global_crops = num_global_crops if num_global_crops is not None else config.num_global_crops
        self.num_local_crops = num_local_crops if num_local_crops is not None else config.num_local_crops
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.ratio = tuple(ratio)
        self.image_mean = torch.tensor([float(value) for value in image_mean], dtype=torch.float32)
        self.image_std = torch.tensor([float(value) for value in image_std], dtype=torch.float32)
        self.offset = float(offset if offset is not None else image_processor.offset)
        self.rescale_factor = float(rescale_factor)
        self.flip_probability = flip_probability
        self.student_color_probability = student_color_probability
        self.student_grayscale_probability = student_grayscale_probability
        self.teacher_color_probability = teacher_color_probability
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self._validate()

    @property
    def num_channels(self) -> int:
        """Number of bands every image must have (one mean and std per band)."""
        return self.image_mean.numel()

    def _validate(self) -> None:
        if self.image_mean.ndim != 1 or self.image_mean.shape != self.image_std.shape:
            raise ValueError(
                f"image_mean and image_std must give one value per band, got {self.image_mean.tolist()} and "
                f"{self.image_std.tolist()}."
            )
        if not (self.image_std > 0).all():
            raise ValueError(f"Every value of image_std must be positive, got {self.image_std.tolist()}.")
        for name in ("global_crop_size", "local_crop_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.num_global_crops < 1 or self.num_local_crops < 0:
            raise ValueError(
                f"Need at least one global crop and no negative number of local crops, got "
                f"num_global_crops={self.num_global_crops}, num_local_crops={self.num_local_crops}."
            )
        for name in ("global_crops_scale", "local_crops_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}.")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}.")
        for name in (
            "flip_probability",
            "student_color_probability",
            "student_grayscale_probability",
            "teacher_color_probability",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        if min(self.brightness, self.contrast, self.saturation, self.hue) < 0:
            raise ValueError("brightness, contrast, saturation and hue must be non-negative.")
        if self.num_channels == 3 and self.hue > 0.5:
            raise ValueError(f"hue must lie in [0, 0.5] for RGB images, got {self.hue}.")

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """
        Makes the aligned views of one image.

        Args:
            image (`torch.Tensor` of shape `(num_channels, height, width)`):
                The image, of any integer or float dtype, before offset and rescaling.
            generator (`torch.Generator`):
                A CPU generator that drives every random choice.

        Returns:
            `dict[str, torch.Tensor]`: float32 `student_global` and `teacher_global` of shape
            `(num_global_crops, num_channels, global_crop_size, global_crop_size)`, and `student_local` and
            `teacher_local` of shape `(num_local_crops, num_channels, local_crop_size, local_crop_size)`.
        """
        if image.ndim != 3 or image.shape[0] != self.num_channels:
            raise ValueError(
                f"Expected one image of shape ({self.num_channels}, height, width), got {tuple(image.shape)}."
            )
        if min(image.shape[1:]) < 1:
            raise ValueError(f"The image is empty: shape {tuple(image.shape)}.")

        views = {}
        for kind, size, scale, count in (
            ("global", self.global_crop_size, self.global_crops_scale, self.num_global_crops),
            ("local", self.local_crop_size, self.local_crops_scale, self.num_local_crops),
        ):
            student_views, teacher_views = [], []
            for _ in range(count):
                crop = self._aligned_crop(image, size, scale, generator)
                student_views.append(self._student_view(crop, generator))
                teacher_views.append(self._teacher_view(crop, generator))
            empty = image.new_empty((0, self.num_channels, size, size), dtype=torch.float32)
            views[f"student_{kind}"] = self._normalize(torch.stack(student_views) if count else empty)
            views[f"teacher_{kind}"] = self._normalize(torch.stack(teacher_views) if count else empty)
        return views

    def _crop_box(
        self, height: int, width: int, scale: tuple[float, float], generator: torch.Generator
    ) -> tuple[int, int, int, int]:
        """`(top, left, crop_height, crop_width)` of a random crop, by torchvision's `RandomResizedCrop` rule."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * _uniform(generator, *scale)
            aspect_ratio = math.exp(_uniform(generator, *log_ratio))
            crop_width = round(math.sqrt(target_area * aspect_ratio))
            crop_height = round(math.sqrt(target_area / aspect_ratio))
            if 0 < crop_width <= width and 0 < crop_height <= height:
                top = int(torch.randint(0, height - crop_height + 1, (), generator=generator))
                left = int(torch.randint(0, width - crop_width + 1, (), generator=generator))
                return top, left, crop_height, crop_width
        # Fallback: the largest centred crop whose aspect ratio lies in `ratio`.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            crop_width, crop_height = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            crop_width, crop_height = round(height * self.ratio[1]), height
        else:
            crop_width, crop_height = width, height
        crop_width, crop_height = max(1, crop_width), max(1, crop_height)
        return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width

    def _aligned_crop(
        self, image: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator
    ) -> torch.Tensor:
        """The geometry shared by both views: a random resized crop and flips, as float32 after offset and rescale."""
        top, left, crop_height, crop_width = self._crop_box(image.shape[1], image.shape[2], scale, generator)
        crop = image[:, top : top + crop_height, left : left + crop_width].to(torch.float32)
        crop = (crop - self.offset) * self.rescale_factor
        downsampling = crop_height > size or crop_width > size
        crop = F.interpolate(
            crop.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=downsampling
        ).squeeze(0)
        horizontal_flip = _bernoulli(generator, self.flip_probability)
        vertical_flip = _bernoulli(generator, self.flip_probability)
        flip_dims = [dim for dim, flip in ((-1, horizontal_flip), (-2, vertical_flip)) if flip]
        return crop.flip(flip_dims) if flip_dims else crop

    def _student_view(self, crop: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Strong photometry: grayscale (8% by default), colour jitter (72%) or unchanged."""
        if not _bernoulli(generator, self.student_color_probability):
            return crop
        if _bernoulli(generator, self.student_grayscale_probability):
            return self._grayscale(crop)
        return self._color_jitter(crop, generator)

    def _teacher_view(self, crop: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Weak photometry: colour jitter (10% by default) or unchanged."""
        if _bernoulli(generator, self.teacher_color_probability):
            return self._color_jitter(crop, generator)
        return crop

    def _grayscale(self, crop: torch.Tensor) -> torch.Tensor:
        if self.num_channels == 3:
            return TF.rgb_to_grayscale(crop, num_output_channels=3)
        return _spectral_grayscale(crop)

    def _color_jitter(self, crop: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast, saturation and hue (or spectral jitter) in random order, drawn like `ColorJitter`."""
        order = torch.randperm(len(_JITTER_OPERATIONS), generator=generator).tolist()
        factors = {
            name: _uniform(generator, max(0.0, 1.0 - strength), 1.0 + strength)
            for name, strength in (
                ("brightness", self.brightness),
                ("contrast", self.contrast),
                ("saturation", self.saturation),
            )
        }
        if self.num_channels == 3:
            factors["hue"] = _uniform(generator, -self.hue, self.hue)
            operations: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
                "brightness": TF.adjust_brightness,
                "contrast": TF.adjust_contrast,
                "saturation": TF.adjust_saturation,
                "hue": TF.adjust_hue,
            }
        else:
            band_factors = 1.0 + self.hue * (2 * torch.rand(self.num_channels, generator=generator) - 1)
            factors["hue"] = band_factors.view(-1, 1, 1)
            operations = {
                "brightness": _spectral_brightness,
                "contrast": _spectral_contrast,
                "saturation": _spectral_saturation,
                "hue": _spectral_jitter,
            }
        for index in order:
            name = _JITTER_OPERATIONS[index]
            crop = operations[name](crop, factors[name])
        return crop

    def _normalize(self, views: torch.Tensor) -> torch.Tensor:
        """Per-band `(pixel - mean) / std` of a stack of views `(crops, bands, height, width)`."""
        return (views - self.image_mean.view(1, -1, 1, 1)) / self.image_std.view(1, -1, 1, 1)


def pretraining_collate(samples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """
    Batches the outputs of [`AlignedPairViews`] crop-major, as [`PeraForPreTraining.forward`] takes them.

    Args:
        samples (`Sequence[dict]`):
            One dict per image with `student_global`, `teacher_global`, `student_local` and `teacher_local` views,
            and optionally `replaced`: how many bad samples this one stands in for (see `modeling_pera.data`).

    Returns:
        `dict[str, torch.Tensor]`: `student_global_pixel_values` and `teacher_global_pixel_values` of shape
        `(num_global_crops, batch_size, channels, height, width)`, `student_local_pixel_values` and
        `teacher_local_pixel_values` of shape `(num_local_crops, batch_size, channels, local_height, local_width)`
        (left out when there are no local crops, which the model then skips), and `num_replaced`, an int64 scalar
        tensor: the number of bad samples replaced or skipped to make this batch. Pop it before calling the model.
    """
    if not samples:
        raise ValueError("Cannot collate an empty batch.")
    batch = {}
    for kind in ("global", "local"):
        for role in ("student", "teacher"):
            views = torch.stack([sample[f"{role}_{kind}"] for sample in samples], dim=1)
            if views.shape[0] > 0:
                batch[f"{role}_{kind}_pixel_values"] = views
    batch["num_replaced"] = torch.tensor(sum(int(sample.get("replaced", 0)) for sample in samples), dtype=torch.int64)
    return batch


__all__ = ["AlignedPairViews", "pretraining_collate"]
