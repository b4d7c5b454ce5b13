# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""PerA's "perfectly aligned" student/teacher views of an image, and the collator that batches them.

Each crop of an image is cut once (one `RandomResizedCrop` and one pair of flips) and then given two photometric
augmentations: a strong one for the student and a weak one for the teacher. Both views therefore show exactly the same
pixels in the same geometry. Every random draw comes from a `torch.Generator` passed by the caller, so the views of a
sample are a pure function of the generator's seed (reproducible whatever the number of DataLoader workers, and
resumable). Masks (the student/teacher/predicted patch sets) are not drawn here: the model draws them.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .configuration_pera import PeraConfig
from .image_processing_pera import PeraImageProcessor


# Colour-jitter operations, numbered as `torch.randperm(4)` orders them (torchvision's `ColorJitter` order).
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)

# Columns of a photometry row (one row per view, drawn by `AlignedPairViews`): whether the view is made
# grayscale, whether it is colour-jittered, the position of the hue step among the four jitter steps, the three
# other steps in their order, the brightness, contrast and saturation factors, then the hue shift (RGB) or one
# spectral factor per band.
_GRAYSCALE_COLUMN, _JITTER_COLUMN, _HUE_POSITION_COLUMN = 0, 1, 2
_BLEND_ORDER_COLUMNS = slice(3, 6)
_BLEND_FACTOR_COLUMNS = slice(6, 9)
_HUE_COLUMNS = slice(9, None)

# The reference's crop geometry (torchvision's RandomResizedCrop ratios; horizontal and vertical flips), also used by
# fine-tuning's augmentation.
CROP_ASPECT_RATIOS = (3 / 4, 4 / 3)
FLIP_PROBABILITY = 0.5

# ITU-R 601 luma weights, as torchvision's `rgb_to_grayscale`
_LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw from U[low, high) taken from `generator`."""
    return low + (high - low) * torch.rand((), generator=generator).item()


def _bernoulli(generator: torch.Generator, probability: float) -> bool:
    """One coin flip with success `probability`, taken from `generator`."""
    return torch.rand((), generator=generator).item() < probability


def _per_view(values: torch.Tensor) -> torch.Tensor:
    """`(views,)` -> `(views, 1, 1, 1)`, to broadcast over `(views, bands, height, width)`."""
    return values.view(-1, 1, 1, 1)


def _grayscale(views: torch.Tensor, rgb: bool) -> torch.Tensor:
    """`(views, 1, height, width)`: the luma of RGB views, the across-band mean of others."""
    if rgb:
        red, green, blue = views.unbind(dim=1)
        return (_LUMA_WEIGHTS[0] * red + _LUMA_WEIGHTS[1] * green + _LUMA_WEIGHTS[2] * blue).unsqueeze(1)
    return views.mean(dim=1, keepdim=True)


def _rgb_to_hsv(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue (in [0, 1)), saturation and value of RGB views in [0, 1], each `(views, height, width)`."""
    red, green, blue = views.unbind(dim=1)
    value = views.amax(dim=1)
    chroma = value - views.amin(dim=1)
    has_hue = chroma > 0
    safe_chroma = torch.where(has_hue, chroma, 1.0)
    saturation = chroma / torch.where(has_hue, value, 1.0)
    # the hue sector is set by the largest channel (red first, then green, on ties)
    hue = torch.where(
        value == red,
        (green - blue) / safe_chroma,
        torch.where(value == green, 2.0 + (blue - red) / safe_chroma, 4.0 + (red - green) / safe_chroma),
    )
    hue = torch.where(has_hue, hue, 0.0)
    return torch.remainder(hue / 6.0, 1.0), saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The inverse of `_rgb_to_hsv`, `(views, 3, height, width)`, by the closed form
    `channel = value * (1 - saturation * clamp(min(k, 4 - k), 0, 1))` with `k = (n + 6 * hue) mod 6` and n = 5, 3, 1
    for red, green and blue (no table lookup, so nothing is copied to the device)."""
    offsets = torch.arange(5.0, 0.0, -2.0, device=hue.device).view(1, 3, 1, 1)
    sector_position = torch.remainder(offsets + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(sector_position, 4.0 - sector_position).clamp(0.0, 1.0)
    return value.unsqueeze(1) * (1.0 - saturation.unsqueeze(1) * ramp)


def apply_photometry(views: torch.Tensor, photometry: torch.Tensor, rgb: bool) -> torch.Tensor:
    """
    Applies per-view photometric augmentations, batched: grayscale, or colour jitter with each view's own factors and
    order of operations (see [`AlignedPairViews`] for what the operations do). On an accelerator every view is computed:
    shapes are static and nothing is read back to the host, so it runs without synchronising. On the CPU only the
    views that change are computed, and the others are returned exactly as they were.

    Args:
        views (`torch.Tensor` of shape `(views, bands, height, width)`):
            Float views after offset and rescaling (RGB: values in [0, 1]).
        photometry (`torch.Tensor` of shape `(views, columns)`):
            One row per view, as [`AlignedPairViews`] draws them (`defer_photometry=True` returns them).
        rgb (`bool`):
            Whether the views are RGB (torchvision's operations, clipped to [0, 1]) or other bands (the per-band
            equivalents, not clipped).
    """
    photometry = photometry.to(views.device)
    if views.device.type != "cpu":
        return _photometry_of_every_view(views, photometry, rgb, on_cpu=False)
    # Nine teacher views in ten are left as they are; on an accelerator, picking them out would wait for the device.
    changed = ((photometry[:, _JITTER_COLUMN] > 0.5) | (photometry[:, _GRAYSCALE_COLUMN] > 0.5)).nonzero().squeeze(1)
    result = views.clone()
    result[changed] = _photometry_of_every_view(views[changed], photometry[changed], rgb, on_cpu=True)
    return result


def _photometry_of_every_view(views: torch.Tensor, photometry: torch.Tensor, rgb: bool, on_cpu: bool) -> torch.Tensor:
    """[`apply_photometry`] computed on every view; `on_cpu` skips the steps that no view takes (that check would wait
    for an accelerator)."""
    jitter = _per_view(photometry[:, _JITTER_COLUMN] > 0.5)
    hue_position = photometry[:, _HUE_POSITION_COLUMN]
    blend_order = photometry[:, _BLEND_ORDER_COLUMNS].long()
    blend_factors = photometry[:, _BLEND_FACTOR_COLUMNS]

    def blend_step(views: torch.Tensor, step: int, active: torch.Tensor) -> torch.Tensor:
        # Brightness, contrast and saturation all blend the view with a reference (black, the mean level, the
        # grayscale image): `factor * view + (1 - factor) * reference`. Each view takes its own operation for this
        # step; a view that skips it gets factor 1 and no reference, which leaves it exactly as it was.
        active = _per_view(active) & jitter
        if on_cpu and not active.any():
            return views
        operation = blend_order[:, step]
        factor = _per_view(blend_factors.gather(1, operation[:, None]).squeeze(1))
        factor = torch.where(active, factor, 1.0)
        grayscale = _grayscale(views, rgb)
        mean_level = grayscale.mean(dim=(1, 2, 3), keepdim=True) if rgb else views.mean(dim=(2, 3), keepdim=True)
        mean_weight = (1.0 - factor) * _per_view(operation == _CONTRAST)
        grayscale_weight = (1.0 - factor) * _per_view(operation == _SATURATION)
        blended = torch.addcmul(factor * views + mean_weight * mean_level, grayscale_weight, grayscale)
        if rgb:  # torchvision clips after each operation; views that skip the step are left unclipped
            blended = torch.where(active, blended.clamp(0.0, 1.0), blended)
        return blended

    for step in range(3):
        views = blend_step(views, step, step < hue_position)
    if not rgb:
        views = views * torch.where(jitter, photometry[:, _HUE_COLUMNS, None, None], 1.0)
    elif not on_cpu or jitter.any():
        hue, saturation, value = _rgb_to_hsv(views)
        shift = photometry[:, _HUE_COLUMNS].view(-1, 1, 1)
        views = torch.where(jitter, _hsv_to_rgb(torch.remainder(hue + shift, 1.0), saturation, value), views)
    for step in range(3):
        views = blend_step(views, step, step >= hue_position)
    grayscale = _per_view(photometry[:, _GRAYSCALE_COLUMN] > 0.5)
    if on_cpu and not grayscale.any():
        return views
    return torch.where(grayscale, _grayscale(views, rgb).expand_as(views), views)


def random_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """`(top, left, crop_height, crop_width)` of a random crop, by torchvision's `RandomResizedCrop` rule: area
    fraction in `scale`, aspect ratio in `ratio` (log-uniform), drawn from `generator`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
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
    if in_ratio < ratio[0]:
        crop_width, crop_height = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_width, crop_height = round(height * ratio[1]), height
    else:
        crop_width, crop_height = width, height
    crop_width, crop_height = max(1, crop_width), max(1, crop_height)
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def random_resized_crop(
    image: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip_probability: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """
    A random resized crop of `image` `(bands, height, width)` to `size` x `size` (bilinear, antialiased when
    downsampling; box by [`random_crop_box`]), then horizontal and vertical flips with `flip_probability` each, in
    float32 before any offset and rescaling (both are affine, so they commute with the interpolation). The geometry
    of PerA's aligned pairs and of fine-tuning's augmentation.
    """
    top, left, crop_height, crop_width = random_crop_box(image.shape[1], image.shape[2], scale, ratio, generator)
    crop = image[:, top : top + crop_height, left : left + crop_width].to(torch.float32)
    downsampling = crop_height > size or crop_width > size
    crop = F.interpolate(
        crop.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=downsampling
    ).squeeze(0)
    horizontal_flip = _bernoulli(generator, flip_probability)
    vertical_flip = _bernoulli(generator, flip_probability)
    flip_dims = [dim for dim, flip in ((-1, horizontal_flip), (-2, vertical_flip)) if flip]
    return crop.flip(flip_dims) if flip_dims else crop


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
    apply (which expect, and clip to, values in [0, 1] after rescaling, as for 8-bit RGB with
    `rescale_factor=1/255`), computed batched by [`apply_photometry`] and tested against torchvision's. For any
    other band count the RGB operations have no meaning, and these per-band
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
        defer_photometry (`bool`, *optional*, defaults to `False`):
            Leave steps 3 and 4 to the accelerator: the call then returns each image's crops (step 1 and 2 only, before
            offset and rescaling; uint8 when the image is uint8, else float32) and the photometric parameters drawn
            for each view, and [`~AlignedPairViews.finish_batch`] makes the views of a whole batch on its device. The
            random draws are the same, so are the views (up to the rounding of 8-bit crops to integers). DataLoader
            workers then do about a quarter of the work and send an eighth of the bytes (8-bit images).

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
        ratio: tuple[float, float] = CROP_ASPECT_RATIOS,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        offset: float | None = None,
        rescale_factor: float | None = None,
        flip_probability: float = FLIP_PROBABILITY,
        student_color_probability: float = 0.8,
        student_grayscale_probability: float = 0.1,
        teacher_color_probability: float = 0.1,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        defer_photometry: bool = False,
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
        self.defer_photometry = defer_photometry
        self._validate()
        self._statistics_by_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_channels(self) -> int:
        """Number of bands every image must have (one mean and std per band)."""
        return self.image_mean.numel()

    def upsamples(self, image: torch.Tensor) -> bool:
        """Whether every global crop of `image` (bands, height, width) is an enlargement: its shorter side is below the
        global crop size."""
        return min(image.shape[-2:]) < self.global_crop_size

    @property
    def rgb(self) -> bool:
        """Whether the images are taken as RGB (torchvision's photometric operations) rather than other bands."""
        return self.num_channels == 3

    @property
    def num_photometry_columns(self) -> int:
        """Length of a view's photometry row: 9 columns, then the hue shift (RGB) or one factor per band."""
        return _HUE_COLUMNS.start + (1 if self.rgb else self.num_channels)

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
            `teacher_local` of shape `(num_local_crops, num_channels, local_crop_size, local_crop_size)`. With
            `defer_photometry`, instead: `global_crops` and `local_crops` of those shapes, and the photometry rows
            `{student,teacher}_{global,local}_photometry` of shape `(num_crops, num_photometry_columns)`.
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
            crops = torch.empty((count, self.num_channels, size, size))
            student_photometry = torch.empty((count, self.num_photometry_columns))
            teacher_photometry = torch.empty_like(student_photometry)
            for index in range(count):
                crops[index] = self._aligned_crop(image, size, scale, generator)
                student_photometry[index] = self._student_photometry(generator)
                teacher_photometry[index] = self._teacher_photometry(generator)
            if self.defer_photometry:
                if image.dtype == torch.uint8:  # 8-bit crops travel as 8 bits, to the main process and the device
                    crops = crops.round().clamp(0, 255).to(torch.uint8)
                views[f"{kind}_crops"] = crops
                views[f"student_{kind}_photometry"] = student_photometry
                views[f"teacher_{kind}_photometry"] = teacher_photometry
            else:
                crops = self._rescale(crops)
                for role, photometry in (("student", student_photometry), ("teacher", teacher_photometry)):
                    # one view at a time, so that each skips the steps it does not take
                    role_views = [
                        apply_photometry(view[None], row[None], self.rgb) for view, row in zip(crops, photometry)
                    ]
                    views[f"{role}_{kind}"] = self._normalize(torch.cat(role_views) if count else crops)
        return views

    def finish_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        Makes the model inputs of a collated batch of deferred views (`defer_photometry=True`, see
        [`pretraining_collate`]) on the device the batch is on: offset and rescaling, the student's and the teacher's
        photometric augmentations (batched, see [`apply_photometry`]) and normalisation. Other entries pass through.

        Returns:
            `dict[str, torch.Tensor]`: `{student,teacher}_{global,local}_pixel_values` of shape `(num_crops,
            batch_size, num_channels, size, size)`, as [`PeraForPreTraining`] takes them, and the other entries.
        """
        finished = {name: value for name, value in batch.items() if not name.endswith(("_crops", "_photometry"))}
        for kind in ("global", "local"):
            if f"{kind}_crops" not in batch:
                continue
            crops = batch[f"{kind}_crops"]
            rescaled = self._rescale(crops.flatten(0, 1).float())
            for role in ("student", "teacher"):
                photometry = batch[f"{role}_{kind}_photometry"].flatten(0, 1)
                views = self._normalize(apply_photometry(rescaled, photometry, self.rgb))
                finished[f"{role}_{kind}_pixel_values"] = views.unflatten(0, crops.shape[:2])
        return finished

    def _aligned_crop(
        self, image: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator
    ) -> torch.Tensor:
        """The geometry shared by both views."""
        return random_resized_crop(image, size, scale, self.ratio, self.flip_probability, generator)

    def _student_photometry(self, generator: torch.Generator) -> torch.Tensor:
        """Strong photometry: grayscale (8% by default), colour jitter (72%) or unchanged."""
        photometry = torch.zeros(self.num_photometry_columns)
        if _bernoulli(generator, self.student_color_probability):
            if _bernoulli(generator, self.student_grayscale_probability):
                photometry[_GRAYSCALE_COLUMN] = 1.0
            else:
                self._draw_jitter(photometry, generator)
        return photometry

    def _teacher_photometry(self, generator: torch.Generator) -> torch.Tensor:
        """Weak photometry: colour jitter (10% by default) or unchanged."""
        photometry = torch.zeros(self.num_photometry_columns)
        if _bernoulli(generator, self.teacher_color_probability):
            self._draw_jitter(photometry, generator)
        return photometry

    def _draw_jitter(self, photometry: torch.Tensor, generator: torch.Generator) -> None:
        """Brightness, contrast, saturation and hue (or spectral jitter) in random order, drawn like `ColorJitter`."""
        order = torch.randperm(4, generator=generator).tolist()
        photometry[_JITTER_COLUMN] = 1.0
        photometry[_HUE_POSITION_COLUMN] = order.index(_HUE)
        photometry[_BLEND_ORDER_COLUMNS] = torch.tensor([operation for operation in order if operation != _HUE])
        strengths = (self.brightness, self.contrast, self.saturation)
        photometry[_BLEND_FACTOR_COLUMNS] = torch.tensor(
            [_uniform(generator, max(0.0, 1.0 - strength), 1.0 + strength) for strength in strengths]
        )
        if self.rgb:
            photometry[_HUE_COLUMNS] = _uniform(generator, -self.hue, self.hue)
        else:
            photometry[_HUE_COLUMNS] = 1.0 + self.hue * (2 * torch.rand(self.num_channels, generator=generator) - 1)

    def _rescale(self, crops: torch.Tensor) -> torch.Tensor:
        return (crops - self.offset) * self.rescale_factor

    def _normalize(self, views: torch.Tensor) -> torch.Tensor:
        """Per-band `(pixel - mean) / std` of views `(views, bands, height, width)` on any device."""
        if views.device not in self._statistics_by_device:
            # once per device: a copy from the host would wait for the device's queue
            self._statistics_by_device[views.device] = (
                self.image_mean.to(views.device).view(1, -1, 1, 1),
                self.image_std.to(views.device).view(1, -1, 1, 1),
            )
        mean, std = self._statistics_by_device[views.device]
        return (views - mean) / std


# Per-sample counts that the batch carries as totals (`num_<name>`) instead of stacking them.
SAMPLE_COUNTS = ("replaced", "upsampled")


def pop_sample_counts(batch: dict) -> dict[str, torch.Tensor]:
    """Removes the per-batch totals of `SAMPLE_COUNTS` from a collated batch (the model takes only pixels); returns
    them by name."""
    return {name: batch.pop(f"num_{name}") for name in SAMPLE_COUNTS if f"num_{name}" in batch}


def pretraining_collate(samples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """
    Batches the outputs of [`AlignedPairViews`] crop-major, as [`PeraForPreTraining.forward`] takes them.

    Args:
        samples (`Sequence[dict]`):
            One dict per image with `student_global`, `teacher_global`, `student_local` and `teacher_local` views (or,
            with `defer_photometry`, crops and photometry rows), and optionally the counts of `SAMPLE_COUNTS`:
            `replaced`, how many bad samples this one stands in for (see `modeling_pera.data`), and `upsampled`,
            whether its image is smaller than the global crops.

    Returns:
        `dict[str, torch.Tensor]`: `student_global_pixel_values` and `teacher_global_pixel_values` of shape
        `(num_global_crops, batch_size, channels, height, width)`, `student_local_pixel_values` and
        `teacher_local_pixel_values` of shape `(num_local_crops, batch_size, channels, local_height, local_width)`
        (left out when there are no local crops, which the model then skips), and `num_replaced` and
        `num_upsampled`, int64 scalar tensors: the number of bad samples replaced or skipped to make this batch, and
        of its images smaller than the global crops. Pop them before calling the model.
        Deferred crops and photometry rows are stacked the same way, under their own names (see
        [`AlignedPairViews.finish_batch`]).
    """
    if not samples:
        raise ValueError("Cannot collate an empty batch.")
    batch = {}
    for name in samples[0]:
        if name in SAMPLE_COUNTS:
            continue
        stacked = torch.stack([sample[name] for sample in samples], dim=1)
        if stacked.shape[0] > 0:
            batch[name if name.endswith(("_crops", "_photometry")) else f"{name}_pixel_values"] = stacked
    for name in SAMPLE_COUNTS:
        batch[f"num_{name}"] = torch.tensor(sum(int(sample.get(name, 0)) for sample in samples), dtype=torch.int64)
    return batch


__all__ = [
    "CROP_ASPECT_RATIOS",
    "FLIP_PROBABILITY",
    "SAMPLE_COUNTS",
    "AlignedPairViews",
    "apply_photometry",
    "pop_sample_counts",
    "pretraining_collate",
    "random_crop_box",
    "random_resized_crop",
]
