# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Frozen-encoder evaluation: DINO-style weighted kNN and a linear probe on labelled image folders, and a linear
segmentation probe on image/mask folders.

Any `AutoModel`-loadable vision encoder can be evaluated (PerA, ViT, ViT-MAE, DINOv2, ...): images are read with
[`~modeling_pera.raster.read_raster`] (any band count, any pixel type), preprocessed by the model's image processor,
encoded once, and the pooled features are classified by a weighted k-nearest-neighbour vote and, optionally, by a
logistic regression; the patch features are segmented by a 1x1 convolution scored by mIoU. This module is part of the
installed package, not of the Hub code files.

The metrics are computed here rather than with `evaluate`, whose `evaluate.load("accuracy")` downloads the metric
script from the Hub and fails offline.
"""

import contextlib
import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .data import IMAGE_EXTENSIONS
from .raster import read_raster


POOLINGS = ("cls", "mean", "cls+mean")
# The `pooling` of `extract_features` that keeps one feature vector per patch, as a map `(dim, rows, columns)`.
PATCH_FEATURES = "patches"
# The classes of the GID-MTL5 (PSC5) masks, by pixel value; 0 marks pixels without a label.
GID_MTL5_CLASS_NAMES = ("undefined", "built-up", "farmland", "forest", "meadow", "water")
# Weight decays of the linear probe's sweep, for features standardised to zero mean and unit variance.
LINEAR_PROBE_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


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
    def from_directory(cls, root: str | os.PathLike, suffixes: Sequence[str] = IMAGE_EXTENSIONS) -> "ImageFolder":
        """
        Lists the images of `root`, one sub-folder per class.

        Args:
            root (`str` or `os.PathLike`):
                The folder holding one sub-folder per class.
            suffixes (`Sequence[str]`, *optional*, defaults to `IMAGE_EXTENSIONS`):
                File name endings of the images to keep (case-insensitive); other files are ignored, as are hidden
                files and folders.

        Returns:
            [`ImageFolder`]: the listing.

        Raises:
            `ValueError`: if `root` is not a folder, or holds no class folder with images.
        """
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder; expected <root>/<class name>/<image> files.")
        suffixes = tuple(suffix.lower() for suffix in suffixes)
        paths, labels, class_names = [], [], []
        class_folders = sorted(entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        for class_folder in class_folders:
            images = sorted(
                file
                for file in class_folder.iterdir()
                if file.is_file() and not file.name.startswith(".") and file.name.lower().endswith(suffixes)
            )
            if images:
                paths.extend(images)
                labels.extend([len(class_names)] * len(images))
                class_names.append(class_folder.name)
        if not paths:
            raise ValueError(f"No images ({', '.join(suffixes)}) in class folders under {root}.")
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
        mask_by_name = {
            (masks.class_names[label], path.stem): path for path, label in zip(masks.paths, masks.labels)
        }
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


class _ImageFiles(torch.utils.data.Dataset):
    """Reads and preprocesses one image file per item, so that a `DataLoader` can do it in worker processes."""

    def __init__(self, paths: Sequence[str | os.PathLike], processor: Any, processor_kwargs: dict[str, Any]):
        self.paths = list(paths)
        self.processor = processor
        self.processor_kwargs = processor_kwargs

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return preprocess_image_file(self.paths[index], self.processor, **self.processor_kwargs)


def preprocess_image_file(path: str | os.PathLike, processor: Any, **processor_kwargs) -> torch.Tensor:
    """
    Reads an image file with [`~modeling_pera.raster.read_raster`] and preprocesses it.

    Args:
        path (`str` or `os.PathLike`):
            A JPEG, PNG or (Geo)TIFF file with any number of bands.
        processor:
            An image processor accepting channels-first arrays, e.g. [`PeraImageProcessor`] or any transformers
            image processor (those take 1 or 3 bands).
        processor_kwargs:
            Per-call options of the processor, e.g. `size`.

    Returns:
        `torch.Tensor`: the pixel values, `(bands, height, width)`.
    """
    # Stock processors wrap the array with torch.from_numpy, which warns on the read-only arrays PIL gives.
    pixels = np.require(read_raster(path), requirements=("C_CONTIGUOUS", "WRITEABLE"))
    inputs = processor(pixels, return_tensors="pt", input_data_format="channels_first", **processor_kwargs)
    return inputs["pixel_values"][0]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """
    Reads a label mask: one band of integer class ids.

    Palette PNGs give their palette indices (the class ids), not the colours; other files are read with
    [`~modeling_pera.raster.read_raster`] and must have one band.

    Returns:
        `np.ndarray`: `(height, width)`, in the file's integer dtype.
    """
    with Image.open(path) as image:
        if image.mode == "P":
            return np.asarray(image)
    pixels = read_raster(path)
    if pixels.shape[0] != 1 or not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(
            f"{path} is not a label mask: expected one band of integer class ids, got {pixels.shape[0]} bands of "
            f"{pixels.dtype}."
        )
    return pixels[0]


def _accepts_argument(model: nn.Module, name: str) -> bool:
    """Whether `model.forward` has a parameter called `name` (not just `**kwargs`)."""
    return name in inspect.signature(model.forward).parameters


@contextlib.contextmanager
def _evaluation_mode(model: nn.Module) -> Iterator[None]:
    """
    Puts `model` in eval mode and, for masked-image-modelling encoders such as ViT-MAE (whose forward masks
    `config.mask_ratio` of the patches at random, even in eval mode), sets `config.mask_ratio` to 0 so that every patch
    is encoded. The training flag and the mask ratio are restored on exit.
    """
    was_training = model.training
    config = getattr(model, "config", None)
    mask_ratio = getattr(config, "mask_ratio", None)
    model.eval()
    if mask_ratio is not None:
        config.mask_ratio = 0.0
    try:
        yield
    finally:
        model.train(was_training)
        if mask_ratio is not None:
            config.mask_ratio = mask_ratio


def _forward_kwargs(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, Any]:
    """Options that make stock encoders see the whole image at any size, in raster order."""
    kwargs = {}
    # ViT and ViT-MAE refuse images of another size than their config's unless asked to interpolate.
    if _accepts_argument(model, "interpolate_pos_encoding"):
        kwargs["interpolate_pos_encoding"] = True
    # ViT-MAE shuffles the patches by argsort(noise) even with mask_ratio 0: increasing noise keeps raster order.
    if _accepts_argument(model, "noise") and getattr(getattr(model, "config", None), "mask_ratio", None) is not None:
        num_patches = _num_patches(model, pixel_values)
        kwargs["noise"] = torch.arange(num_patches, device=pixel_values.device).expand(pixel_values.shape[0], -1)
    return kwargs


def _patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int] | None:
    """The `(rows, columns)` of patches of a patch-based encoder for `pixel_values`, or `None` without
    `config.patch_size`."""
    patch_size = getattr(getattr(model, "config", None), "patch_size", None)
    if patch_size is None:
        return None
    patch_height, patch_width = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    return pixel_values.shape[-2] // patch_height, pixel_values.shape[-1] // patch_width


def _num_patches(model: nn.Module, pixel_values: torch.Tensor) -> int | None:
    """The number of patches of a patch-based encoder for `pixel_values`, or `None` without `config.patch_size`."""
    grid = _patch_grid(model, pixel_values)
    return None if grid is None else grid[0] * grid[1]


def pool_encoder_outputs(outputs: Any, pooling: str, num_patches: int | None) -> torch.Tensor:
    """
    Turns an encoder's outputs into one feature vector per image.

    The CLS token is `last_hidden_state[:, 0]` when the sequence holds more tokens than patches (CLS, and register
    tokens if any, come first: ViT, ViT-MAE, DINOv2, PerA): the CLS token after the final norm, which DINO-style
    evaluations use, rather than `pooler_output`, which ViT computes with an extra dense + tanh layer. Encoders
    without a CLS token (Swin, ConvNeXt, ...) use their `pooler_output` for `"cls"`, or the token mean if they have
    none.

    Args:
        outputs:
            The model's output, with `last_hidden_state` (`(batch, tokens, dim)` or a `(batch, dim, height, width)`
            feature map) and optionally `pooler_output`.
        pooling (`str`):
            `"cls"`, `"mean"` (mean of the patch tokens) or `"cls+mean"` (both, concatenated).
        num_patches (`int`, *optional*):
            The number of patch tokens, to tell them from the CLS and register tokens.

    Returns:
        `torch.Tensor`: `(batch, dim)`, or `(batch, 2 * dim)` for `"cls+mean"`.
    """
    hidden_states = outputs.last_hidden_state
    if hidden_states.ndim == 4:  # a convolutional feature map
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    num_prefix_tokens = hidden_states.shape[1] - num_patches if num_patches is not None else 0
    has_cls_token = num_prefix_tokens > 0
    patch_mean = hidden_states[:, num_prefix_tokens if has_cls_token else 0 :].mean(dim=1)
    if pooling == "mean":
        return patch_mean
    if has_cls_token:
        global_feature = hidden_states[:, 0]
    elif getattr(outputs, "pooler_output", None) is not None:
        global_feature = outputs.pooler_output.flatten(1)
    else:
        global_feature = patch_mean
    if pooling == "cls":
        return global_feature
    return torch.cat((global_feature, patch_mean), dim=1)


def patch_feature_map(outputs: Any, grid_size: tuple[int, int] | None) -> torch.Tensor:
    """
    Turns an encoder's outputs into a map of patch features, for dense probes.

    Args:
        outputs:
            The model's output, with `last_hidden_state`: tokens `(batch, tokens, dim)` whose last
            `rows * columns` are the patches in raster order (CLS and register tokens, if any, come first), or a
            convolutional feature map `(batch, dim, height, width)`, returned as it is.
        grid_size (`tuple[int, int]`, *optional*):
            The `(rows, columns)` of patches; required for token outputs.

    Returns:
        `torch.Tensor`: `(batch, dim, rows, columns)`.
    """
    hidden_states = outputs.last_hidden_state
    if hidden_states.ndim == 4:
        return hidden_states
    if grid_size is None or hidden_states.shape[1] < grid_size[0] * grid_size[1]:
        raise ValueError(
            f"Cannot lay the {hidden_states.shape[1]} output tokens out on a patch grid of {grid_size}: patch feature "
            "maps need an encoder with `config.patch_size` that returns one token per patch (plain ViTs), or a "
            "convolutional feature map."
        )
    rows, columns = grid_size
    patch_tokens = hidden_states[:, hidden_states.shape[1] - rows * columns :]
    return patch_tokens.reshape(len(patch_tokens), rows, columns, -1).permute(0, 3, 1, 2)


def _weights_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameter values (sum and sum of squares of each tensor), for cache keys."""
    with torch.no_grad():
        statistics = [
            torch.stack((tensor.double().sum(), tensor.double().square().sum()))
            for tensor in model.state_dict().values()
            if tensor.is_floating_point()
        ]
    values = torch.stack(statistics).cpu().numpy() if statistics else np.zeros(0)
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def _processor_description(processor: Any) -> str:
    to_json_string = getattr(processor, "to_json_string", None)
    return to_json_string() if to_json_string is not None else repr(processor)


def _features_cache_key(
    model: nn.Module,
    processor: Any,
    paths: Sequence[str | os.PathLike],
    pooling: str,
    processor_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """What the features depend on: the model (name and weights), the preprocessing, the pooling and the files."""
    return {
        "model": str(getattr(model, "name_or_path", type(model).__name__)),
        "weights": _weights_fingerprint(model),
        "processor": _processor_description(processor),
        "processor_kwargs": json.dumps(processor_kwargs, sort_keys=True, default=str),
        "pooling": pooling,
        "files": [(str(Path(path).resolve()), Path(path).stat().st_size) for path in paths],
    }


def extract_features(
    model: nn.Module,
    processor: Any,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    pooling: str = "cls",
    cache_path: str | os.PathLike | None = None,
    processor_kwargs: dict[str, Any] | None = None,
    num_workers: int = 0,
    progress_bar: bool = True,
) -> torch.Tensor:
    """
    Encodes image files with a frozen vision encoder.

    Images are read with [`~modeling_pera.raster.read_raster`], preprocessed one by one by `processor` (in
    `num_workers` worker processes), and encoded in batches under `torch.inference_mode()`, with bf16 autocast on CUDA.
    The model is put in eval mode for the call. Encoders that mask patches at random (ViT-MAE) are run with
    `config.mask_ratio = 0` (restored afterwards) and `noise` set so that every patch is encoded, in raster order.

    Args:
        model (`nn.Module`):
            A vision encoder returning `last_hidden_state` (and optionally `pooler_output`), e.g. [`PeraModel`],
            `ViTModel`, `ViTMAEModel` or `Dinov2Model`.
        processor:
            Its image processor (see [`preprocess_image_file`]).
        paths (`Sequence[str | os.PathLike]`):
            The image files.
        batch_size (`int`, *optional*, defaults to 64):
            Images per forward pass.
        device (`str` or `torch.device`, *optional*):
            Where to run the model; defaults to the device the model is on. The model is moved there.
        pooling (`str`, *optional*, defaults to `"cls"`):
            `"cls"`, `"mean"` or `"cls+mean"` (see [`pool_encoder_outputs`]), or `"patches"` for a map of patch
            features per image (see [`patch_feature_map`]).
        cache_path (`str` or `os.PathLike`, *optional*):
            A file to save the features to with `torch.save`, together with a key (model name, a fingerprint of its
            weights, the preprocessing, the pooling and the files). When the file exists and its key matches, the
            features are loaded from it and the model is not run.
        processor_kwargs (`dict`, *optional*):
            Per-call options of the processor, e.g. `{"size": {"height": 224, "width": 224}}`.
        num_workers (`int`, *optional*, defaults to 0):
            Processes reading and preprocessing images; 0 reads them in the main process.
        progress_bar (`bool`, *optional*, defaults to `True`):
            Whether to show a tqdm progress bar with the rate in images per second.

    Returns:
        `torch.Tensor`: float32 features on the CPU, `(len(paths), dim)`, or `(len(paths), dim, rows, columns)` for
        `"patches"`, in the order of `paths`.
    """
    if pooling not in (*POOLINGS, PATCH_FEATURES):
        raise ValueError(f"`pooling` must be one of {(*POOLINGS, PATCH_FEATURES)}, got {pooling!r}.")
    if not paths:
        raise ValueError("No image paths were given.")
    processor_kwargs = processor_kwargs or {}
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)

    cache_key = None
    if cache_path is not None:
        cache_key = _features_cache_key(model, processor, paths, pooling, processor_kwargs)
        if os.path.isfile(cache_path):
            cached = torch.load(cache_path, weights_only=True)
            if cached.get("key") == cache_key:
                return cached["features"]

    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, processor, processor_kwargs),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    features = []
    with (
        _evaluation_mode(model),
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        tqdm(total=len(paths), unit="img", desc="Extracting features", disable=not progress_bar) as progress,
    ):
        for pixel_values in loader:
            pixel_values = pixel_values.to(device, non_blocking=True)
            outputs = model(pixel_values=pixel_values, **_forward_kwargs(model, pixel_values))
            if pooling == PATCH_FEATURES:
                pooled = patch_feature_map(outputs, _patch_grid(model, pixel_values))
            else:
                pooled = pool_encoder_outputs(outputs, pooling, _num_patches(model, pixel_values))
            # Kept on the device until the end: a copy to the CPU per batch would synchronise every step.
            features.append(pooled.float())
            progress.update(len(pixel_values))
    features = torch.cat(features).cpu()

    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": cache_key, "features": features}, cache_path)
    return features


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor | Sequence[int],
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """
    Weighted k-nearest-neighbour classification, as in DINO's evaluation.

    Features are L2-normalised; each test sample's `k` most cosine-similar training samples vote for their class with
    weight `exp(similarity / temperature)`, and the class with the largest summed weight wins (the lowest class index
    on a tie). `temperature=float("inf")` gives a plain majority vote.

    Args:
        train_features (`torch.Tensor`):
            `(num_train, dim)`.
        train_labels (`torch.Tensor` or `Sequence[int]`):
            `(num_train,)` class indices.
        test_features (`torch.Tensor`):
            `(num_test, dim)`.
        num_classes (`int`):
            Number of classes.
        k (`int`, *optional*, defaults to 20):
            Number of neighbours; at most `num_train` are used.
        temperature (`float`, *optional*, defaults to 0.07):
            Softness of the vote weights: low values let the nearest neighbours dominate.
        chunk_size (`int`, *optional*, defaults to 1024):
            Test samples per similarity matrix, to bound memory to `chunk_size * num_train` values.

    Returns:
        `torch.Tensor`: `(num_test,)` predicted class indices, on the device of `train_features`.
    """
    if k < 1:
        raise ValueError(f"`k` must be a positive int, got {k}.")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be positive, got {temperature}.")
    device = train_features.device
    train_features = F.normalize(train_features.float(), dim=1)
    test_features = F.normalize(test_features.float().to(device), dim=1)
    train_labels = torch.as_tensor(train_labels, dtype=torch.long, device=device)
    k = min(k, len(train_features))

    predictions = []
    for test_chunk in test_features.split(chunk_size):
        similarities, neighbours = (test_chunk @ train_features.T).topk(k, dim=1)
        # Subtracting each row's top similarity leaves the vote unchanged and keeps exp() finite at low temperatures.
        weights = ((similarities - similarities[:, :1]) / temperature).exp()
        votes = torch.zeros(len(test_chunk), num_classes, device=device)
        votes.scatter_add_(1, train_labels[neighbours], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def _fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iterations: int
) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS, with an L2 penalty `weight_decay / 2 * ||W||^2`."""
    classifier = nn.Linear(features.shape[1], num_classes, device=features.device)
    # The problem is convex: starting from zero makes the fit deterministic.
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(
        classifier.parameters(), lr=1.0, max_iter=max_iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(features), labels) + 0.5 * weight_decay * classifier.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor | Sequence[int],
    test_features: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float] = LINEAR_PROBE_WEIGHT_DECAYS,
    validation_fraction: float = 0.2,
    seed: int = 0,
    max_iterations: int = 500,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """
    A linear probe: logistic regression on frozen, standardised features, with the weight decay chosen on a
    validation split.

    A stratified `validation_fraction` of the training samples (drawn with `seed`) is held out; a classifier is fitted
    on the rest for each weight decay, the one with the best validation accuracy is kept (the largest weight decay on
    a tie), and the classifier is refitted with it on all training samples. Features are standardised with the mean
    and standard deviation of the samples each classifier is fitted on.

    Args:
        train_features (`torch.Tensor`):
            `(num_train, dim)`.
        train_labels (`torch.Tensor` or `Sequence[int]`):
            `(num_train,)` class indices; each class needs at least 2 samples.
        test_features (`torch.Tensor`):
            `(num_test, dim)`.
        num_classes (`int`):
            Number of classes.
        weight_decays (`Sequence[float]`, *optional*, defaults to `LINEAR_PROBE_WEIGHT_DECAYS`):
            The L2 penalties to try.
        validation_fraction (`float`, *optional*, defaults to 0.2):
            Fraction of each class held out to choose the weight decay.
        seed (`int`, *optional*, defaults to 0):
            Seed of the validation split.
        max_iterations (`int`, *optional*, defaults to 500):
            L-BFGS iterations per fit.

    Returns:
        `tuple[torch.Tensor, dict]`: the `(num_test,)` predicted class indices, and the chosen hyper-parameters:
        `{"weight_decay": float, "validation_accuracy": {weight_decay: accuracy}}`.
    """
    device = train_features.device
    train_features = train_features.float()
    test_features = test_features.float().to(device)
    train_labels = torch.as_tensor(train_labels, dtype=torch.long, device=device)

    def fit_and_predict(fit_index: torch.Tensor, predict_features: torch.Tensor, weight_decay: float) -> torch.Tensor:
        fit_features = train_features[fit_index]
        mean, std = fit_features.mean(dim=0), fit_features.std(dim=0).clamp_min(1e-6)
        # The optimiser needs gradients, which `torch.inference_mode` (e.g. a caller's) would switch off.
        with torch.inference_mode(False), torch.enable_grad():
            classifier = _fit_logistic_regression(
                (fit_features - mean) / std, train_labels[fit_index], num_classes, weight_decay, max_iterations
            )
            with torch.no_grad():
                return classifier((predict_features - mean) / std).argmax(dim=1)

    fit_index, validation_index = (
        torch.tensor(indices, device=device)
        for indices in stratified_split(train_labels.cpu(), train_fraction=1 - validation_fraction, seed=seed)
    )
    validation_accuracy = {}
    for weight_decay in sorted(weight_decays, reverse=True):
        predictions = fit_and_predict(fit_index, train_features[validation_index], weight_decay)
        validation_accuracy[weight_decay] = (predictions == train_labels[validation_index]).float().mean().item()
    best_weight_decay = max(validation_accuracy, key=validation_accuracy.get)

    all_train = torch.arange(len(train_features), device=device)
    test_predictions = fit_and_predict(all_train, test_features, best_weight_decay)
    return test_predictions, {"weight_decay": best_weight_decay, "validation_accuracy": validation_accuracy}


def classification_report(
    predictions: torch.Tensor | Sequence[int],
    labels: torch.Tensor | Sequence[int],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """
    Top-1 accuracy and per-class accuracy (recall) of class predictions.

    Args:
        predictions (`torch.Tensor` or `Sequence[int]`):
            Predicted class indices.
        labels (`torch.Tensor` or `Sequence[int]`):
            True class indices.
        class_names (`Sequence[str]`):
            The name of each class index.

    Returns:
        `dict`: `top1_accuracy` (fraction of correct predictions), `mean_per_class_accuracy` (mean over the classes
        present in `labels`), `per_class_accuracy` (`{class name: fraction of its samples predicted correctly}`,
        `None` for classes absent from `labels`), `num_samples` and `num_correct`.
    """
    predictions = torch.as_tensor(predictions, dtype=torch.long).cpu()
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if predictions.shape != labels.shape:
        raise ValueError(f"`predictions` {tuple(predictions.shape)} and `labels` {tuple(labels.shape)} differ.")
    num_classes = len(class_names)
    correct = predictions == labels
    samples_per_class = torch.bincount(labels, minlength=num_classes)
    correct_per_class = torch.bincount(labels[correct], minlength=num_classes)
    present = samples_per_class > 0
    per_class_accuracy = correct_per_class.double() / samples_per_class.clamp_min(1)
    return {
        "top1_accuracy": correct.double().mean().item(),
        "mean_per_class_accuracy": per_class_accuracy[present].mean().item(),
        "per_class_accuracy": {
            name: accuracy if is_present else None
            for name, accuracy, is_present in zip(class_names, per_class_accuracy.tolist(), present.tolist())
        },
        "num_samples": len(labels),
        "num_correct": int(correct.sum()),
    }


def segmentation_confusion_matrix(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """
    Pixel counts of every (true class, predicted class) pair.

    Args:
        predictions (`torch.Tensor`):
            Predicted class ids, of any integer dtype and the shape of `labels`.
        labels (`torch.Tensor`):
            True class ids, e.g. masks `(num_images, height, width)`.
        num_classes (`int`):
            Number of classes; every id must lie in `[0, num_classes)`.
        ignore_index (`int`, *optional*):
            A label whose pixels are left out (unlabelled pixels), whatever was predicted for them.

    Returns:
        `torch.Tensor`: int64 `(num_classes, num_classes)`, rows indexed by the true class and columns by the
        prediction.
    """
    if predictions.shape != labels.shape:
        raise ValueError(f"`predictions` {tuple(predictions.shape)} and `labels` {tuple(labels.shape)} differ.")
    labels = labels.flatten().long()
    predictions = predictions.flatten().long().to(labels.device)
    if ignore_index is not None:
        labelled = labels != ignore_index
        labels, predictions = labels[labelled], predictions[labelled]
    for name, ids in (("labels", labels), ("predictions", predictions)):
        if len(ids) and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(
                f"`{name}` holds class ids outside [0, {num_classes}) (from {ids.min().item()} to {ids.max().item()}); "
                "pass the right `num_classes`, or the unlabelled value as `ignore_index`."
            )
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, num_classes)


def segmentation_report(
    confusion_matrix: torch.Tensor, class_names: Sequence[str], ignore_index: int | None = None
) -> dict[str, Any]:
    """
    Intersection over union per class, its mean (mIoU) and pixel accuracy, from a [`segmentation_confusion_matrix`].

    The IoU of class c is `TP / (TP + FP + FN)` over all pixels of the dataset (not averaged per image), as in
    `evaluate`'s `mean_iou`. The `ignore_index` class is not reported: its pixels are not counted, and predicting it
    on a labelled pixel is a false negative of the pixel's class. A class that is neither present nor predicted has no
    IoU and is left out of the mean.

    Args:
        confusion_matrix (`torch.Tensor`):
            `(num_classes, num_classes)` pixel counts, rows by true class, columns by prediction.
        class_names (`Sequence[str]`):
            The name of each class id.
        ignore_index (`int`, *optional*):
            The unlabelled class id, left out of the report.

    Returns:
        `dict`: `mean_iou`, `per_class_iou` (`{class name: IoU}`, `None` for classes neither present nor predicted),
        `pixel_accuracy` (fraction of labelled pixels predicted correctly) and `num_pixels` (labelled pixels).
    """
    confusion_matrix = confusion_matrix.double().cpu()
    if confusion_matrix.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"The confusion matrix {tuple(confusion_matrix.shape)} does not match the {len(class_names)} class names."
        )
    true_positives = confusion_matrix.diagonal()
    union = confusion_matrix.sum(dim=0) + confusion_matrix.sum(dim=1) - true_positives
    reported = [index for index in range(len(class_names)) if index != ignore_index]
    per_class_iou = {
        class_names[index]: (true_positives[index] / union[index]).item() if union[index] > 0 else None
        for index in reported
    }
    ious = [iou for iou in per_class_iou.values() if iou is not None]
    num_pixels = confusion_matrix[reported].sum()
    return {
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "per_class_iou": per_class_iou,
        "pixel_accuracy": (true_positives[reported].sum() / num_pixels).item() if num_pixels > 0 else float("nan"),
        "num_pixels": int(num_pixels),
    }


def segmentation_probe(
    train_features: torch.Tensor,
    train_masks: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = 0,
    epochs: int = 20,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """
    A linear segmentation probe: a 1x1 convolution on frozen patch features, its logits upsampled bilinearly to the
    mask size, trained with pixel-wise cross-entropy.

    Features are standardised per channel with the training statistics (a frozen batch norm). The head starts at zero
    and is trained with AdamW and a cosine learning-rate decay over `epochs` passes in a `seed`-shuffled order;
    pixels labelled `ignore_index` do not contribute to the loss and the class is never predicted.

    Args:
        train_features (`torch.Tensor`):
            `(num_train, dim, rows, columns)` patch features (see [`patch_feature_map`]).
        train_masks (`torch.Tensor`):
            `(num_train, height, width)` integer class ids.
        test_features (`torch.Tensor`):
            `(num_test, dim, rows, columns)`.
        num_classes (`int`):
            Number of class ids, including `ignore_index`.
        ignore_index (`int`, *optional*, defaults to 0):
            The unlabelled class id, or `None`.
        epochs (`int`, *optional*, defaults to 20):
            Passes over the training images.
        learning_rate (`float`, *optional*, defaults to 1e-2):
            Peak learning rate of AdamW.
        weight_decay (`float`, *optional*, defaults to 1e-4):
            Weight decay of AdamW.
        batch_size (`int`, *optional*, defaults to 32):
            Images per step.
        seed (`int`, *optional*, defaults to 0):
            Seed of the shuffling.

    Returns:
        `torch.Tensor`: `(num_test, height, width)` predicted class ids, in the dtype of `train_masks`, on the CPU.
    """
    device = train_features.device
    mask_size = tuple(train_masks.shape[-2:])
    mean = train_features.float().mean(dim=(0, 2, 3), keepdim=True)
    std = train_features.float().std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    head = nn.Conv2d(train_features.shape[1], num_classes, kernel_size=1, device=device)
    # A convex problem: starting from zero makes the fit independent of the initialisation.
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)

    def upsampled_logits(features: torch.Tensor) -> torch.Tensor:
        logits = head((features.to(device).float() - mean) / std)
        return F.interpolate(logits, size=mask_size, mode="bilinear", align_corners=False)

    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train_features) / batch_size)
    # The optimiser needs gradients, which `torch.inference_mode` (e.g. a caller's) would switch off.
    with torch.inference_mode(False), torch.enable_grad():
        optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
        for _ in range(epochs):
            for batch in torch.randperm(len(train_features), generator=generator).split(batch_size):
                labels = train_masks[batch].to(device).long()
                # summed and divided by the labelled pixels: a batch without any gives a zero loss, not NaN
                loss = F.cross_entropy(
                    upsampled_logits(train_features[batch]),
                    labels,
                    ignore_index=-100 if ignore_index is None else ignore_index,
                    reduction="sum",
                )
                num_labelled = labels.numel() if ignore_index is None else (labels != ignore_index).sum()
                optimizer.zero_grad()
                (loss / max(int(num_labelled), 1)).backward()
                optimizer.step()
                scheduler.step()

    predictions = []
    with torch.no_grad():
        for features in test_features.split(batch_size):
            logits = upsampled_logits(features)
            if ignore_index is not None and 0 <= ignore_index < num_classes:
                logits[:, ignore_index] = float("-inf")
            predictions.append(logits.argmax(dim=1).to(train_masks.dtype).cpu())
    return torch.cat(predictions)


def load_encoder(
    model_name_or_path: str | os.PathLike, random_init: bool = False, seed: int = 0, trust_remote_code: bool = False
) -> tuple[nn.Module, Any]:
    """
    Loads a vision encoder and its image processor with the Auto classes.

    Args:
        model_name_or_path (`str` or `os.PathLike`):
            A Hub id or a local folder with a config, weights (unless `random_init`) and a preprocessor config.
        random_init (`bool`, *optional*, defaults to `False`):
            Build the same architecture from the config with fresh random weights (the "random-init encoder"
            baseline) instead of loading the weights.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random weights when `random_init`; the global random state is left untouched.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run the Python code the folder or repository ships (its `auto_map`), for models other than PerA: only for
            code you trust. PerA models load without it (this package registers their classes).

    Returns:
        `tuple[nn.Module, Any]`: the model, in eval mode, and the processor.
    """
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        if random_init:
            config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        else:
            model = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"{model_name_or_path} is not a PerA model and ships its own Python code, which is not run by default. "
            "Read it first; pass --trust_remote_code (trust_remote_code=True) only if you trust it."
        ) from error
    return model.eval(), processor


def _processor_kwargs(processor: Any, image_size: int | None) -> dict[str, Any]:
    """Per-call processor options giving square model inputs of side `image_size` (the processor's size if `None`)."""
    if image_size is None:
        return {}
    processor_kwargs = {"size": {"height": image_size, "width": image_size}}
    # Stock processors may center-crop after resizing (e.g. DINOv2's 256 -> 224): crop to the same size.
    if getattr(processor, "do_center_crop", False):
        processor_kwargs["crop_size"] = {"height": image_size, "width": image_size}
    return processor_kwargs


def _encoder_description(model: nn.Module, model_name_or_path: str | os.PathLike, random_init: bool) -> dict[str, Any]:
    return {
        "model": str(model_name_or_path),
        "model_type": getattr(model.config, "model_type", type(model).__name__),
        "random_init": random_init,
        "num_parameters": sum(parameter.numel() for parameter in model.parameters()),
    }


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _encode_files(
    model_name_or_path: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    random_init: bool,
    seed: int,
    image_size: int | None,
    pooling: str,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    cache_path: str | os.PathLike | None,
    progress_bar: bool,
    trust_remote_code: bool,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Loads the encoder and encodes `paths`: the features and the setup entries of the results (encoder, input size,
    encoding time)."""
    model, processor = load_encoder(
        model_name_or_path, random_init=random_init, seed=seed, trust_remote_code=trust_remote_code
    )
    processor_kwargs = _processor_kwargs(processor, image_size)
    input_size = list(preprocess_image_file(paths[0], processor, **processor_kwargs).shape)
    start = time.perf_counter()
    features = extract_features(
        model,
        processor,
        paths,
        batch_size=batch_size,
        device=device,
        pooling=pooling,
        cache_path=cache_path,
        processor_kwargs=processor_kwargs,
        num_workers=num_workers,
        progress_bar=progress_bar,
    )
    encoding_seconds = time.perf_counter() - start
    setup = {
        **_encoder_description(model, model_name_or_path, random_init),
        "input_size": input_size,
        "encoding_seconds": encoding_seconds,
        "images_per_second": len(paths) / encoding_seconds,
    }
    return features, setup


def evaluate_encoder(
    model_name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    k: int = 20,
    temperature: float = 0.07,
    train_fraction: float | None = None,
    train_per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    image_size: int | None = None,
    pooling: str = "cls",
    run_linear_probe: bool = False,
    random_init: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    cache_path: str | os.PathLike | None = None,
    progress_bar: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """
    Evaluates a frozen vision encoder on a labelled image folder with weighted kNN and, optionally, a linear probe.

    The model and processor are loaded with [`load_encoder`], every image is encoded once with
    [`extract_features`], the images are split with [`stratified_split`], and the test part is classified with
    [`knn_classify`] (and [`linear_probe`]) fitted on the train part.

    Args:
        model_name_or_path (`str` or `os.PathLike`):
            Any `AutoModel`-loadable vision encoder with an image processor, e.g. a PerA checkpoint folder.
        data_dir (`str` or `os.PathLike`):
            A folder `<data_dir>/<class name>/<image>` (see [`ImageFolder`]).
        k (`int`, *optional*, defaults to 20):
            Neighbours of the kNN vote.
        temperature (`float`, *optional*, defaults to 0.07):
            Temperature of the kNN vote weights.
        train_fraction (`float`, *optional*):
            Fraction of each class used for training (0.5 when neither this nor `train_per_class` is given).
        train_per_class (`int`, *optional*):
            Training images per class instead of a fraction.
        seed (`int`, *optional*, defaults to 0):
            Seed of the split, of the linear probe's validation split and of the random weights.
        batch_size (`int`, *optional*, defaults to 64):
            Images per forward pass.
        image_size (`int`, *optional*):
            Side of the square images given to the model; defaults to the processor's size.
        pooling (`str`, *optional*, defaults to `"cls"`):
            `"cls"`, `"mean"` or `"cls+mean"`.
        run_linear_probe (`bool`, *optional*, defaults to `False`):
            Whether to also fit a linear probe.
        random_init (`bool`, *optional*, defaults to `False`):
            Evaluate the architecture with random weights instead of the trained ones.
        device (`str` or `torch.device`, *optional*):
            Defaults to CUDA when available, else the CPU.
        num_workers (`int`, *optional*, defaults to 0):
            Processes reading images.
        cache_path (`str` or `os.PathLike`, *optional*):
            Feature cache file (see [`extract_features`]).
        progress_bar (`bool`, *optional*, defaults to `True`):
            Whether to show a progress bar while encoding.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to [`load_encoder`]: run the code a non-PerA model ships.

    Returns:
        `dict`: JSON-serialisable results: the setup (model, data, split sizes, input size, feature size, device), the
        encoding time, `knn` (its settings and a [`classification_report`]) and, with `run_linear_probe`,
        `linear_probe` (the chosen weight decay, validation accuracies and a report).
    """
    device = _resolve_device(device)
    dataset = ImageFolder.from_directory(data_dir)
    train_index, test_index = stratified_split(dataset.labels, train_fraction, train_per_class, seed)
    features, setup = _encode_files(
        model_name_or_path, dataset.paths, random_init, seed, image_size, pooling, batch_size, device, num_workers,
        cache_path, progress_bar, trust_remote_code,
    )

    labels = torch.tensor(dataset.labels)
    train_features, test_features = features[train_index].to(device), features[test_index].to(device)
    train_labels, test_labels = labels[train_index], labels[test_index]
    num_classes = len(dataset.class_names)
    knn_predictions = knn_classify(train_features, train_labels, test_features, num_classes, k, temperature)
    results = {
        **setup,
        "data_dir": str(data_dir),
        "num_images": len(dataset),
        "num_classes": num_classes,
        "num_train": len(train_index),
        "num_test": len(test_index),
        "seed": seed,
        "pooling": pooling,
        "feature_dim": features.shape[1],
        "device": str(device),
        "knn": {
            "k": k,
            "temperature": temperature,
            **classification_report(knn_predictions, test_labels, dataset.class_names),
        },
    }
    if run_linear_probe:
        probe_predictions, hyperparameters = linear_probe(
            train_features, train_labels, test_features, num_classes, seed=seed
        )
        validation_accuracy = hyperparameters["validation_accuracy"]
        results["linear_probe"] = {
            "weight_decay": hyperparameters["weight_decay"],
            "validation_accuracy": {str(decay): accuracy for decay, accuracy in validation_accuracy.items()},
            **classification_report(probe_predictions, test_labels, dataset.class_names),
        }
    return results


def evaluate_segmentation(
    model_name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = 0,
    train_fraction: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    image_size: int | None = None,
    epochs: int = 20,
    learning_rate: float = 1e-2,
    random_init: bool = False,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    cache_path: str | os.PathLike | None = None,
    progress_bar: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """
    Evaluates a frozen vision encoder with a linear segmentation probe on an image/mask folder (e.g. GID-MTL5).

    The model and processor are loaded with [`load_encoder`], every image is encoded once into a map of patch features
    with [`extract_features`] (`pooling="patches"`), the images are split with [`stratified_split`] on their scene
    classes, a [`segmentation_probe`] is trained on the train part and its predictions on the test part are scored
    with [`segmentation_report`].

    Args:
        model_name_or_path (`str` or `os.PathLike`):
            Any `AutoModel`-loadable patch-based vision encoder with an image processor, e.g. a PerA checkpoint.
        data_dir (`str` or `os.PathLike`):
            A [`SegmentationFolder`]: `<data_dir>/{image,mask}/<scene class>/<name>.<ext>`. All masks must have the
            same size.
        class_names (`Sequence[str]`, *optional*):
            The name of each mask value (e.g. `GID_MTL5_CLASS_NAMES`); defaults to the values as strings, up to the
            largest value found.
        ignore_index (`int`, *optional*, defaults to 0):
            The mask value of unlabelled pixels, or `None`.
        train_fraction (`float`, *optional*):
            Fraction of each scene class used for training the probe (0.5 when not given).
        seed (`int`, *optional*, defaults to 0):
            Seed of the split, of the probe's shuffling and of the random weights.
        batch_size (`int`, *optional*, defaults to 64):
            Images per forward pass.
        image_size (`int`, *optional*):
            Side of the square images given to the model; defaults to the processor's size.
        epochs (`int`, *optional*, defaults to 20), learning_rate (`float`, *optional*, defaults to 1e-2):
            Training of the probe.
        random_init (`bool`, *optional*, defaults to `False`):
            Evaluate the architecture with random weights instead of the trained ones.
        device (`str` or `torch.device`, *optional*):
            Defaults to CUDA when available, else the CPU.
        num_workers (`int`, *optional*, defaults to 0):
            Processes reading images.
        cache_path (`str` or `os.PathLike`, *optional*):
            Feature cache file (see [`extract_features`]).
        progress_bar (`bool`, *optional*, defaults to `True`):
            Whether to show a progress bar while encoding.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to [`load_encoder`]: run the code a non-PerA model ships.

    Returns:
        `dict`: JSON-serialisable results: the setup (model, data, split sizes, input and feature map sizes, device,
        probe settings), the encoding time and a [`segmentation_report`] of the test images (`mean_iou`,
        `per_class_iou`, `pixel_accuracy`, `num_pixels`).
    """
    device = _resolve_device(device)
    dataset = SegmentationFolder.from_directory(data_dir)
    train_index, test_index = stratified_split(dataset.scene_labels, train_fraction=train_fraction, seed=seed)
    masks = [read_mask(path) for path in dataset.mask_paths]
    if len({mask.shape for mask in masks}) > 1:
        raise ValueError(f"The masks under {data_dir} differ in size; the probe needs masks of one size.")
    masks = np.stack(masks)
    if class_names is None:
        class_names = [str(value) for value in range(int(masks.max()) + 1)]
    num_classes = len(class_names)
    masks = torch.from_numpy(masks.astype(np.uint8 if num_classes <= 256 else np.int64))

    features, setup = _encode_files(
        model_name_or_path, dataset.image_paths, random_init, seed, image_size, PATCH_FEATURES, batch_size, device,
        num_workers, cache_path, progress_bar, trust_remote_code,
    )

    train_index, test_index = torch.tensor(train_index), torch.tensor(test_index)
    predictions = segmentation_probe(
        features[train_index].to(device),
        masks[train_index],
        features[test_index],
        num_classes,
        ignore_index=ignore_index,
        epochs=epochs,
        learning_rate=learning_rate,
        seed=seed,
    )
    # counted in chunks: the flattened int64 ids of all test pixels would take `8 * num_pixels` bytes at once
    confusion_matrix = sum(
        segmentation_confusion_matrix(predicted, true, num_classes, ignore_index)
        for predicted, true in zip(predictions.split(batch_size), masks[test_index].split(batch_size))
    )
    return {
        **setup,
        "data_dir": str(data_dir),
        "num_images": len(dataset),
        "num_train": len(train_index),
        "num_test": len(test_index),
        "seed": seed,
        "feature_map_size": list(features.shape[1:]),
        "mask_size": list(masks.shape[1:]),
        "device": str(device),
        "probe": {"epochs": epochs, "learning_rate": learning_rate, "ignore_index": ignore_index},
        **segmentation_report(confusion_matrix, class_names, ignore_index),
    }


def _model_row(results: dict[str, Any]) -> tuple[str, str]:
    model = results["model"] + (" (random init)" if results["random_init"] else "")
    return "model", f"{model}, {results['num_parameters'] / 1e6:.1f}M parameters"


def _encoding_row(results: dict[str, Any]) -> tuple[str, str]:
    return (
        "encoding",
        f"{results['encoding_seconds']:.1f} s ({results['images_per_second']:.1f} img/s on {results['device']})",
    )


def _format_rows(rows: Sequence[tuple[str, str]]) -> str:
    name_width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{name_width}}  {value}" for name, value in rows)


def format_evaluation_summary(results: dict[str, Any]) -> str:
    """A short plain-text table of the results of [`evaluate_encoder`]."""
    input_height, input_width = results["input_size"][-2:]
    rows = [
        _model_row(results),
        (
            "data",
            f"{results['num_images']} images, {results['num_classes']} classes: {results['num_train']} train / "
            f"{results['num_test']} test (seed {results['seed']})",
        ),
        ("features", f"{results['pooling']}, dim {results['feature_dim']}, input {input_height}x{input_width}"),
        _encoding_row(results),
    ]
    knn = results["knn"]
    rows.append(
        (
            f"kNN k={knn['k']} T={knn['temperature']}",
            f"top-1 {100 * knn['top1_accuracy']:.2f} %, mean per class {100 * knn['mean_per_class_accuracy']:.2f} %",
        )
    )
    if "linear_probe" in results:
        probe = results["linear_probe"]
        rows.append(
            (
                f"linear probe wd={probe['weight_decay']:g}",
                f"top-1 {100 * probe['top1_accuracy']:.2f} %, mean per class "
                f"{100 * probe['mean_per_class_accuracy']:.2f} %",
            )
        )
    return _format_rows(rows)


def format_comparison(results: dict[str, Any], baseline: dict[str, Any], baseline_name: str) -> str:
    """
    The figures two evaluations (outputs of `run_eval.py`: kNN, linear probe, segmentation probe) both have, side by
    side with their difference in points, e.g. a pretrained encoder against the same architecture with random
    weights.
    """
    figures = {
        "kNN top-1": lambda r: r.get("knn", {}).get("top1_accuracy"),
        "linear probe top-1": lambda r: r.get("linear_probe", {}).get("top1_accuracy"),
        "segmentation mIoU": lambda r: r.get("segmentation_probe", {}).get("mean_iou"),
    }
    rows = []
    for name, figure in figures.items():
        ours, theirs = figure(results), figure(baseline)
        if ours is not None and theirs is not None:
            rows.append((name, f"{100 * ours:.2f} % against {100 * theirs:.2f} % ({100 * (ours - theirs):+.2f} points)"))
    if not rows:
        raise ValueError(f"The evaluation and {baseline_name} share no figure to compare (kNN, linear or segmentation).")
    return _format_rows([("this encoder against", baseline_name), *rows])


def format_segmentation_summary(results: dict[str, Any]) -> str:
    """A short plain-text table of the results of [`evaluate_segmentation`]."""
    input_height, input_width = results["input_size"][-2:]
    dim, grid_rows, grid_columns = results["feature_map_size"]
    per_class = ", ".join(
        f"{name} {'-' if iou is None else f'{100 * iou:.1f}'}" for name, iou in results["per_class_iou"].items()
    )
    probe = results["probe"]
    return _format_rows(
        [
            _model_row(results),
            (
                "data",
                f"{results['num_images']} images with masks: {results['num_train']} train / {results['num_test']} "
                f"test (seed {results['seed']}), ignoring label {probe['ignore_index']}",
            ),
            ("features", f"patch map {dim} x {grid_rows} x {grid_columns}, input {input_height}x{input_width}"),
            _encoding_row(results),
            (
                f"linear seg. probe ({probe['epochs']} epochs)",
                f"mIoU {100 * results['mean_iou']:.2f} %, pixel accuracy {100 * results['pixel_accuracy']:.2f} %",
            ),
            ("IoU per class (%)", per_class),
        ]
    )


__all__ = [
    "GID_MTL5_CLASS_NAMES",
    "LINEAR_PROBE_WEIGHT_DECAYS",
    "PATCH_FEATURES",
    "POOLINGS",
    "ImageFolder",
    "SegmentationFolder",
    "classification_report",
    "evaluate_encoder",
    "evaluate_segmentation",
    "extract_features",
    "format_comparison",
    "format_evaluation_summary",
    "format_segmentation_summary",
    "knn_classify",
    "linear_probe",
    "load_encoder",
    "patch_feature_map",
    "pool_encoder_outputs",
    "preprocess_image_file",
    "read_mask",
    "segmentation_confusion_matrix",
    "segmentation_probe",
    "segmentation_report",
    "stratified_split",
]
