#!/usr/bin/env python
"""PerA pretraining with Accelerate.

    accelerate launch examples/run_pretraining.py --train_dir ../shared/data/ucmerced --output_dir outputs/pera \\
        --model_size vit-small --config_overrides image_size=224,num_prototypes=8192 --max_train_steps 1000

All flags: `python examples/run_pretraining.py --help`; the guide: docs/training.md.
"""

from transformers import HfArgumentParser

from modeling_pera.pretraining import PretrainingArguments, pretrain


def main():
    (arguments,) = HfArgumentParser(PretrainingArguments).parse_args_into_dataclasses()
    if arguments.train_dir is None and arguments.dataset_name is None:
        raise SystemExit("Give the images to pretrain on: --train_dir <folder> or --dataset_name <datasets id>.")
    pretrain(arguments)


if __name__ == "__main__":
    main()
