#!/usr/bin/env python
# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Fine-tunes transformers' `UperNetForSemanticSegmentation` on a PerA backbone with `Trainer`.

    python examples/run_segmentation.py --model_name_or_path outputs/pera-ucmerced/encoder \\
        --train_dir ../shared/data/gid_mtl/GID-MTL5 --class_names undefined built-up farmland forest meadow water \\
        --ignore_index 0 --image_size 128 --output_dir outputs/upernet-gid5 --max_steps 300 \\
        --per_device_train_batch_size 16 --learning_rate 3e-4 --layer_decay 0.75 --save_strategy no --seed 0

The data is a folder `<train_dir>/{image,mask}/<scene class>/<name>.<ext>` (GID-MTL5's layout); without
`--validation_dir`, `--train_val_split` of each scene class is held out (fixed by `--seed`). Pixels labelled
`--ignore_index` are left out of the loss and of the mIoU. All flags: `--help`; the guide: docs/evaluation.md.
"""

from transformers import HfArgumentParser, TrainingArguments

from modeling_pera.cli import HelpFormatter, run_cli
from modeling_pera.finetuning import SegmentationArguments, finetune_segmentation


def parse_args(argv: list[str] | None = None) -> tuple[SegmentationArguments, TrainingArguments]:
    parser = HfArgumentParser(
        (SegmentationArguments, TrainingArguments), description=__doc__, formatter_class=HelpFormatter
    )
    return parser.parse_args_into_dataclasses(args=argv)


def main():
    finetune_segmentation(*parse_args())


if __name__ == "__main__":
    run_cli(main)
