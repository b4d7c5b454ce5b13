# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning with transformers' `Trainer`: scene classification with [`PeraForImageClassification`] and semantic
segmentation with transformers' `UperNetForSemanticSegmentation` on a [`PeraBackbone`].

`examples/run_classification.py` and `examples/run_segmentation.py` parse the flags into these jobs' arguments and
call them. This subpackage is part of the installed package, not of the Hub code files: `arguments` (the flags besides
`TrainingArguments`), `datasets` (image files with labels or masks, the training augmentation), `layer_decay`
(layer-wise learning-rate decay and its `Trainer`), `metrics` (the `Trainer` metrics, computed by hand: `evaluate`
fails offline) and `jobs` (`finetune_classification`, `upernet_for_pera`, `finetune_segmentation`).
"""

from .arguments import ClassificationArguments, FinetuningArguments, SegmentationArguments
from .datasets import ImageClassificationFiles, RandomResizedCropTransform, SegmentationFiles
from .jobs import finetune_classification, finetune_segmentation, pyramid_out_indices, upernet_for_pera
from .layer_decay import LayerDecayTrainer, layer_decay_parameter_groups, parameter_depth
from .metrics import classification_metrics, segmentation_metrics, segmentation_predictions


__all__ = [
    "ClassificationArguments",
    "FinetuningArguments",
    "ImageClassificationFiles",
    "LayerDecayTrainer",
    "RandomResizedCropTransform",
    "SegmentationArguments",
    "SegmentationFiles",
    "classification_metrics",
    "finetune_classification",
    "finetune_segmentation",
    "layer_decay_parameter_groups",
    "parameter_depth",
    "pyramid_out_indices",
    "segmentation_metrics",
    "segmentation_predictions",
    "upernet_for_pera",
]
