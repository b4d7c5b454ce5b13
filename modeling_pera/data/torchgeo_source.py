# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Pretraining on a TorchGeo dataset through its geo sampler (e.g. a `RasterDataset` with a `RandomGeoSampler`):
TorchGeo reads, reprojects and mosaics the windows, PerA makes the views (the optional `torchgeo` extra)."""

import copy
import importlib
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..scene_io import pixel_size_in_metres
from ..views import AlignedPairViews
from .datasets import seeded_generator


def import_torchgeo_datasets():
    try:
        return importlib.import_module("torchgeo.datasets")
    except ImportError as error:
        raise ImportError(
            "Pretraining on a TorchGeo dataset needs TorchGeo: pip install 'modeling_pera[torchgeo]'."
        ) from error


def build_torchgeo_dataset(class_name: str, paths: Sequence[str | os.PathLike], bands: Sequence[str] | None = None):
    """
    A TorchGeo raster dataset of class `class_name` over `paths` (its files or folders): a name in
    `torchgeo.datasets` (`RasterDataset` for any GeoTIFFs, `NAIP`, `Sentinel2`, `Landsat8`, ...) or the dotted path
    of your own subclass (`my_package.datasets.MyScenes`). `bands` (the class's band names) selects and orders them.
    """
    torchgeo_datasets = import_torchgeo_datasets()
    module_name, _, name = class_name.rpartition(".")
    module = importlib.import_module(module_name) if module_name else torchgeo_datasets
    dataset_class = getattr(module, name, None)
    if not isinstance(dataset_class, type) or not issubclass(dataset_class, torchgeo_datasets.RasterDataset):
        raise ValueError(
            f"--torchgeo_dataset {class_name} is not a TorchGeo RasterDataset class: give a name in torchgeo.datasets "
            "(e.g. RasterDataset, NAIP, Sentinel2) or the dotted path of a RasterDataset subclass."
        )
    keywords = {}
    if bands:
        unknown = [band for band in bands if band not in dataset_class.all_bands]
        if unknown:
            raise ValueError(
                f"--bands {unknown}: TorchGeo's {dataset_class.__name__} names its bands "
                f"{list(dataset_class.all_bands) or 'not at all (no all_bands)'}; give names among them, or leave "
                "--bands out to read every band of the files."
            )
        keywords["bands"] = [str(band) for band in bands]
    try:
        return dataset_class(paths=[str(path) for path in paths], **keywords)
    except FileNotFoundError as error:  # TorchGeo's DatasetNotFoundError is one
        raise ValueError(
            f"TorchGeo's {dataset_class.__name__} found no files in {[str(path) for path in paths]} (its "
            f"filename_glob is {dataset_class.filename_glob!r}): {error}"
        ) from error


class GeoSamplerDataset(torch.utils.data.Dataset):
    """
    PerA view pairs from a TorchGeo dataset's samples, at the queries its geo sampler yields.

    The queries of an epoch are drawn once per epoch with the random state of torch and the sampler's generator
    seeded from `(seed, epoch)` (on a copy of `sampler`), so sample `(epoch, index)` is always the same window, in
    any DataLoader worker and process: runs resume exactly. Sample `index` reads query `index` of its epoch, takes its
    `"image"` (bands first) and makes the views with a generator seeded from `(seed, epoch, index)`.

    Args:
        dataset (`torchgeo.datasets.GeoDataset`):
            The dataset (e.g. from [`build_torchgeo_dataset`]); its samples' images must have the model's bands.
        sampler (`torchgeo.samplers.GeoSampler`):
            Yields the queries (e.g. `RandomGeoSampler(dataset, size=256, length=10_000)`); its length is the epoch's.
        views ([`~views.AlignedPairViews`]):
            Makes the views; its `num_channels` is the number of bands expected.
        seed (`int`, *optional*, defaults to 0):
            Seed of the queries and the views.
    """

    def __init__(self, dataset: Any, sampler: Any, views: AlignedPairViews, seed: int = 0) -> None:
        if len(sampler) == 0:
            raise ValueError(
                f"The TorchGeo sampler yields no query over {dataset}: its windows may be larger than every file, "
                "or its region of interest may miss the data."
            )
        self.dataset = dataset
        self.sampler = sampler
        self.views = views
        self.seed = seed
        self.epoch = 0
        self._queries: tuple[int, list] | None = None

    @classmethod
    def random_windows(
        cls,
        dataset: Any,
        views: AlignedPairViews,
        window_size: int | None = None,
        windows_per_epoch: int | None = None,
        seed: int = 0,
    ) -> "GeoSamplerDataset":
        """Windows of `window_size` pixels (default: the global crop size) drawn by TorchGeo's `RandomGeoSampler`
        (files in proportion to their area), `windows_per_epoch` per epoch (default: the sampler's)."""
        from torchgeo.samplers import RandomGeoSampler

        sampler = RandomGeoSampler(dataset, size=window_size or views.global_crop_size, length=windows_per_epoch)
        return cls(dataset, sampler, views, seed=seed)

    @property
    def ground_sampling_distance(self) -> float | None:
        """Metres per pixel of the windows (the dataset's `res`), when its CRS is in metres; else None."""
        return pixel_size_in_metres(self.dataset)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch used by integer indices (the windows and views of every sample change with the epoch)."""
        self.epoch = epoch

    def queries(self, epoch: int) -> list:
        """The sampler's queries of `epoch`, a function of `(seed, epoch)` only."""
        if self._queries is None or self._queries[0] != epoch:
            generator = seeded_generator(self.seed, epoch)
            sampler = copy.copy(self.sampler)
            if hasattr(sampler, "generator"):
                sampler.generator = generator
            # some samplers also draw from torch's global state (RandomGeoSampler picks the file with it)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
                self._queries = (epoch, list(sampler))
        return self._queries[1]

    def describe(self, index: int) -> str:
        return f"TorchGeo query {self.queries(self.epoch)[index]}"

    def read(self, epoch: int, index: int) -> torch.Tensor:
        """The image of sample `index` of `epoch`, `(bands, height, width)`."""
        image = self.dataset[self.queries(epoch)[index]]["image"]
        if image.ndim != 3 or image.shape[0] != self.views.num_channels:
            bands = getattr(self.dataset, "bands", None)
            raise ValueError(
                f"TorchGeo's {type(self.dataset).__name__} gives images of shape {tuple(image.shape)}"
                f"{f' (bands {list(bands)})' if bands else ''}, the model expects {self.views.num_channels} bands "
                "first: select the bands with --bands, or set the model's num_channels and --processor_preset."
            )
        return image

    def load_image(self, index: int) -> torch.Tensor:
        """The image of sample `index` in the current epoch (what [`check_dataset`] decodes)."""
        return self.read(self.epoch, index)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        image = self.read(epoch, index)
        views = self.views(image, seeded_generator(self.seed, epoch, index))
        return {**views, "replaced": 0, "upsampled": int(self.views.upsamples(image))}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_queries": None}


__all__ = ["GeoSamplerDataset", "build_torchgeo_dataset"]
