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

import argparse
import json
from pathlib import Path

from modeling_pera.cli import HelpFormatter, run_cli
from modeling_pera.evaluation import (
    GID_MTL5_CLASS_NAMES,
    POOLINGS,
    evaluate_encoder,
    evaluate_segmentation,
    format_comparison,
    format_evaluation_summary,
    format_segmentation_summary,
)


DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ucmerced"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="Hub id or folder of the encoder and processor.")
    parser.add_argument(
        "--data_dir",
        type=Path,
        help=f"Folder <data_dir>/<class>/<image> (default without --segmentation_dir: {DEFAULT_DATA_DIR}, when present).",
    )
    parser.add_argument("--k", type=int, default=20, help="Neighbours of the kNN vote.")
    parser.add_argument("--temperature", type=float, default=0.07, help="Temperature of the kNN vote weights.")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--train_fraction", type=float, help="Fraction of each class for training (default 0.5).")
    split.add_argument("--train_per_class", type=int, help="Training images per class, instead of a fraction.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the splits and of random weights.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--image_size", type=int, help="Side of the square model input (default: the processor's).")
    parser.add_argument("--pooling", choices=POOLINGS, default="cls")
    parser.add_argument(
        "--bands",
        type=int,
        nargs="+",
        help="The images' bands to encode, in the encoder's order (0-based), e.g. 0 1 2 for the RGB of RGB+NIR tiles "
        "given to an RGB encoder; all bands by default.",
    )
    parser.add_argument("--linear_probe", action="store_true", help="Also fit a logistic-regression probe.")
    parser.add_argument("--random_init", action="store_true", help="Use random weights of the same architecture.")
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Run the Python code a non-PerA model folder or Hub repository ships (only for code you trust).",
    )
    parser.add_argument("--device", help="Default: cuda when available, else cpu.")
    parser.add_argument("--num_workers", type=int, default=0, help="Processes reading the images.")
    parser.add_argument("--cache_path", type=Path, help="File caching the features between runs.")
    parser.add_argument("--output_json", type=Path, help="Where to write the results.")
    parser.add_argument(
        "--segmentation_dir",
        type=Path,
        help="Also run the segmentation probe on <dir>/{image,mask}/<scene>/<name>.<ext> (e.g. GID-MTL5); mask value 0 "
        "is ignored.",
    )
    parser.add_argument(
        "--segmentation_class_names",
        nargs="+",
        default=list(GID_MTL5_CLASS_NAMES),
        help="The name of each mask value (default: GID-MTL5's).",
    )
    parser.add_argument(
        "--compare_to", type=Path, help="An earlier --output_json of this script: print the figures side by side."
    )
    args = parser.parse_args(argv)
    if args.compare_to is not None and not args.compare_to.is_file():
        parser.error(f"--compare_to {args.compare_to}: no such file; run this script with --output_json first.")
    if args.data_dir is None and args.segmentation_dir is None:
        if not DEFAULT_DATA_DIR.is_dir():
            parser.error(f"--data_dir is required: no dataset at the default {DEFAULT_DATA_DIR}.")
        args.data_dir = DEFAULT_DATA_DIR
    return args


def main() -> None:
    args = parse_args()
    results = {}
    if args.data_dir is not None:
        results = classify(args)
        print(format_evaluation_summary(results))
    if args.segmentation_dir is not None:
        cache_path = args.cache_path
        if cache_path is not None:  # the patch features get their own file
            cache_path = cache_path.with_name(f"{cache_path.stem}-patches{cache_path.suffix}")
        results["segmentation_probe"] = evaluate_segmentation(
            args.model_name_or_path,
            args.segmentation_dir,
            class_names=args.segmentation_class_names,
            train_fraction=args.train_fraction,
            seed=args.seed,
            batch_size=args.batch_size,
            image_size=args.image_size,
            random_init=args.random_init,
            trust_remote_code=args.trust_remote_code,
            device=args.device,
            num_workers=args.num_workers,
            cache_path=cache_path,
            bands=args.bands,
        )
        print(format_segmentation_summary(results["segmentation_probe"]))
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(json.dumps(results, indent=2) + "\n")
    if args.compare_to is not None:
        print(format_comparison(results, json.loads(args.compare_to.read_text()), str(args.compare_to)))


def classify(args: argparse.Namespace) -> dict:
    """kNN (and linear probe) results on `--data_dir`."""
    return evaluate_encoder(
        args.model_name_or_path,
        args.data_dir,
        k=args.k,
        temperature=args.temperature,
        train_fraction=args.train_fraction,
        train_per_class=args.train_per_class,
        seed=args.seed,
        batch_size=args.batch_size,
        image_size=args.image_size,
        pooling=args.pooling,
        run_linear_probe=args.linear_probe,
        random_init=args.random_init,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        num_workers=args.num_workers,
        cache_path=args.cache_path,
        bands=args.bands,
    )


if __name__ == "__main__":
    run_cli(main)
