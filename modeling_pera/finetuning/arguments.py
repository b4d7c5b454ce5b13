# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The flags of the fine-tuning scripts besides `TrainingArguments`: those both jobs share (`FinetuningArguments`),
and those of classification (`ClassificationArguments`) and segmentation (`SegmentationArguments`)."""

from dataclasses import dataclass, field

from ..evaluation import BANDS_HELP


# The defaults of the segmentation job and of `upernet_for_pera`: GID-MTL5's mask value of unlabelled pixels, and
# a decoder width for ViT-Tiny/Small encoders (UperNet's own 512 is made for ConvNeXt/Swin pyramids).
UNLABELLED_MASK_VALUE = 0
UPERNET_HIDDEN_SIZE = 256


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
