# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The two fixed evaluation protocols end to end: `evaluate_encoder` (kNN and linear probe on a labelled folder) and
`evaluate_segmentation` (the segmentation probe on an image/mask folder)."""

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .datasets import ImageFolder, SegmentationFolder, read_mask, stratified_split
from .features import PATCH_FEATURES, extract_features, load_encoder, preprocess_image_file, processor_size_kwargs
from .probes import (
    classification_report,
    knn_classify,
    linear_probe,
    segmentation_confusion_matrix,
    segmentation_probe,
    segmentation_report,
)


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
    bands: Sequence[int] | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Loads the encoder and encodes `paths`: the features and the setup entries of the results (encoder, input size,
    encoding time)."""
    model, processor = load_encoder(
        model_name_or_path, random_init=random_init, seed=seed, trust_remote_code=trust_remote_code
    )
    processor_kwargs = processor_size_kwargs(processor, image_size)
    input_size = list(preprocess_image_file(paths[0], processor, bands=bands, **processor_kwargs).shape)
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
        bands=bands,
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
    bands: Sequence[int] | None = None,
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
        bands (`Sequence[int]`, *optional*):
            The images' bands to encode, in order (0-based), e.g. `[0, 1, 2]` for the RGB of RGB+NIR tiles given to an
            RGB encoder; all of them by default.

    Returns:
        `dict`: JSON-serialisable results: the setup (model, data, split sizes, input size, feature size, device), the
        encoding time, `knn` (its settings and a [`classification_report`]) and, with `run_linear_probe`,
        `linear_probe` (the chosen weight decay, validation accuracies and a report).
    """
    device = _resolve_device(device)
    dataset = ImageFolder.from_directory(data_dir)
    train_index, test_index = stratified_split(dataset.labels, train_fraction, train_per_class, seed)
    features, setup = _encode_files(
        model_name_or_path,
        dataset.paths,
        random_init,
        seed,
        image_size,
        pooling,
        batch_size,
        device,
        num_workers,
        cache_path,
        progress_bar,
        trust_remote_code,
        bands,
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
    bands: Sequence[int] | None = None,
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
        bands (`Sequence[int]`, *optional*):
            The images' bands to encode, in order (0-based), e.g. `[0, 1, 2]` for the RGB of RGB+NIR tiles given to an
            RGB encoder; all of them by default.

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
        model_name_or_path,
        dataset.image_paths,
        random_init,
        seed,
        image_size,
        PATCH_FEATURES,
        batch_size,
        device,
        num_workers,
        cache_path,
        progress_bar,
        trust_remote_code,
        bands,
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
