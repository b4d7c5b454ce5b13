# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Frozen-encoder evaluation: DINO-style weighted kNN and a linear probe on labelled image folders, and a linear
segmentation probe on image/mask folders.

Any `AutoModel`-loadable vision encoder can be evaluated (PerA, ViT, ViT-MAE, DINOv2, ...): images are read with
[`~modeling_pera.raster.read_image`] (any band count, any pixel type), preprocessed by the model's image processor,
encoded once, and the pooled features are classified by a weighted k-nearest-neighbour vote and, optionally, by a
logistic regression; the patch features are segmented by a 1x1 convolution scored by mIoU. This subpackage is part of
the installed package, not of the Hub code files: `arguments` (the settings, `EvaluationArguments`), `datasets`
(labelled folders, splits), `features` (reading and encoding images), `probes` (kNN, linear and segmentation probes,
their scores), `protocols` (the two evaluations end to end, and `run_evaluation`, the job of `run_eval.py`) and
`reports` (text summaries).

The metrics are computed here rather than with `evaluate`, whose `evaluate.load("accuracy")` downloads the metric
script from the Hub and fails offline.
"""

from .arguments import BANDS_HELP, EvaluationArguments
from .datasets import GID_MTL5_CLASS_NAMES, ImageFolder, SegmentationFolder, read_mask, stratified_split
from .features import (
    PATCH_FEATURES,
    POOLINGS,
    extract_features,
    load_encoder,
    patch_feature_map,
    pool_encoder_outputs,
    preprocess_image_file,
    processor_size_kwargs,
)
from .probes import (
    LINEAR_PROBE_WEIGHT_DECAYS,
    classification_report,
    knn_classify,
    linear_probe,
    segmentation_confusion_matrix,
    segmentation_probe,
    segmentation_report,
)
from .protocols import evaluate_encoder, evaluate_segmentation, run_evaluation
from .reports import format_comparison, format_evaluation_summary, format_segmentation_summary


__all__ = [
    "BANDS_HELP",
    "GID_MTL5_CLASS_NAMES",
    "LINEAR_PROBE_WEIGHT_DECAYS",
    "PATCH_FEATURES",
    "POOLINGS",
    "EvaluationArguments",
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
    "processor_size_kwargs",
    "read_mask",
    "run_evaluation",
    "segmentation_confusion_matrix",
    "segmentation_probe",
    "segmentation_report",
    "stratified_split",
]
