# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""
Pictures of what a PerA encoder's features capture: for each image, the PCA of its patch features as RGB, the CLS
attention of each head in the last block and, with --gallery_dir, its nearest neighbours, saved side by side with the
input as <output_dir>/<image name>_features.png. Multispectral images are shown as an RGB composite.

    python examples/visualize_features.py --model_name_or_path outputs/pera-ucmerced/encoder \\
        --images ../shared/data/ucmerced/airplane/airplane00.jpg ../shared/data/ucmerced/harbor/harbor10.jpg \\
        --gallery_dir ../shared/data/ucmerced --output_dir outputs/feature-maps --image_size 256
"""

import argparse
from pathlib import Path

import torch

from modeling_pera.cli import HelpFormatter, run_cli
from modeling_pera.evaluation import load_encoder
from modeling_pera.raster import find_images
from modeling_pera.visualization import visualize_features


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model_name_or_path", required=True, help="Hub id or folder of the encoder and processor.")
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="The images to show.")
    parser.add_argument("--gallery_dir", type=Path, help="Folder (recursive) to retrieve nearest neighbours from.")
    parser.add_argument("--output_dir", type=Path, required=True, help="Where to write the PNGs.")
    parser.add_argument("--num_neighbours", type=int, default=5, help="Neighbours per image.")
    parser.add_argument("--image_size", type=int, help="Side of the model input (default: the processor's).")
    parser.add_argument("--dpi", type=int, default=100, help="Resolution of the PNGs.")
    parser.add_argument("--device", help="Default: cuda when available, else cpu.")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_encoder(args.model_name_or_path)
    written = visualize_features(
        model.to(device),
        processor,
        args.images,
        args.output_dir,
        gallery_paths=find_images(args.gallery_dir) if args.gallery_dir else None,
        num_neighbours=args.num_neighbours,
        image_size=args.image_size,
        dpi=args.dpi,
    )
    for path in written:
        print(path)


if __name__ == "__main__":
    run_cli(main)
