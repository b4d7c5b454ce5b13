# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The two fixed evaluation protocols end to end, set by [`EvaluationArguments`]: `evaluate_encoder` (kNN and linear
probe on a labelled folder) and `evaluate_segmentation` (the segmentation probe on an image/mask folder)."""

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arguments import EvaluationArguments
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
from .reports import format_comparison, format_evaluation_summary, format_segmentation_summary


def _encode_files(
    arguments: EvaluationArguments, paths: Sequence[str | os.PathLike], pooling: str, cache_path: Path | str | None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Loads the encoder and encodes `paths`: the features and the setup entries of the results (encoder, input size,
    encoding time, seed, device)."""
    model, processor = load_encoder(
        arguments.model_name_or_path,
        random_init=arguments.random_init,
        seed=arguments.seed,
        trust_remote_code=arguments.trust_remote_code,
    )
    processor_kwargs = processor_size_kwargs(processor, arguments.image_size)
    input_size = list(preprocess_image_file(paths[0], processor, bands=arguments.bands, **processor_kwargs).shape)
    start = time.perf_counter()
    features = extract_features(
        model,
        processor,
        paths,
        batch_size=arguments.batch_size,
        device=arguments.torch_device,
        pooling=pooling,
        cache_path=cache_path,
        processor_kwargs=processor_kwargs,
        num_workers=arguments.num_workers,
        progress_bar=arguments.progress_bar,
        bands=arguments.bands,
    )
    encoding_seconds = time.perf_counter() - start
    setup = {
        "model": str(arguments.model_name_or_path),
        "model_type": getattr(model.config, "model_type", type(model).__name__),
        "random_init": arguments.random_init,
        "num_parameters": sum(parameter.numel() for parameter in model.parameters()),
        "input_size": input_size,
        "encoding_seconds": encoding_seconds,
        "images_per_second": len(paths) / encoding_seconds,
    }
    return features, setup


def evaluate_encoder(arguments: EvaluationArguments) -> dict[str, Any]:
    """
    Evaluates a frozen vision encoder on the labelled folder `arguments.data_dir` with weighted kNN and, with
    `arguments.linear_probe`, a linear probe.

    The model and processor are loaded with [`load_encoder`], every image is encoded once with [`extract_features`],
    the images are split with [`stratified_split`], and the test part is classified with [`knn_classify`] (and
    [`linear_probe`]) fitted on the train part.

    Returns:
        `dict`: JSON-serialisable results: the setup (model, data, split sizes, input size, feature size, device), the
        encoding time, `knn` (its settings and a [`classification_report`]) and, with the linear probe,
        `linear_probe` (the chosen weight decay, validation accuracies and a report).
    """
    dataset = ImageFolder.from_directory(arguments.data_dir)
    train_index, test_index = stratified_split(
        dataset.labels, arguments.train_fraction, arguments.train_per_class, arguments.seed
    )
    features, setup = _encode_files(arguments, dataset.paths, arguments.pooling, arguments.cache_path)
    labels, device = torch.tensor(dataset.labels), arguments.torch_device
    train_features, test_features = features[train_index].to(device), features[test_index].to(device)
    train_labels, test_labels = labels[train_index], labels[test_index]
    num_classes = len(dataset.class_names)
    knn_predictions = knn_classify(
        train_features, train_labels, test_features, num_classes, arguments.k, arguments.temperature
    )
    results = {
        **setup,
        "data_dir": str(arguments.data_dir),
        "num_images": len(dataset),
        "num_classes": num_classes,
        "num_train": len(train_index),
        "num_test": len(test_index),
        "seed": arguments.seed,
        "pooling": arguments.pooling,
        "feature_dim": features.shape[1],
        "device": str(device),
        "knn": {
            "k": arguments.k,
            "temperature": arguments.temperature,
            **classification_report(knn_predictions, test_labels, dataset.class_names),
        },
    }
    if arguments.linear_probe:
        probe_predictions, hyperparameters = linear_probe(
            train_features, train_labels, test_features, num_classes, seed=arguments.seed
        )
        validation_accuracy = hyperparameters["validation_accuracy"]
        results["linear_probe"] = {
            "weight_decay": hyperparameters["weight_decay"],
            "validation_accuracy": {str(decay): accuracy for decay, accuracy in validation_accuracy.items()},
            **classification_report(probe_predictions, test_labels, dataset.class_names),
        }
    return results


def _read_masks(dataset: SegmentationFolder, class_names: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    """The masks of `dataset` as one tensor, and the class names (the mask values as strings when not given)."""
    masks = [read_mask(path) for path in dataset.mask_paths]
    if len({mask.shape for mask in masks}) > 1:
        folder = dataset.mask_paths[0].parents[1]
        raise ValueError(f"The masks under {folder} differ in size; the probe needs masks of one size.")
    masks = np.stack(masks)
    if class_names is None:
        class_names = [str(value) for value in range(int(masks.max()) + 1)]
    return torch.from_numpy(masks.astype(np.uint8 if len(class_names) <= 256 else np.int64)), list(class_names)


def evaluate_segmentation(arguments: EvaluationArguments) -> dict[str, Any]:
    """
    Evaluates a frozen vision encoder with a linear segmentation probe on the image/mask folder
    `arguments.segmentation_dir` (a [`SegmentationFolder`], e.g. GID-MTL5; all masks of one size).

    The model and processor are loaded with [`load_encoder`], every image is encoded once into a map of patch features
    with [`extract_features`] (`pooling="patches"`), the images are split with [`stratified_split`] on their scene
    classes, a [`segmentation_probe`] is trained on the train part and its predictions on the test part are scored
    with [`segmentation_report`].

    Returns:
        `dict`: JSON-serialisable results: the setup (model, data, split sizes, input and feature map sizes, device,
        probe settings), the encoding time and a [`segmentation_report`] of the test images (`mean_iou`,
        `per_class_iou`, `pixel_accuracy`, `num_pixels`).
    """
    dataset = SegmentationFolder.from_directory(arguments.segmentation_dir)
    train_index, test_index = stratified_split(
        dataset.scene_labels, train_fraction=arguments.train_fraction, seed=arguments.seed
    )
    masks, class_names = _read_masks(dataset, arguments.segmentation_class_names)
    features, setup = _encode_files(arguments, dataset.image_paths, PATCH_FEATURES, arguments.patch_cache_path)
    train_index, test_index = torch.tensor(train_index), torch.tensor(test_index)
    probe = {
        "epochs": arguments.segmentation_epochs,
        "learning_rate": arguments.segmentation_learning_rate,
        "ignore_index": arguments.ignore_index,
    }
    predictions = segmentation_probe(
        features[train_index].to(arguments.torch_device),
        masks[train_index],
        features[test_index],
        len(class_names),
        seed=arguments.seed,
        **probe,
    )
    # counted in chunks: the flattened int64 ids of all test pixels would take `8 * num_pixels` bytes at once
    confusion_matrix = sum(
        segmentation_confusion_matrix(predicted, true, len(class_names), arguments.ignore_index)
        for predicted, true in zip(
            predictions.split(arguments.batch_size), masks[test_index].split(arguments.batch_size)
        )
    )
    return {
        **setup,
        "data_dir": str(arguments.segmentation_dir),
        "num_images": len(dataset),
        "num_train": len(train_index),
        "num_test": len(test_index),
        "seed": arguments.seed,
        "feature_map_size": list(features.shape[1:]),
        "mask_size": list(masks.shape[1:]),
        "device": str(arguments.torch_device),
        "probe": probe,
        **segmentation_report(confusion_matrix, class_names, arguments.ignore_index),
    }


def run_evaluation(arguments: EvaluationArguments) -> dict[str, Any]:
    """
    The job of `examples/run_eval.py`: [`evaluate_encoder`] on `data_dir` and [`evaluate_segmentation`] on
    `segmentation_dir` (whichever are given), each summary printed, the results written to `output_json` and, with
    `compare_to`, printed side by side with an earlier run's. Returns the results.
    """
    results = {}
    if arguments.data_dir is not None:
        results = evaluate_encoder(arguments)
        print(format_evaluation_summary(results))
    if arguments.segmentation_dir is not None:
        results["segmentation_probe"] = evaluate_segmentation(arguments)
        print(format_segmentation_summary(results["segmentation_probe"]))
    if arguments.output_json is not None:
        Path(arguments.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.output_json).write_text(json.dumps(results, indent=2) + "\n")
    if arguments.compare_to is not None:
        earlier = json.loads(Path(arguments.compare_to).read_text())
        print(format_comparison(results, earlier, str(arguments.compare_to)))
    return results


__all__ = ["evaluate_encoder", "evaluate_segmentation", "run_evaluation"]
