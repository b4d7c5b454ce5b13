# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning with transformers' `Trainer`: scene classification with [`PeraForImageClassification`] and semantic
segmentation with transformers' `UperNetForSemanticSegmentation` on a [`PeraBackbone`].

This module holds the data loading and augmentation, the layer-wise learning-rate decay, the metrics and the two jobs
(`finetune_classification`, `finetune_segmentation`); `examples/run_classification.py` and
`examples/run_segmentation.py` parse the flags into these jobs' arguments and call them. It is part of the installed package, not of the Hub code files.

Metrics are computed by hand (see [`~modeling_pera.evaluation.classification_report`] and
[`~modeling_pera.evaluation.segmentation_report`]): `evaluate.load(...)` downloads the metric scripts and fails
offline.
"""

import functools
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    EvalPrediction,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from .configuration_pera import PeraConfig
from .evaluation import (
    BANDS_HELP,
    ImageFolder,
    SegmentationFolder,
    classification_report,
    preprocess_image_file,
    processor_size_kwargs,
    read_mask,
    segmentation_confusion_matrix,
    segmentation_report,
    stratified_split,
)
from .modeling_pera import PeraBackbone
from .pretraining import parse_config_overrides
from .raster import read_encoder_input
from .schedules import decays_weight
from .views import CROP_ASPECT_RATIOS, FLIP_PROBABILITY, random_resized_crop


logger = logging.getLogger(__name__)

# The defaults of the segmentation job and of `upernet_for_pera`: GID-MTL5's mask value of unlabelled pixels, and
# a decoder width for ViT-Tiny/Small encoders (UperNet's own 512 is made for ConvNeXt/Swin pyramids).
UNLABELLED_MASK_VALUE = 0
UPERNET_HIDDEN_SIZE = 256

# Transformer blocks are named `...layers.<i>.` (PerA) or `...layer.<i>.` (ViT, DINOv2) in the parameter names.
LAYER_INDEX_PATTERN = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


# ---------------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# ---------------------------------------------------------------------------------------------------------------------


def parameter_depth(name: str, num_layers: int) -> int:
    """
    The depth of a ViT parameter for layer-wise learning-rate decay: 0 for the embeddings (patch embedding, CLS
    token, position embeddings), `i + 1` for block `i`, and `num_layers + 1` for everything after the blocks (final
    norm, heads, decoders).
    """
    match = LAYER_INDEX_PATTERN.search(name)
    if match is not None:
        return int(match.group(1)) + 1
    if "embeddings" in name.split("."):
        return 0
    return num_layers + 1


def layer_decay_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """
    Optimizer parameter groups with layer-wise learning-rate decay (as in BEiT and MAE fine-tuning): a parameter at
    depth `d` (see [`parameter_depth`]) gets `learning_rate * layer_decay ** (num_layers + 1 - d)`, so the head
    trains at `learning_rate` and each block below it `layer_decay` times slower.

    Args:
        model (`nn.Module`):
            A ViT-based model, e.g. [`PeraForImageClassification`] or `UperNetForSemanticSegmentation` on a
            [`PeraBackbone`]. Parameters that do not require gradients are left out.
        learning_rate (`float`):
            Learning rate of the top (head) group.
        weight_decay (`float`):
            Weight decay of the weight matrices and kernels; biases, norms and the CLS, mask and position embeddings
            get none (the package's rule, [`~schedules.decays_weight`]).
        layer_decay (`float`):
            The factor per block, in (0, 1].
        num_layers (`int`, *optional*):
            Number of blocks; defaults to `num_hidden_layers` of the model's config or of its `backbone_config`.

    Returns:
        `list[dict]`: one group per (depth, decayed or not), each with `params`, `lr` and `weight_decay`, the top
        first (`Trainer` logs the learning rate of the first group).
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"`layer_decay` must lie in (0, 1], got {layer_decay}.")
    if num_layers is None:
        config = getattr(model.config, "backbone_config", None) or model.config
        num_layers = config.num_hidden_layers
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = parameter_depth(name, num_layers)
        decayed = decays_weight(name, parameter)
        group = groups.setdefault(
            (depth, decayed),
            {
                "params": [],
                "lr": learning_rate * layer_decay ** (num_layers + 1 - depth),
                "weight_decay": weight_decay if decayed else 0.0,
            },
        )
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups, reverse=True)]


class LayerDecayTrainer(Trainer):
    """
    A `Trainer` whose optimizer uses [`layer_decay_parameter_groups`] when `layer_decay` is given; otherwise it is
    transformers' `Trainer`. The optimizer class and its settings still come from the `TrainingArguments` (`--optim`,
    betas, epsilon), for optimizers that take parameter groups (the torch and bitsandbytes ones).
    """

    def __init__(self, *args, layer_decay: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.layer_decay is None or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        parameter_groups = layer_decay_parameter_groups(
            model,
            self.args.learning_rate,
            self.args.weight_decay,
            self.layer_decay,
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuningArguments:
    """Flags common to `examples/run_classification.py` and `examples/run_segmentation.py`, besides
    `TrainingArguments` (`--output_dir`, `--num_train_epochs`, `--learning_rate`, `--seed`, ...)."""

    model_name_or_path: str = field(
        metadata={"help": "A PerA encoder, pretraining or classification checkpoint (folder or Hub id)."}
    )
    train_dir: str = field(
        metadata={
            "help": "Classification: a folder <train_dir>/<class>/<image>. Segmentation: a folder "
            "<train_dir>/{image,mask}/<scene class>/<name>.<ext> (e.g. GID-MTL5)."
        }
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "A folder laid out as --train_dir for evaluation; else a split of it."}
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of each class held out for evaluation without --validation_dir."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Side of the square inputs (default: the processor's)."}
    )
    layer_decay: float | None = field(
        default=None, metadata={"help": "Layer-wise learning-rate decay factor per block, e.g. 0.75 (default: none)."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Comma-separated encoder config settings, e.g. 'drop_path_rate=0.1'."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the Python code a model folder or Hub repository ships (its auto_map), for models other than "
            "PerA. PerA checkpoints load without it when modeling_pera is installed."
        },
    )
    bands: list[int] | None = field(default=None, metadata={"help": BANDS_HELP})


@dataclass
class ClassificationArguments(FinetuningArguments):
    """Flags of `examples/run_classification.py` besides `TrainingArguments`."""

    crop_scale_min: float = field(
        default=0.08, metadata={"help": "Smallest area fraction of the random resized crops of training."}
    )


@dataclass
class SegmentationArguments(FinetuningArguments):
    """Flags of `examples/run_segmentation.py` besides `TrainingArguments`."""

    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "The name of each mask value, e.g. `undefined built-up farmland forest meadow water` "
            "for GID-MTL5 (default: the values)."
        },
    )
    ignore_index: int = field(
        default=UNLABELLED_MASK_VALUE, metadata={"help": "The mask value of unlabelled pixels (GID-MTL5's is 0)."}
    )
    out_indices: list[int] | None = field(
        default=None,
        metadata={"help": "The encoder stages UperNet reads (default: 4 evenly spaced, the last included)."},
    )
    decoder_hidden_size: int = field(
        default=UPERNET_HIDDEN_SIZE, metadata={"help": "Channels of the UperNet decoder."}
    )


def _image_size(processor: Any, image_size: int | None) -> int:
    """`image_size`, else the processor's output height (`size` is a dict or a `SizeDict`; stock processors that
    resize the shortest edge give that edge)."""
    if image_size is not None:
        return image_size
    size = processor.size
    return size.get("height") or size.get("shortest_edge")


def _train_and_evaluate(trainer: Trainer) -> dict[str, float]:
    """Trains, saves the model and processor to `output_dir`, and evaluates."""
    metrics = {}
    train_result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    trainer.save_model()  # the model and `processing_class`: a folder the pipelines and Auto classes load
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    metrics.update(train_result.metrics)
    eval_metrics = trainer.evaluate()
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    metrics.update(eval_metrics)
    return metrics


def split_parallel_lists(
    labels: Sequence[int], validation_fraction: float, seed: int, *lists: Sequence
) -> tuple[list[list], list[list]]:
    """A fixed-seed split, stratified by `labels`, of the parallel `lists` into their train and evaluation parts."""
    train_index, eval_index = stratified_split(labels, train_fraction=1 - validation_fraction, seed=seed)
    return [[items[i] for i in train_index] for items in lists], [[items[i] for i in eval_index] for items in lists]


def finetune_classification(
    arguments: ClassificationArguments, training_arguments: TrainingArguments
) -> dict[str, float]:
    """
    Fine-tunes an image classifier (`AutoModelForImageClassification`: [`PeraForImageClassification`] from a PerA
    encoder or pretraining checkpoint, whose new head starts at random) on a class-folder dataset with `Trainer`.

    Training images get [`RandomResizedCropTransform`], evaluation images the processor's resize. The model and the
    processor are saved to `training_arguments.output_dir`, with the class names as `id2label`.

    Returns:
        `dict[str, float]`: the train metrics and the evaluation metrics (`eval_accuracy`,
        `eval_mean_per_class_accuracy`, `eval_loss`).
    """
    train_folder = ImageFolder.from_directory(arguments.train_dir)
    class_names = train_folder.class_names
    if arguments.validation_dir is None:
        (train_paths, train_labels), (eval_paths, eval_labels) = split_parallel_lists(
            train_folder.labels,
            arguments.train_val_split,
            training_arguments.seed,
            train_folder.paths,
            train_folder.labels,
        )
    else:
        eval_folder = ImageFolder.from_directory(arguments.validation_dir)
        if eval_folder.class_names != class_names:
            raise ValueError(
                f"--validation_dir has the classes {eval_folder.class_names}, --train_dir {class_names}: they must match."
            )
        train_paths, train_labels = train_folder.paths, train_folder.labels
        eval_paths, eval_labels = eval_folder.paths, eval_folder.labels

    processor = AutoImageProcessor.from_pretrained(
        arguments.model_name_or_path, trust_remote_code=arguments.trust_remote_code
    )
    model = AutoModelForImageClassification.from_pretrained(
        arguments.model_name_or_path,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: index for index, name in enumerate(class_names)},
        ignore_mismatched_sizes=True,  # a classification checkpoint with other classes gets a new head
        trust_remote_code=arguments.trust_remote_code,
        dtype=torch.float32,
        **parse_config_overrides(arguments.config_overrides),
    )
    image_size = _image_size(processor, arguments.image_size)
    train_transform = RandomResizedCropTransform(
        processor, image_size, (arguments.crop_scale_min, 1.0), bands=arguments.bands
    )
    train_dataset = ImageClassificationFiles(train_paths, train_labels, train_transform)
    eval_transform = functools.partial(
        preprocess_image_file,
        processor=processor,
        bands=arguments.bands,
        **processor_size_kwargs(processor, image_size),
    )
    eval_dataset = ImageClassificationFiles(eval_paths, eval_labels, eval_transform)
    logger.info(
        f"Fine-tuning {type(model).__name__} on {len(train_dataset)} images, evaluating on {len(eval_dataset)}, "
        f"{len(class_names)} classes, {image_size} px."
    )
    trainer = LayerDecayTrainer(
        model=model,
        args=training_arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=functools.partial(classification_metrics, class_names=class_names),
        layer_decay=arguments.layer_decay,
    )
    return _train_and_evaluate(trainer)


def upernet_for_pera(
    model_name_or_path: str | os.PathLike,
    class_names: Sequence[str],
    out_indices: Sequence[int] | None = None,
    ignore_index: int = UNLABELLED_MASK_VALUE,
    decoder_hidden_size: int = UPERNET_HIDDEN_SIZE,
    **config_overrides,
) -> UperNetForSemanticSegmentation:
    """
    transformers' `UperNetForSemanticSegmentation` on a [`PeraBackbone`] holding the weights of a PerA checkpoint.

    The model is built the transformers way, `UperNetConfig(backbone_config=PeraConfig(...))`, then the backbone
    takes the encoder's weights (the teacher of a pretraining checkpoint). All feature maps of a ViT have the same
    resolution (1/patch size): UperNet's pyramid then mixes depths rather than scales.

    Args:
        model_name_or_path (`str` or `os.PathLike`):
            A PerA checkpoint (encoder, pretraining or classification).
        class_names (`Sequence[str]`):
            The name of each class id (the model's `id2label`), `ignore_index` included if it is a class id (as 0
            in GID-MTL5).
        out_indices (`Sequence[int]`, *optional*):
            Encoder stages fed to the decoder (0 is the embeddings); defaults to 4 evenly spaced blocks ending with
            the last, e.g. `[3, 6, 9, 12]`. The auxiliary head reads the third one; with fewer than 3 there is none.
        ignore_index (`int`, *optional*, defaults to 0):
            Label left out of the loss (GID-MTL5's "undefined"; 255 in many other datasets).
        decoder_hidden_size (`int`, *optional*, defaults to 256):
            Channels of the UperNet decoder (`UperNetConfig.hidden_size`).
        config_overrides:
            Encoder config settings, e.g. `drop_path_rate=0.1`.

    Returns:
        `UperNetForSemanticSegmentation`: in float32.
    """
    backbone_config = PeraConfig.from_pretrained(model_name_or_path, **config_overrides)
    if out_indices is None:
        num_layers = backbone_config.num_hidden_layers
        out_indices = sorted({num_layers * quarter // 4 for quarter in range(1, 5)} - {0})
    backbone_config.out_indices = list(out_indices)
    config = UperNetConfig(
        backbone_config=backbone_config,
        id2label=dict(enumerate(class_names)),
        label2id={name: index for index, name in enumerate(class_names)},
        loss_ignore_index=ignore_index,
        hidden_size=decoder_hidden_size,
        auxiliary_channels=decoder_hidden_size // 2,
        use_auxiliary_head=len(out_indices) >= 3,
    )
    model = UperNetForSemanticSegmentation(config)
    # `AutoBackbone.from_pretrained` asks the Hub whether a local folder is a repository in transformers 5.24, and
    # fails: load the backbone class directly.
    pretrained = PeraBackbone.from_pretrained(model_name_or_path, config=backbone_config, dtype=torch.float32)
    model.backbone.load_state_dict(pretrained.state_dict())
    return model


def finetune_segmentation(arguments: SegmentationArguments, training_arguments: TrainingArguments) -> dict[str, float]:
    """
    Fine-tunes `UperNetForSemanticSegmentation` on a PerA backbone (see [`upernet_for_pera`]) on an image/mask folder
    ([`~modeling_pera.evaluation.SegmentationFolder`], e.g. GID-MTL5) with `Trainer`, the mask value
    `arguments.ignore_index` left out of the loss and the metrics.

    Returns:
        `dict[str, float]`: the train metrics and the evaluation metrics (`eval_mean_iou`, `eval_pixel_accuracy`,
        `eval_iou_<class>`, `eval_loss`).
    """
    train_folder = SegmentationFolder.from_directory(arguments.train_dir)
    if arguments.validation_dir is None:
        (train_images, train_masks), (eval_images, eval_masks) = split_parallel_lists(
            train_folder.scene_labels,
            arguments.train_val_split,
            training_arguments.seed,
            train_folder.image_paths,
            train_folder.mask_paths,
        )
    else:
        eval_folder = SegmentationFolder.from_directory(arguments.validation_dir)
        train_images, train_masks = train_folder.image_paths, train_folder.mask_paths
        eval_images, eval_masks = eval_folder.image_paths, eval_folder.mask_paths
    class_names = arguments.class_names
    if class_names is None:
        num_classes = max(int(read_mask(path).max()) for path in train_masks) + 1
        class_names = [str(value) for value in range(num_classes)]

    processor = AutoImageProcessor.from_pretrained(
        arguments.model_name_or_path, trust_remote_code=arguments.trust_remote_code
    )
    model = upernet_for_pera(
        arguments.model_name_or_path,
        class_names,
        out_indices=arguments.out_indices,
        ignore_index=arguments.ignore_index,
        decoder_hidden_size=arguments.decoder_hidden_size,
        **parse_config_overrides(arguments.config_overrides),
    )
    image_size = _image_size(processor, arguments.image_size)
    train_dataset = SegmentationFiles(
        train_images, train_masks, processor, image_size, train=True, bands=arguments.bands
    )
    eval_dataset = SegmentationFiles(eval_images, eval_masks, processor, image_size, bands=arguments.bands)
    logger.info(
        f"Fine-tuning UperNet on {model.config.backbone_config.model_type} stages "
        f"{model.backbone.out_features} on {len(train_dataset)} images, evaluating on {len(eval_dataset)}, "
        f"{image_size} px."
    )
    trainer = LayerDecayTrainer(
        model=model,
        args=training_arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=functools.partial(
            segmentation_metrics, class_names=class_names, ignore_index=arguments.ignore_index
        ),
        preprocess_logits_for_metrics=functools.partial(segmentation_predictions, ignore_index=arguments.ignore_index),
        layer_decay=arguments.layer_decay,
    )
    return _train_and_evaluate(trainer)


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
    "segmentation_metrics",
    "segmentation_predictions",
    "upernet_for_pera",
]
