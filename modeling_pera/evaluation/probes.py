# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The probes on frozen features: DINO-style weighted kNN, a logistic-regression linear probe, a 1x1-convolution
segmentation probe, and their scores (accuracy per class, confusion matrix, IoU)."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .datasets import stratified_split


# Weight decays of the linear probe's sweep, for features standardised to zero mean and unit variance.
LINEAR_PROBE_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


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


def _fit_segmentation_head(
    upsampled_logits: Callable[[torch.Tensor], torch.Tensor],
    head: nn.Module,
    train_features: torch.Tensor,
    train_masks: torch.Tensor,
    ignore_index: int | None,
    epochs: int,
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> None:
    """Trains `head` (through `upsampled_logits`) as [`segmentation_probe`] describes."""
    device = next(head.parameters()).device
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
    # Zero weights, not random: the probe then depends only on the features, the seed's batch order and the schedule
    # (20 epochs of AdamW stop before the convex optimum, so a random start would still show in the result).
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)

    def upsampled_logits(features: torch.Tensor) -> torch.Tensor:
        logits = head((features.to(device).float() - mean) / std)
        return F.interpolate(logits, size=mask_size, mode="bilinear", align_corners=False)

    _fit_segmentation_head(
        upsampled_logits,
        head,
        train_features,
        train_masks,
        ignore_index,
        epochs,
        learning_rate,
        weight_decay,
        batch_size,
        seed,
    )

    predictions = []
    with torch.no_grad():
        for features in test_features.split(batch_size):
            logits = upsampled_logits(features)
            if ignore_index is not None and 0 <= ignore_index < num_classes:
                logits[:, ignore_index] = float("-inf")
            predictions.append(logits.argmax(dim=1).to(train_masks.dtype).cpu())
    return torch.cat(predictions)
