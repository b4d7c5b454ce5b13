# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Image sources for PerA pretraining: local folders, `datasets` datasets (map-style or streaming), decoding to
`(bands, height, width)` tensors with the model's band count, and the bad-file policy. Modules: `decoding` (a sample
to a tensor), `datasets` (map-style and streaming datasets, seeded generators), `checks` (the check at start),
`loading` (sources, the sampler, the DataLoaders), `scenes` (random windows of large GeoTIFF/COG scenes),
`torchgeo_source` (windows of a TorchGeo dataset at its sampler's queries).

Bad samples (unreadable, truncated or corrupt files, a band count the model cannot use, images smaller than
`min_image_size`, NaN or infinite pixels) never stop a run: a map-style dataset replaces such a sample by the next
usable one (index + 1, index + 2, ..., deterministically), a streaming dataset skips it, and every batch reports how
many samples were replaced or skipped (`num_replaced`). Data that cannot work at all (every file unreadable, a band
count that does not match the model) is caught at start by [`check_dataset`].
"""

from .checks import check_dataset
from .datasets import PretrainingDataset, PretrainingIterableDataset, seeded_generator
from .decoding import ImageDecoder, UnusableSampleError
from .loading import (
    PretrainingDataLoader,
    PretrainingSampler,
    StreamingDataLoader,
    load_pretraining_dataset,
    make_pretraining_dataloader,
    make_pretraining_dataset,
)
from .scenes import SceneDataset, find_scenes
from .torchgeo_source import GeoSamplerDataset, build_torchgeo_dataset


__all__ = [
    "GeoSamplerDataset",
    "ImageDecoder",
    "PretrainingDataLoader",
    "PretrainingDataset",
    "PretrainingIterableDataset",
    "PretrainingSampler",
    "SceneDataset",
    "StreamingDataLoader",
    "UnusableSampleError",
    "build_torchgeo_dataset",
    "check_dataset",
    "find_scenes",
    "load_pretraining_dataset",
    "make_pretraining_dataloader",
    "make_pretraining_dataset",
    "seeded_generator",
]
