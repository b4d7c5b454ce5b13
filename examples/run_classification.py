#!/usr/bin/env python
# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Fine-tunes PerA for scene classification with transformers' `Trainer`.

    python examples/run_classification.py --model_name_or_path outputs/pera-ucmerced/encoder \\
        --train_dir ../shared/data/ucmerced --output_dir outputs/pera-ucmerced-classifier \\
        --num_train_epochs 10 --per_device_train_batch_size 32 --learning_rate 1e-3 --layer_decay 0.75 \\
        --eval_strategy epoch --save_strategy no --seed 0

`--model_name_or_path` takes a PerA encoder, pretraining (its teacher is used) or classification checkpoint; the
classification head starts at random. Without `--validation_dir`, `--train_val_split` of each class is held out
(fixed by `--seed`). The fine-tuned model and its image processor are saved to `--output_dir`, where
`pipeline("image-classification", model=output_dir, trust_remote_code=True)` loads them. All flags: `--help`
(`Trainer`'s included); the guide: docs/evaluation.md.
"""

from transformers import HfArgumentParser, TrainingArguments

from modeling_pera.cli import HelpFormatter, run_cli
from modeling_pera.finetuning import ClassificationArguments, finetune_classification


def parse_args(argv: list[str] | None = None) -> tuple[ClassificationArguments, TrainingArguments]:
    parser = HfArgumentParser(
        (ClassificationArguments, TrainingArguments), description=__doc__, formatter_class=HelpFormatter
    )
    return parser.parse_args_into_dataclasses(args=argv)


def main():
    finetune_classification(*parse_args())


if __name__ == "__main__":
    run_cli(main)
