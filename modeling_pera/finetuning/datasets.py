# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The fine-tuning data: image files with class indices (training images augmented by random resized crops and flips,
for any number of bands) and images with label masks, as the `{"pixel_values", "labels"}` examples `Trainer` batches."""

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import preprocess_image_file, processor_size_kwargs, read_mask
from ..raster import read_encoder_input
from ..views import CROP_ASPECT_RATIOS, FLIP_PROBABILITY, random_resized_crop


class RandomResizedCropTransform:
    """
    Training augmentation for classification, for any number of bands: reads an image file (its `bands`, when
    given), takes a random resized crop (area fraction in `crop_scale`, torchvision's sampling rule), flips it
    horizontally and vertically with probability 1/2 each (aerial scenes have no up), and normalises it with the
    processor's statistics. The crops are those of PerA's pretraining ([`random_resized_crop`]).

    Random draws come from torch's global generator, which `Trainer` seeds and DataLoader workers derive from.

    Args:
        processor:
            The model's image processor: gives `image_mean`, `image_std`, `rescale_factor` and `offset` (0 when it has
            none, as stock processors).
        image_size (`int`):
            Side of the square output.
        crop_scale (`tuple[float, float]`, *optional*, defaults to `(0.08, 1.0)`):
            Range of the crop's area fraction.
        bands (`Sequence[int]`, *optional*):
            The file's bands to use, in the encoder's order (0-based); all of them by default.
    """

    def __init__(
        self,
        processor: Any,
        image_size: int,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        bands: Sequence[int] | None = None,
    ):
        self.num_channels = len(processor.image_mean)
        self.image_size = image_size
        self.crop_scale = tuple(crop_scale)
        self.bands = bands
        self.offset = float(getattr(processor, "offset", 0.0))
        self.rescale_factor = float(processor.rescale_factor) if processor.do_rescale else 1.0
        self.image_mean = torch.tensor(processor.image_mean if processor.do_normalize else [0.0] * self.num_channels)
        self.image_std = torch.tensor(processor.image_std if processor.do_normalize else [1.0] * self.num_channels)

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        image = torch.from_numpy(read_encoder_input(path, self.num_channels, self.bands))
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        crop = random_resized_crop(
            image, self.image_size, self.crop_scale, CROP_ASPECT_RATIOS, FLIP_PROBABILITY, generator
        )
        crop = (crop - self.offset) * self.rescale_factor
        return (crop - self.image_mean.view(-1, 1, 1)) / self.image_std.view(-1, 1, 1)


class ImageClassificationFiles(torch.utils.data.Dataset):
    """Image files and their class indices, as the `{"pixel_values", "labels"}` examples `Trainer` batches."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int],
        transform: Callable[[str | os.PathLike], torch.Tensor],
    ):
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"pixel_values": self.transform(self.paths[index]), "labels": self.labels[index]}


class SegmentationFiles(torch.utils.data.Dataset):
    """
    Images and their label masks, as `{"pixel_values", "labels"}` examples: the image preprocessed by `processor` to
    `image_size`, the mask resized to the same size (nearest neighbour). With `train`, both are flipped horizontally
    and vertically with probability 1/2 each, with torch's global generator.
    """

    def __init__(
        self,
        image_paths: Sequence[str | os.PathLike],
        mask_paths: Sequence[str | os.PathLike],
        processor: Any,
        image_size: int,
        train: bool = False,
        bands: Sequence[int] | None = None,
    ):
        self.image_paths = list(image_paths)
        self.mask_paths = list(mask_paths)
        self.processor = processor
        self.image_size = image_size
        self.train = train
        self.bands = bands

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pixel_values = preprocess_image_file(
            self.image_paths[index],
            self.processor,
            bands=self.bands,
            **processor_size_kwargs(self.processor, self.image_size),
        )
        mask = torch.from_numpy(read_mask(self.mask_paths[index]).astype(np.int64))
        mask = F.interpolate(mask[None, None].float(), size=pixel_values.shape[-2:], mode="nearest-exact")[0, 0]
        if self.train:
            flip_dims = [dim for dim in (-1, -2) if torch.rand(()) < 0.5]
            pixel_values, mask = pixel_values.flip(flip_dims), mask.flip(flip_dims)
        return {"pixel_values": pixel_values, "labels": mask.long()}
