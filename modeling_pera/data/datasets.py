# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Map-style and streaming pretraining datasets: views from a generator seeded by where the run is, bad samples
replaced (map-style) or skipped (streaming) and counted."""

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from ..bands_pera import SENTINEL2_L2A_BANDS
from ..views import AlignedPairViews
from .decoding import DEFAULT_MIN_IMAGE_SIZE, NUM_LOGGED_BAD_SAMPLES, ImageDecoder, UnusableSampleError


logger = logging.getLogger(__name__)


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


def check_image_column(source: datasets.Dataset | datasets.IterableDataset, image_column_name: str) -> None:
    """Raises a `ValueError` naming the columns when `source` has no `image_column_name` (unknown columns pass)."""
    column_names = source.column_names
    if column_names is not None and image_column_name not in column_names:
        raise ValueError(
            f"The dataset has no column {image_column_name!r}; its columns are {column_names}. Pass the name of the "
            "image column (image_column_name)."
        )


def prepare_image_column(source: Any, image_column_name: str) -> Any:
    """Checks the image column and turns off `datasets`' decoding, so that corrupt images reach the bad-file policy."""
    check_image_column(source, image_column_name)
    features = source.features
    if features is not None and isinstance(features.get(image_column_name), datasets.Image):
        source = source.cast_column(image_column_name, datasets.Image(decode=False))
    return source


def describe_value(value: Any, fallback: str) -> str:
    """The path of a `datasets` image value when it has one, else `fallback`."""
    path = value.get("path") if isinstance(value, dict) else None
    return f"{fallback} ({path})" if path else fallback


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
        min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
        max_tries: int | None = None,
        bands: Sequence[int] | None = None,
    ) -> None:
        if isinstance(source, datasets.Dataset):
            source = prepare_image_column(source, image_column_name)
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
        return value, describe_value(value, f"row {index}")

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
                if len(self.bad_indices) <= NUM_LOGGED_BAD_SAMPLES:
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

    `state_dict()` is where this process (or DataLoader worker) is in the stream: the source's shard and offset
    (`datasets.IterableDataset.state_dict`) and the examples read; `load_state_dict` makes the next iteration of the
    same epoch start there, reading nothing twice. [`StreamingDataLoader`] collects these states from its workers.
    A stream shuffled through a buffer cannot resume exactly (`datasets` does not save the buffer's content), so
    `load_state_dict` refuses it.

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
        min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
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
        source = prepare_image_column(source, image_column_name)
        self.num_shards = source.num_shards  # of the whole stream, before it is split over processes
        self.shuffle_buffer_size = shuffle_buffer_size
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
        self._position = (0, 0)  # (epoch, examples read in it) of the last iteration
        self._resume_state: dict | None = None

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch of the views and of the shuffling; call it before iterating."""
        self._epoch.fill_(epoch)
        self.source.set_epoch(epoch)

    def state_dict(self) -> dict:
        """Where the iteration is: after the last example yielded (or before the first one); a loaded state until an
        iteration starts from it."""
        if self._resume_state is not None:
            return self._resume_state
        epoch, examples_read = self._position
        return {
            "epoch": self.epoch,
            "examples_read": examples_read if epoch == self.epoch else 0,
            "num_shards": self.source.num_shards,
            "source": self.source.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Makes the next iteration of epoch `state["epoch"]` continue from `state` (a `state_dict()` of this stream
        in the same process and worker of a run with the same number of processes and workers)."""
        if self.shuffle_buffer_size:
            raise ValueError(
                "A stream shuffled through a buffer cannot resume exactly: `datasets` does not save the buffer's "
                "content. Resume without shuffle_buffer_size, or restart the epoch."
            )
        if state["num_shards"] != self.source.num_shards:
            raise ValueError(
                f"The stream had {state['num_shards']} shards for rank {self.rank} when its position was saved and "
                f"has {self.source.num_shards} now: resume on the same data (a shard was added or has disappeared)."
            )
        self._resume_state = state
        self.source.load_state_dict(state["source"])

    def _describe(self, example: dict, position: int) -> str:
        return describe_value(example.get(self.image_column_name), f"example {position} of rank {self.rank}")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor | int]]:
        worker_info = torch.utils.data.get_worker_info()
        worker = worker_info.id if worker_info is not None else 0
        epoch = self.epoch
        resuming = self._resume_state is not None and self._resume_state["epoch"] == epoch
        start = self._resume_state["examples_read"] if resuming else 0
        self._resume_state = None
        self._position = (epoch, start)
        num_skipped = 0
        for position, example in enumerate(self.source, start=start):
            self._position = (epoch, position + 1)
            try:
                image = self.decoder(example[self.image_column_name], self._describe(example, position))
            except UnusableSampleError as error:
                num_skipped += 1
                self.num_bad_samples += 1
                if self.num_bad_samples <= NUM_LOGGED_BAD_SAMPLES:
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
