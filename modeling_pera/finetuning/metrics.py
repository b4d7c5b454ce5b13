# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The metrics of the fine-tuning jobs, as `Trainer` callbacks: accuracy for classification, mIoU, pixel accuracy and
per-class IoU for segmentation.

They are computed by hand (see [`~modeling_pera.evaluation.classification_report`] and
[`~modeling_pera.evaluation.segmentation_report`]): `evaluate.load(...)` downloads the metric scripts and fails
offline.
"""

from collections.abc import Sequence

import numpy as np
import torch
from transformers import EvalPrediction

from ..evaluation import classification_report, segmentation_confusion_matrix, segmentation_report


def classification_metrics(eval_prediction: EvalPrediction, class_names: Sequence[str]) -> dict[str, float]:
    """`compute_metrics` for `Trainer`: top-1 accuracy and mean per-class accuracy of the logits."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    report = classification_report(np.argmax(logits, axis=-1), eval_prediction.label_ids, class_names)
    return {"accuracy": report["top1_accuracy"], "mean_per_class_accuracy": report["mean_per_class_accuracy"]}


def segmentation_predictions(
    logits: torch.Tensor | tuple[torch.Tensor, ...], labels: torch.Tensor, ignore_index: int | None
) -> torch.Tensor:
    """`preprocess_logits_for_metrics` for `Trainer`: the predicted class ids, never `ignore_index` (keeps the memory
    of evaluation at one integer per pixel)."""
    logits = (logits[0] if isinstance(logits, tuple) else logits).clone()
    if ignore_index is not None and 0 <= ignore_index < logits.shape[1]:
        logits[:, ignore_index] = float("-inf")
    return logits.argmax(dim=1)


def segmentation_metrics(
    eval_prediction: EvalPrediction, class_names: Sequence[str], ignore_index: int | None
) -> dict[str, float]:
    """`compute_metrics` for `Trainer`: mIoU, pixel accuracy and the IoU of each class (`iou_<name>`)."""
    confusion_matrix = segmentation_confusion_matrix(
        torch.from_numpy(np.asarray(eval_prediction.predictions)),
        torch.from_numpy(np.asarray(eval_prediction.label_ids)),
        len(class_names),
        ignore_index,
    )
    report = segmentation_report(confusion_matrix, class_names, ignore_index)
    metrics = {"mean_iou": report["mean_iou"], "pixel_accuracy": report["pixel_accuracy"]}
    metrics.update({f"iou_{name}": iou for name, iou in report["per_class_iou"].items() if iou is not None})
    return metrics
