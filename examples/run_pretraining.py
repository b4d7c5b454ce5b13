#!/usr/bin/env python
"""PerA pretraining with Accelerate.

    accelerate launch examples/run_pretraining.py --train_dir ../shared/data/ucmerced --output_dir outputs/pera \\
        --model_size vit-small --config_overrides image_size=224,num_prototypes=8192 --max_train_steps 1000

All flags: `python examples/run_pretraining.py --help`; the guide: docs/training.md.
"""

from transformers import HfArgumentParser

from modeling_pera.cli import HelpFormatter, run_cli
from modeling_pera.pretraining import PretrainingArguments, pretrain


def parse_args(argv: list[str] | None = None) -> PretrainingArguments:
    parser = HfArgumentParser(PretrainingArguments, description=__doc__, formatter_class=HelpFormatter)
    (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    if arguments.train_dir is None and arguments.dataset_name is None and arguments.train_scenes is None:
        parser.error(
            "give the images to pretrain on: --train_dir <folder>, --dataset_name <datasets id> or --train_scenes "
            "<GeoTIFF scenes>."
        )
    return arguments


def main():
    pretrain(parse_args())


if __name__ == "__main__":
    run_cli(main)
