# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The check of a pretraining dataset before training: a few samples decoded, and a clear error when the data cannot
work (every file unreadable, a band count the model cannot use, pixels outside the range of the band statistics)."""

import logging
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch

from ..bands_pera import eight_bit_range_problem, has_8_bit_statistics
from ..raster import band_count_advice
from ..views import AlignedPairViews
from .datasets import PretrainingDataset, PretrainingIterableDataset
from .decoding import UnusableSampleError
from .scenes import SceneDataset
from .torchgeo_source import GeoSamplerDataset


logger = logging.getLogger(__name__)


def _checked_samples(
    dataset: PretrainingDataset | PretrainingIterableDataset, num_checked: int
) -> Iterator[tuple[str, torch.Tensor | None, UnusableSampleError | None]]:
    """`(description, pixels, error)` of `num_checked` samples (pixels or error `None`): spread over a map-style
    dataset, the first of a stream."""
    if isinstance(dataset, (PretrainingDataset, SceneDataset, GeoSamplerDataset)):
        indices = np.unique(np.linspace(0, len(dataset) - 1, num=min(num_checked, len(dataset))).round().astype(int))
        for index in indices.tolist():
            try:
                yield dataset.describe(index), dataset.load_image(index), None
            except UnusableSampleError as error:
                yield dataset.describe(index), None, error
    else:
        for position, example in enumerate(islice(dataset.source, num_checked)):
            description = dataset._describe(example, position)
            try:
                yield description, dataset.decoder(example[dataset.image_column_name], description), None
            except UnusableSampleError as error:
                yield description, None, error


def _pixel_range_mismatch(views: AlignedPairViews, decoded: list[tuple[str, torch.Tensor]]) -> str | None:
    """Why the decoded samples are not the 8-bit pixels that band statistics rescaled by 1/255 are made for, or
    `None` (also for statistics of other ranges, which cannot be checked this way)."""
    if not has_8_bit_statistics(views.rescale_factor, views.offset):
        return None
    for description, pixels in decoded:
        if pixels.dtype == torch.uint8:
            continue
        problem = eight_bit_range_problem(float(pixels.min()), float(pixels.max()), pixels.is_floating_point())
        if problem:
            return f"{description} has {problem}"
    return None


def _report_small_images(views: AlignedPairViews, decoded: list[tuple[str, Any]]) -> None:
    small = [(description, pixels.shape) for description, pixels in decoded if views.upsamples(pixels)]
    if small:
        description, shape = small[0]
        logger.warning(
            f"{len(small)} of the {len(decoded)} checked images are smaller than the {views.global_crop_size} px global "
            f"crops (e.g. {description}, {shape[-2]}x{shape[-1]} px): their crops are upsampled. Train at a smaller "
            "size (--config_overrides image_size=...,local_crop_size=...) or on larger images to avoid it; training "
            "counts them as `upsampled`."
        )


def check_dataset(
    dataset: PretrainingDataset | PretrainingIterableDataset, num_checked: int = 16, max_bad_fraction: float = 0.5
) -> int:
    """
    Decodes a few samples before training and raises a `ValueError` that says what to fix when the data cannot work.

    The samples checked are `num_checked` indices spread evenly over a map-style dataset, or the first `num_checked`
    examples of a stream. The check fails when more than `max_bad_fraction` of them (and always when all of them) are
    bad: unreadable, of a band count the model cannot use (the message gives the band count found, the model's, and
    how to match them), too small, or not finite. Fewer bad samples only log a warning: training replaces them.

    Args:
        dataset ([`PretrainingDataset`] or [`PretrainingIterableDataset`]):
            The dataset to check.
        num_checked (`int`, *optional*, defaults to 16):
            How many samples to decode.
        max_bad_fraction (`float`, *optional*, defaults to 0.5):
            Largest tolerated fraction of bad samples among those checked.

    Returns:
        `int`: the number of usable samples among those checked.
    """
    results = list(_checked_samples(dataset, num_checked))
    if not results:
        raise ValueError("The pretraining dataset yielded no samples to check: it is empty.")
    decoded = [(description, pixels) for description, pixels, _ in results if pixels is not None]
    mismatch = _pixel_range_mismatch(dataset.views, decoded)
    if mismatch:
        raise ValueError(
            f"The image processor's band statistics are for 8-bit pixels (0-255, rescaled by 1/255), but {mismatch}. "
            "Convert the images to 8-bit, or pretrain with statistics made for their range (--processor_preset, e.g. "
            "sentinel2-l2a for Sentinel-2 digital numbers, or the bands' own --image_mean and --image_std)."
        )
    _report_small_images(dataset.views, decoded)
    errors = [error for _, _, error in results if error is not None]
    num_usable = len(results) - len(errors)
    if not errors:
        return num_usable

    expected = dataset.decoder.num_channels
    lines = []
    band_count_errors = [error for error in errors if error.reason == "band_count"]
    if band_count_errors:
        found = Counter(error.num_bands for error in band_count_errors)
        most_common = found.most_common(1)[0][0]
        advice = band_count_advice(most_common, expected) if most_common else "keep only images with the model's bands"
        lines.append(
            f"{len(band_count_errors)} have a band count the model cannot use: found "
            f"{', '.join(f'{bands} bands ({count} samples)' for bands, count in found.items())}, the model expects "
            f"{expected} (e.g. {band_count_errors[0]}). To train on these images: {advice}."
        )
    for reason, summary in (
        ("unreadable", "are unreadable (empty, truncated, corrupt or not images)"),
        ("too_small", f"are smaller than min_image_size={dataset.decoder.min_image_size} px on a side"),
        ("not_finite", "contain NaN or infinite values"),
    ):
        of_reason = [error for error in errors if error.reason == reason]
        if of_reason:
            lines.append(f"{len(of_reason)} {summary}, e.g. {of_reason[0]}")
    report = f"{len(errors)} of {len(results)} checked samples cannot be used:\n- " + "\n- ".join(lines)
    if num_usable == 0 or len(errors) > max_bad_fraction * len(results):
        raise ValueError(f"The pretraining data cannot be used as it is. {report}")
    logger.warning(f"check_dataset: {report}\nTraining replaces such samples by others and counts them.")
    return num_usable
