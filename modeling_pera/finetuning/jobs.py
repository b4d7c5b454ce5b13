# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The two fine-tuning jobs with `Trainer`, end to end: `finetune_classification` ([`PeraForImageClassification`] on
class folders) and `finetune_segmentation` (transformers' `UperNetForSemanticSegmentation` on a [`PeraBackbone`],
built by `upernet_for_pera`, on image/mask folders)."""

import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from ..configuration_pera import PeraConfig
from ..evaluation import (
    ImageFolder,
    SegmentationFolder,
    preprocess_image_file,
    processor_size_kwargs,
    read_mask,
    stratified_split,
)
from ..modeling_pera import PeraBackbone
from ..pretraining import parse_config_overrides
from .arguments import UNLABELLED_MASK_VALUE, UPERNET_HIDDEN_SIZE, ClassificationArguments, SegmentationArguments
from .datasets import ImageClassificationFiles, RandomResizedCropTransform, SegmentationFiles
from .layer_decay import LayerDecayTrainer
from .metrics import classification_metrics, segmentation_metrics, segmentation_predictions


logger = logging.getLogger(__name__)


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


def pyramid_out_indices(num_hidden_layers: int) -> list[int]:
    """The encoder stages a dense decoder reads by default: 4 evenly spaced blocks ending with the last, e.g.
    `[3, 6, 9, 12]` (fewer when the encoder has fewer than 4 blocks)."""
    return sorted({num_hidden_layers * quarter // 4 for quarter in range(1, 5)} - {0})


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
    backbone_config.out_indices = list(out_indices or pyramid_out_indices(backbone_config.num_hidden_layers))
    config = UperNetConfig(
        backbone_config=backbone_config,
        id2label=dict(enumerate(class_names)),
        label2id={name: index for index, name in enumerate(class_names)},
        loss_ignore_index=ignore_index,
        hidden_size=decoder_hidden_size,
        auxiliary_channels=decoder_hidden_size // 2,
        use_auxiliary_head=len(backbone_config.out_indices) >= 3,
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
