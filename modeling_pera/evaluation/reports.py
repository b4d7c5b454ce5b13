# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Text summaries of evaluation results, alone or next to a baseline (e.g. random weights)."""

from collections.abc import Sequence
from typing import Any


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
            rows.append(
                (name, f"{100 * ours:.2f} % against {100 * theirs:.2f} % ({100 * (ours - theirs):+.2f} points)")
            )
    if not rows:
        raise ValueError(
            f"The evaluation and {baseline_name} share no figure to compare (kNN, linear or segmentation)."
        )
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
