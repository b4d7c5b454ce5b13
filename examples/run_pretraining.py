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
    if not (arguments.train_dir or arguments.dataset_name or arguments.train_scenes or arguments.torchgeo_dataset):
        parser.error(
            "give the images to pretrain on: --train_dir <folder>, --dataset_name <datasets id>, --train_scenes "
            "<GeoTIFF scenes> or --torchgeo_dataset <TorchGeo class> --torchgeo_paths <its files>."
        )
    return arguments


def main():
    pretrain(parse_args())


if __name__ == "__main__":
    run_cli(main)
