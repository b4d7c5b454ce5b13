# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Labelled data for the probes: image folders by class, image/mask folders, stratified splits, label masks."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..raster import IMAGE_EXTENSIONS, is_image_file_name, read_raster


# The classes of the GID-MTL5 (PSC5) masks, by pixel value; 0 marks pixels without a label.
GID_MTL5_CLASS_NAMES = ("undefined", "built-up", "farmland", "forest", "meadow", "water")


@dataclass
class ImageFolder:
    """
    A labelled image folder laid out as `<root>/<class name>/<image>`.

    Attributes:
        paths (`list[Path]`):
            The image files, sorted by class, then by file name.
        labels (`list[int]`):
            The class index of each image: its folder's position in `class_names`.
        class_names (`list[str]`):
            The class folders, sorted by name.
    """

    paths: list[Path]
    labels: list[int]
    class_names: list[str]

    @classmethod
    def from_directory(cls, root: str | os.PathLike) -> "ImageFolder":
        """
        Lists the images of `root`, one sub-folder per class.

        Args:
            root (`str` or `os.PathLike`):
                The folder holding one sub-folder per class.
        Returns:
            [`ImageFolder`]: the listing.

        Raises:
            `ValueError`: if `root` is not a folder, or holds no class folder with images.
        """
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder; expected <root>/<class name>/<image> files.")
        paths, labels, class_names = [], [], []
        class_folders = sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        for class_folder in class_folders:
            images = sorted(
                file for file in class_folder.iterdir() if file.is_file() and is_image_file_name(file.name)
            )
            if images:
                paths.extend(images)
                labels.extend([len(class_names)] * len(images))
                class_names.append(class_folder.name)
        if not paths:
            raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under {root}.")
        return cls(paths=paths, labels=labels, class_names=class_names)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class SegmentationFolder:
    """
    A segmentation dataset laid out as `<root>/image/<scene class>/<name>.<ext>` with one label mask per image at
    `<root>/mask/<scene class>/<name>.<ext>` (same scene folder and file stem, any image suffix), as GID-MTL is. The
    scene classes are used to stratify splits.

    Attributes:
        image_paths (`list[Path]`):
            The images, sorted by scene class, then by file name.
        mask_paths (`list[Path]`):
            The mask of each image: one band of integer class ids (see [`read_mask`]).
        scene_labels (`list[int]`):
            The scene class index of each image.
        scene_names (`list[str]`):
            The scene folders, sorted by name.
    """

    image_paths: list[Path]
    mask_paths: list[Path]
    scene_labels: list[int]
    scene_names: list[str]

    @classmethod
    def from_directory(cls, root: str | os.PathLike) -> "SegmentationFolder":
        """
        Pairs the images of `<root>/image` with the masks of `<root>/mask`.

        Raises:
            `ValueError`: if either folder is missing or empty, or an image has no mask.
        """
        root = Path(root)
        images = ImageFolder.from_directory(root / "image")
        masks = ImageFolder.from_directory(root / "mask")
        mask_by_name = {(masks.class_names[label], path.stem): path for path, label in zip(masks.paths, masks.labels)}
        mask_paths, missing = [], []
        for path, label in zip(images.paths, images.labels):
            mask_path = mask_by_name.get((images.class_names[label], path.stem))
            if mask_path is None:
                missing.append(str(path.relative_to(root)))
            mask_paths.append(mask_path)
        if missing:
            raise ValueError(
                f"{len(missing)} images under {root / 'image'} have no mask with the same scene folder and file stem "
                f"under {root / 'mask'}, e.g. {missing[:3]}."
            )
        return cls(
            image_paths=images.paths,
            mask_paths=mask_paths,
            scene_labels=images.labels,
            scene_names=images.class_names,
        )

    def __len__(self) -> int:
        return len(self.image_paths)


def stratified_split(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    train_fraction: float | None = None,
    train_per_class: int | None = None,
    seed: int = 0,
) -> tuple[list[int], list[int]]:
    """
    Splits sample indices into train and test parts with the same class proportions, deterministically for a seed.

    Each class keeps `round(train_fraction * class size)` samples (or `train_per_class`) for training, clipped so that
    every class has at least one sample on each side.

    Args:
        labels (`Sequence[int]`, `np.ndarray` or `torch.Tensor`):
            The class of each sample.
        train_fraction (`float`, *optional*):
            Fraction of each class used for training, in (0, 1). Defaults to 0.5 when `train_per_class` is not given.
        train_per_class (`int`, *optional*):
            Number of training samples per class instead of a fraction.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random draw within each class.

    Returns:
        `tuple[list[int], list[int]]`: the sorted, disjoint train and test indices.

    Raises:
        `ValueError`: if both or invalid split sizes are given, or a class has fewer than 2 samples.
    """
    if train_fraction is not None and train_per_class is not None:
        raise ValueError("Pass either `train_fraction` or `train_per_class`, not both.")
    if train_per_class is None:
        train_fraction = 0.5 if train_fraction is None else train_fraction
        if not 0 < train_fraction < 1:
            raise ValueError(f"`train_fraction` must be in (0, 1), got {train_fraction}.")
    elif train_per_class < 1:
        raise ValueError(f"`train_per_class` must be a positive int, got {train_per_class}.")

    labels = np.asarray(labels)
    classes, class_sizes = np.unique(labels, return_counts=True)
    if class_sizes.min() < 2:
        too_small = classes[class_sizes < 2].tolist()
        raise ValueError(f"Classes {too_small} have fewer than 2 samples: they cannot be on both sides of a split.")
    if train_per_class is None:
        train_sizes = np.rint(train_fraction * class_sizes).astype(int)
    else:
        train_sizes = np.full_like(class_sizes, train_per_class)
    train_sizes = np.clip(train_sizes, 1, class_sizes - 1)

    # A random permutation, then a stable sort by class: each class's samples come together, in random order, and
    # the first `train_size` of each class go to training.
    order = np.random.default_rng(seed).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    class_starts = np.repeat(np.cumsum(class_sizes) - class_sizes, class_sizes)
    rank_in_class = np.arange(len(labels)) - class_starts
    is_train = rank_in_class < np.repeat(train_sizes, class_sizes)
    return np.sort(order[is_train]).tolist(), np.sort(order[~is_train]).tolist()


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """
    Reads a label mask: one band of integer class ids.

    Palette PNGs give their palette indices (the class ids), not the colours, and bilevel ones 0/1; other files are
    read with [`~modeling_pera.raster.read_raster`] and must have one band.

    Returns:
        `np.ndarray`: `(height, width)`, in the file's integer dtype.
    """
    with Image.open(path) as image:
        if image.mode in ("P", "1"):  # class ids, not colours; bilevel masks give 0/1
            return np.asarray(image, dtype=np.uint8 if image.mode == "1" else None)
    pixels = read_raster(path)
    if pixels.shape[0] != 1 or not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(
            f"{path} is not a label mask: expected one band of integer class ids, got {pixels.shape[0]} bands of "
            f"{pixels.dtype}."
        )
    return pixels[0]
