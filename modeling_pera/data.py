# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Image sources for PerA pretraining: local folders, `datasets` datasets (map-style or streaming), decoding to
`(bands, height, width)` tensors with the model's band count, and the bad-file policy.

Bad samples (unreadable, truncated or corrupt files, a band count the model cannot use, images smaller than
`min_image_size`, NaN or infinite pixels) never stop a run: a map-style dataset replaces such a sample by the next
usable one (index + 1, index + 2, ..., deterministically), a streaming dataset skips it, and every batch reports how
many samples were replaced or skipped (`num_replaced`). Data that cannot work at all (every file unreadable, a band
count that does not match the model) is caught at start by [`check_dataset`].
"""

import logging
import os
import signal
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image

from .image_processing_pera import (
    SENTINEL2_L2A_BANDS,
    eight_bit_range_problem,
    has_8_bit_statistics,
    pil_image_to_bands,
)
from .raster import (
    IMAGE_EXTENSIONS,
    RasterReadError,
    band_count_advice,
    decode_image_bytes,
    find_images,
    read_image,
    select_bands,
)
from .views import AlignedPairViews, pretraining_collate


logger = logging.getLogger(__name__)

# How many bad samples each dataset object (each DataLoader worker holds its own) names in the log.
_NUM_LOGGED_BAD_SAMPLES = 5
_DEFAULT_MIN_IMAGE_SIZE = 16


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
        min_image_size: int = _DEFAULT_MIN_IMAGE_SIZE,
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


def seeded_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """
    A generator on `device` seeded from `(seed, *keys)` through numpy's `SeedSequence`, so that nearby keys give
    unrelated streams: the package's one way to make randomness a function of where a run is, e.g. (seed, epoch,
    index) for a sample's views, (seed, epoch) for the order, (seed, micro step, rank) for the masks.
    """
    if seed < 0 or any(key < 0 for key in keys):
        raise ValueError(f"Seeds and keys must be non-negative, got {(seed, *keys)}.")
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def _check_image_column(source: datasets.Dataset | datasets.IterableDataset, image_column_name: str) -> None:
    """Raises a `ValueError` naming the columns when `source` has no `image_column_name` (unknown columns pass)."""
    column_names = source.column_names
    if column_names is not None and image_column_name not in column_names:
        raise ValueError(
            f"The dataset has no column {image_column_name!r}; its columns are {column_names}. Pass the name of the "
            "image column (image_column_name)."
        )


def _prepare_image_column(source: Any, image_column_name: str) -> Any:
    """Checks the image column and turns off `datasets`' decoding, so that corrupt images reach the bad-file policy."""
    _check_image_column(source, image_column_name)
    features = source.features
    if features is not None and isinstance(features.get(image_column_name), datasets.Image):
        source = source.cast_column(image_column_name, datasets.Image(decode=False))
    return source


def _describe_value(value: Any, fallback: str) -> str:
    """The path of a `datasets` image value when it has one, else `fallback`."""
    path = value.get("path") if isinstance(value, dict) else None
    return f"{fallback} ({path})" if path else fallback


# ---------------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------------


class PretrainingDataset(torch.utils.data.Dataset):
    """
    A map-style dataset of PerA view pairs over image files and band folders, or over a `datasets.Dataset`.

    `dataset[index]` decodes sample `index` (see [`ImageDecoder`]) and makes its views with `views`, drawing every
    random number from a generator seeded from `(seed, epoch, index)`: a sample's views depend on nothing else (not
    on the DataLoader's workers), and differ between epochs. `index` may also be an `(epoch, index)` pair, which is
    what [`PretrainingSampler`] yields, so that the epoch reaches persistent DataLoader workers.

    A bad sample is replaced by the next usable one (index + 1, index + 2, ..., wrapping around), with the requested
    index's seed; the result has `replaced=1`. Each dataset object (each DataLoader worker) remembers the bad indices
    it found, so a run of bad files is decoded once, and logs the first few with a warning. If none of `max_tries`
    consecutive samples is usable, a `RuntimeError` says so.

    Args:
        source (`Sequence[str | os.PathLike]` or `datasets.Dataset`):
            Image files and band folders (e.g. from [`find_images`]), or a dataset with an image column.
        views ([`~views.AlignedPairViews`]):
            Makes the views; its `num_channels` is the band count every sample is decoded to.
        seed (`int`, *optional*, defaults to 0):
            Seed of the views.
        image_column_name (`str`, *optional*, defaults to `"image"`):
            The image column of a `datasets.Dataset` (images, encoded image dicts, paths or arrays).
        band_order (`Sequence[str]`, *optional*, defaults to `SENTINEL2_L2A_BANDS`):
            Bands read from band folders, in input order (e.g. `config.band_names` when they are Sentinel-2 names).
        min_image_size (`int`, *optional*, defaults to 16):
            Images with a shorter side are bad samples (e.g. pass the patch size or more).
        bands (`Sequence[int]`, *optional*):
            The bands of each decoded image to keep, in order (see [`ImageDecoder`]); all of them by default.
        max_tries (`int`, *optional*):
            Consecutive samples tried before giving up; defaults to the whole dataset.
    """

    def __init__(
        self,
        source: Sequence[str | os.PathLike] | datasets.Dataset,
        views: AlignedPairViews,
        seed: int = 0,
        image_column_name: str = "image",
        band_order: Sequence[str] = SENTINEL2_L2A_BANDS,
        min_image_size: int = _DEFAULT_MIN_IMAGE_SIZE,
        max_tries: int | None = None,
        bands: Sequence[int] | None = None,
    ) -> None:
        if isinstance(source, datasets.Dataset):
            source = _prepare_image_column(source, image_column_name)
        else:
            source = [Path(path) for path in source]
        if len(source) == 0:
            raise ValueError("The pretraining dataset is empty: no images were found or given.")
        self.source = source
        self.views = views
        self.seed = seed
        self.image_column_name = image_column_name
        self.decoder = ImageDecoder(views.num_channels, band_order, min_image_size, bands)
        self.max_tries = min(max_tries, len(source)) if max_tries is not None else len(source)
        self.epoch = 0
        self.bad_indices: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch used by integer indices (the views of every sample change with the epoch)."""
        self.epoch = epoch

    def _sample(self, index: int) -> tuple[Any, str]:
        """The undecoded sample `index` and its description (its path, or its row of a `datasets.Dataset`)."""
        if isinstance(self.source, list):
            return self.source[index], str(self.source[index])
        value = self.source[index][self.image_column_name]
        return value, _describe_value(value, f"row {index}")

    def describe(self, index: int) -> str:
        """The path of sample `index`, or its row for a `datasets.Dataset`."""
        return self._sample(index)[1]

    def load_image(self, index: int) -> torch.Tensor:
        """Decodes sample `index` to `(num_channels, height, width)` (see [`ImageDecoder`]: uint8 for 8-bit images,
        float32 otherwise); raises [`UnusableSampleError`]."""
        return self.decoder(*self._sample(index))

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        error = None
        for attempt in range(self.max_tries):
            candidate = (index + attempt) % len(self)
            if candidate in self.bad_indices:
                continue
            try:
                image = self.load_image(candidate)
            except UnusableSampleError as bad_sample:
                error = bad_sample
                self.bad_indices.add(candidate)
                if len(self.bad_indices) <= _NUM_LOGGED_BAD_SAMPLES:
                    logger.warning(f"Replacing a bad sample: {error}")
                continue
            views = self.views(image, seeded_generator(self.seed, epoch, index))
            return {**views, "replaced": int(attempt > 0), "upsampled": int(self.views.upsamples(image))}
        raise RuntimeError(
            f"None of {self.max_tries} consecutive samples from {self.describe(index)} is usable"
            f"{f'; the last error: {error}' if error else ''}. Check the data with modeling_pera.data.check_dataset."
        )


class PretrainingIterableDataset(torch.utils.data.IterableDataset):
    """
    PerA view pairs over a streaming `datasets.IterableDataset`.

    The stream is split across processes with `datasets.distributed.split_dataset_by_node` (by shards when their number
    is a multiple of `world_size`, else every `world_size`-th example) and, inside a DataLoader, across its workers by
    `datasets` itself (by shards: use a dataset with at least `num_workers` shards). The views of each example are
    drawn from a generator seeded from `(seed, epoch, rank, worker, position)`, position being the running count of
    examples this worker has read: runs are reproducible for a given number of processes and workers. Bad examples are
    skipped; the next example yielded carries in `replaced` how many were skipped just before it (bad examples at the
    very end of a worker's stream are only logged). Call `set_epoch` before iterating an epoch (shuffling and views
    change with it; the epoch lives in shared memory, so persistent DataLoader workers see it).

    Args:
        source (`datasets.IterableDataset`):
            The stream, e.g. `load_dataset(name, streaming=True)` or `Dataset.to_iterable_dataset(num_shards=...)`.
        views ([`~views.AlignedPairViews`]):
            Makes the views.
        seed (`int`, *optional*, defaults to 0):
            Seed of the views and of the shuffling.
        image_column_name (`str`, *optional*, defaults to `"image"`):
            The image column.
        rank (`int`, *optional*):
            This process's rank; defaults to the `torch.distributed` rank, or 0.
        world_size (`int`, *optional*):
            Number of processes; defaults to the `torch.distributed` world size, or 1.
        shuffle_buffer_size (`int`, *optional*):
            When given, the stream is shuffled (shard order and a buffer of this many examples) anew each epoch.
        band_order (`Sequence[str]`, *optional*, defaults to `SENTINEL2_L2A_BANDS`):
            Bands read from band folders.
        min_image_size (`int`, *optional*, defaults to 16):
            Images with a shorter side are skipped.
        bands (`Sequence[int]`, *optional*):
            The bands of each decoded image to keep, in order (see [`ImageDecoder`]); all of them by default.
        max_consecutive_bad (`int`, *optional*, defaults to 1000):
            Consecutive bad examples after which the iteration stops with a `RuntimeError`.
    """

    def __init__(
        self,
        source: datasets.IterableDataset,
        views: AlignedPairViews,
        seed: int = 0,
        image_column_name: str = "image",
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer_size: int | None = None,
        band_order: Sequence[str] = SENTINEL2_L2A_BANDS,
        min_image_size: int = _DEFAULT_MIN_IMAGE_SIZE,
        max_consecutive_bad: int = 1000,
        bands: Sequence[int] | None = None,
    ) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        self.world_size = (
            world_size if world_size is not None else (torch.distributed.get_world_size() if distributed else 1)
        )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must lie in [0, world_size={self.world_size}), got {self.rank}.")
        source = _prepare_image_column(source, image_column_name)
        if shuffle_buffer_size:
            # Shuffle before splitting, with the same seed on every process, so that the processes split one order.
            source = source.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        if self.world_size > 1:
            source = split_dataset_by_node(source, rank=self.rank, world_size=self.world_size)
        self.source = source
        self.views = views
        self.seed = seed
        self.image_column_name = image_column_name
        self.decoder = ImageDecoder(views.num_channels, band_order, min_image_size, bands)
        self.max_consecutive_bad = max_consecutive_bad
        # In shared memory, so that `set_epoch` in the main process reaches persistent DataLoader workers.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.num_bad_samples = 0

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch of the views and of the shuffling; call it before iterating."""
        self._epoch.fill_(epoch)
        self.source.set_epoch(epoch)

    def _describe(self, example: dict, position: int) -> str:
        return _describe_value(example.get(self.image_column_name), f"example {position} of rank {self.rank}")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor | int]]:
        worker_info = torch.utils.data.get_worker_info()
        worker = worker_info.id if worker_info is not None else 0
        epoch = self.epoch
        num_skipped = 0
        for position, example in enumerate(self.source):
            try:
                image = self.decoder(example[self.image_column_name], self._describe(example, position))
            except UnusableSampleError as error:
                num_skipped += 1
                self.num_bad_samples += 1
                if self.num_bad_samples <= _NUM_LOGGED_BAD_SAMPLES:
                    logger.warning(f"Skipping a bad sample: {error}")
                if num_skipped >= self.max_consecutive_bad:
                    raise RuntimeError(
                        f"{num_skipped} consecutive bad samples in the stream (the last: {error}). Check the data "
                        "with modeling_pera.data.check_dataset."
                    ) from error
                continue
            views = self.views(image, seeded_generator(self.seed, epoch, self.rank, worker, position))
            yield {**views, "replaced": num_skipped, "upsampled": int(self.views.upsamples(image))}
            num_skipped = 0
        if num_skipped:  # no sample left to carry the count into a batch
            logger.warning(f"Skipped {num_skipped} bad samples at the end of the stream of rank {self.rank}.")


# ---------------------------------------------------------------------------------------------------------------------
# Checks at start
# ---------------------------------------------------------------------------------------------------------------------


def _checked_samples(
    dataset: PretrainingDataset | PretrainingIterableDataset, num_checked: int
) -> Iterator[tuple[str, torch.Tensor | None, UnusableSampleError | None]]:
    """`(description, pixels, error)` of `num_checked` samples (pixels or error `None`): spread over a map-style
    dataset, the first of a stream."""
    if isinstance(dataset, PretrainingDataset):
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
            "sentinel2-l2a for Sentinel-2 digital numbers)."
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


# ---------------------------------------------------------------------------------------------------------------------
# Sources and loaders
# ---------------------------------------------------------------------------------------------------------------------


def load_pretraining_dataset(
    dataset_name: str | None = None,
    train_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    dataset_config_name: str | None = None,
    image_column_name: str = "image",
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> list[Path] | datasets.Dataset | datasets.IterableDataset:
    """
    Opens the pretraining images.

    - `train_dir` alone: a local folder (or several, pooled), listed with [`find_images`] (GeoTIFF, band folders, JPEG, PNG; `datasets`'
      `imagefolder` cannot read multispectral TIFFs). Returns the list of samples, for [`PretrainingDataset`].
    - `dataset_name`: `datasets.load_dataset(dataset_name, dataset_config_name, data_dir=train_dir, split=split,
      streaming=streaming, cache_dir=cache_dir)`, for Hub datasets or builders such as `"imagefolder"`. Returns a
      `datasets.Dataset` (for [`PretrainingDataset`]) or, with `streaming=True`, a `datasets.IterableDataset` (for
      [`PretrainingIterableDataset`]).

    [`make_pretraining_dataset`] wraps either result.

    Raises:
        `ValueError`: when neither or an invalid combination is given, no image is found, the dataset cannot be
        loaded (the cause is chained: a wrong name, no network, offline mode) or it has no `image_column_name`.
    """
    folders = (
        None if train_dir is None else [train_dir] if isinstance(train_dir, (str, os.PathLike)) else list(train_dir)
    )
    if dataset_name is None:
        if not folders:
            raise ValueError("Give the pretraining images: a local folder (train_dir) or a dataset (dataset_name).")
        if streaming:
            raise ValueError(
                "streaming applies to datasets loaded by name; a local folder (train_dir) is read directly. Use "
                "dataset_name='imagefolder' with train_dir to stream a folder of JPEG/PNG images through `datasets`."
            )
        samples = [sample for folder in folders for sample in find_images(folder)]
        if not samples:
            raise ValueError(
                f"No images found under {', '.join(map(str, folders))}: looked for {', '.join(IMAGE_EXTENSIONS)} files "
                "and band folders (<name>_B01.tif, <name>_B02.tif, ...)."
            )
        return samples
    if folders and len(folders) > 1:
        raise ValueError(f"A dataset loaded by name takes one data folder (train_dir), got {len(folders)}.")
    try:
        source = datasets.load_dataset(
            dataset_name,
            dataset_config_name,
            data_dir=str(folders[0]) if folders else None,
            split=split,
            streaming=streaming,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
    except Exception as error:  # `datasets` raises many types: not found, connection, offline mode, bad config
        raise ValueError(
            f"Could not load the dataset {dataset_name!r} (split {split!r}): {type(error).__name__}: {error}. Check "
            "the name and the split, and network access for Hub datasets (HF_HUB_OFFLINE=1 allows only cached "
            "ones); for images in a local folder pass train_dir instead."
        ) from error
    _check_image_column(source, image_column_name)
    return source


def make_pretraining_dataset(
    source: Sequence[str | os.PathLike] | datasets.Dataset | datasets.IterableDataset,
    views: AlignedPairViews,
    seed: int = 0,
    image_column_name: str = "image",
    **kwargs,
) -> PretrainingDataset | PretrainingIterableDataset:
    """
    Wraps what [`load_pretraining_dataset`] returns: a [`PretrainingIterableDataset`] for a streaming
    `datasets.IterableDataset`, a [`PretrainingDataset`] otherwise. `kwargs` go to the class (e.g. `band_order`,
    `min_image_size`; `rank`, `world_size` and `shuffle_buffer_size` for streaming).
    """
    dataset_class = PretrainingIterableDataset if isinstance(source, datasets.IterableDataset) else PretrainingDataset
    return dataset_class(source, views, seed=seed, image_column_name=image_column_name, **kwargs)


class PretrainingSampler(torch.utils.data.Sampler):
    """
    Yields `(epoch, index)` pairs in an order that is a pure function of `(seed, epoch)`, optionally for one of
    `num_replicas` processes (each takes every `num_replicas`-th index of the shared order; the tail that does not
    divide evenly is dropped so that every process has as many samples).

    The epoch travels with each index, so that the views change every epoch even in persistent DataLoader workers,
    whose copy of the dataset never sees `set_epoch`.
    """

    def __init__(
        self, num_samples: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas={num_replicas}), got {rank}.")
        if num_samples < num_replicas:
            raise ValueError(f"{num_samples} samples cannot be split over {num_replicas} processes.")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=seeded_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.num_samples)
        order = order[self.rank : len(self) * self.num_replicas : self.num_replicas]
        for index in order.tolist():
            yield self.epoch, index


def ignore_stop_signals(worker_id: int) -> None:
    """Workers leave Ctrl-C and SIGTERM to the training process, which stops after its step and saves a checkpoint
    (a terminal sends Ctrl-C to every process of the group; a worker would otherwise exit under the loop's feet)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class PretrainingDataLoader(torch.utils.data.DataLoader):
    """A `DataLoader` with `set_epoch`, which sets the epoch of its sampler and its dataset."""

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating each epoch: the order and the views change with it."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def make_pretraining_dataloader(
    dataset: PretrainingDataset | PretrainingIterableDataset,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    pin_memory: bool | None = None,
    num_replicas: int = 1,
    rank: int = 0,
) -> PretrainingDataLoader:
    """
    A DataLoader of collated PerA batches (see [`~views.pretraining_collate`]).

    For a map-style dataset the order comes from a [`PretrainingSampler`] seeded with `seed` (reproducible per epoch;
    `num_replicas`/`rank` shard it for multi-process training without accelerate, whose `prepare` shards on its own).
    A streaming dataset orders and shards itself (see [`PretrainingIterableDataset`]), so `shuffle`, `num_replicas`
    and `rank` do not apply to it. Call `dataloader.set_epoch(epoch)` before each epoch.

    Args:
        dataset ([`PretrainingDataset`] or [`PretrainingIterableDataset`]):
            The samples.
        batch_size (`int`):
            Images per batch (per process).
        num_workers (`int`, *optional*, defaults to 0):
            DataLoader worker processes; kept alive across epochs when more than 0.
        seed (`int`, *optional*, defaults to 0):
            Seed of the order.
        shuffle (`bool`, *optional*, defaults to `True`):
            Whether to shuffle a map-style dataset each epoch.
        drop_last (`bool`, *optional*, defaults to `True`):
            Whether to drop the last incomplete batch.
        pin_memory (`bool`, *optional*):
            Defaults to `torch.cuda.is_available()`.
        num_replicas (`int`, *optional*, defaults to 1), rank (`int`, *optional*, defaults to 0):
            Sharding of a map-style dataset over processes.
    """
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if num_replicas != 1:
            raise ValueError(
                "A streaming dataset shards itself over processes: pass rank and world_size to "
                "PretrainingIterableDataset instead of num_replicas here."
            )
        sampler = None
    else:
        sampler = PretrainingSampler(len(dataset), seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank)
    return PretrainingDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=pretraining_collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals,
        # Starting workers draws their base seed from this generator instead of the global RNG, so the global RNG
        # (dropout, drop path) is the same whether a run starts the loader before or after restoring a checkpoint.
        generator=torch.Generator().manual_seed(seed),
    )


__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDecoder",
    "PretrainingDataLoader",
    "PretrainingDataset",
    "PretrainingIterableDataset",
    "PretrainingSampler",
    "UnusableSampleError",
    "check_dataset",
    "load_pretraining_dataset",
    "make_pretraining_dataloader",
    "make_pretraining_dataset",
    "seeded_generator",
]
