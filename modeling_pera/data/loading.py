# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Where pretraining samples come from (folders, `datasets` datasets, streams), the (epoch, index) sampler and the
DataLoader."""

import logging
import os
import signal
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from ..raster import IMAGE_EXTENSIONS, find_images
from ..views import AlignedPairViews, pretraining_collate
from .datasets import PretrainingDataset, PretrainingIterableDataset, check_image_column, seeded_generator


logger = logging.getLogger(__name__)


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
    check_image_column(source, image_column_name)
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


class StreamingDataLoader(StatefulDataLoader, PretrainingDataLoader):
    """
    The DataLoader of a [`PretrainingIterableDataset`]: torchdata's `StatefulDataLoader`, whose `state_dict()` holds
    each worker's position in the stream (and which worker's batch comes next), so that `load_state_dict` continues
    an interrupted epoch exactly, without reading the stream again up to there. One state per process.
    """

    def __init__(self, *arguments, **keywords) -> None:
        with warnings.catch_warnings():
            # torchdata 0.11 calls torch.set_vital, which torch now deprecates: nothing the user can act on.
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
            super().__init__(*arguments, **keywords)


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
    and `rank` do not apply to it; its loader is a [`StreamingDataLoader`], which saves and restores its position.
    Call `dataloader.set_epoch(epoch)` before each epoch.

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
        loader_class, sampler = StreamingDataLoader, None
    else:
        loader_class = PretrainingDataLoader
        sampler = PretrainingSampler(len(dataset), seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank)
    return loader_class(
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
