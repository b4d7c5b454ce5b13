# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""
Evaluates a frozen vision encoder on a labelled image folder with weighted kNN (and optionally a linear probe), and
with a linear segmentation probe on an image/mask folder (`--segmentation_dir`).

Works with any `AutoModel`-loadable vision encoder that has an image processor: a PerA checkpoint folder, or a stock
one such as ViT-MAE or DINOv2. Example, on UC Merced and GID-MTL5 beside the repository:

    python examples/run_eval.py --model_name_or_path path/to/pera-checkpoint --linear_probe \
        --segmentation_dir ../shared/data/gid_mtl/GID-MTL5 --output_json eval.json

Add `--random_init` for the same architecture with random weights (the random-init baseline), and
`--compare_to other.json` to print this evaluation next to an earlier one (e.g. the random-init baseline's).
"""

from pathlib import Path

from transformers import HfArgumentParser

from modeling_pera.cli import HelpFormatter, run_cli
from modeling_pera.evaluation import EvaluationArguments, run_evaluation


DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ucmerced"


def parse_args(argv: list[str] | None = None) -> EvaluationArguments:
    parser = HfArgumentParser(EvaluationArguments, description=__doc__, formatter_class=HelpFormatter)
    (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    if arguments.data_dir is None and arguments.segmentation_dir is None:
        if not DEFAULT_DATA_DIR.is_dir():
            parser.error(f"--data_dir is required: no dataset at the default {DEFAULT_DATA_DIR}.")
        arguments.data_dir = str(DEFAULT_DATA_DIR)
    return arguments


def main() -> None:
    run_evaluation(parse_args())


if __name__ == "__main__":
    run_cli(main)
