# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""
Converts a checkpoint of the authors' reference PerA implementation to this package's layout.

    python examples/convert_pera_checkpoint.py --checkpoint_path pera_vitg16_1024.pth --output_dir converted/pera-vitg

writes the full PeraForPreTraining checkpoint to --output_dir and the teacher encoder (the network to use downstream)
to <output_dir>/encoder, both with the image processor (the released RGB statistics, 448 px) and the Hub code files.
The DINO centre is not stored in reference checkpoints: the converted model's starts at zero. See docs/conversion.md.
"""

import argparse
from pathlib import Path

from modeling_pera.cli import HelpFormatter, run_cli
from modeling_pera.conversion import NUM_HEADS_FOR_WIDTH, convert_pera_checkpoint
from modeling_pera.image_processing_pera import PERA_PROCESSOR_PRESETS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint_path", type=Path, required=True, help="The reference checkpoint (torch.save).")
    parser.add_argument("--output_dir", type=Path, required=True, help="Where to write the converted model.")
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        help=f"Attention heads per block (default: from the width, {NUM_HEADS_FOR_WIDTH}).",
    )
    parser.add_argument(
        "--processor_preset",
        choices=list(PERA_PROCESSOR_PRESETS),
        default="pera-rgb",
        help="Band statistics of the image processor (default: the released RGB statistics).",
    )
    parser.add_argument(
        "--trust-pickle",
        "--trust_pickle",
        dest="trust_pickle",
        action="store_true",
        help="Allow full unpickling when the checkpoint holds more than tensors. This runs any code the file "
        "contains: only for files from a source you trust.",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    model = convert_pera_checkpoint(
        args.checkpoint_path,
        args.output_dir,
        num_attention_heads=args.num_attention_heads,
        trust_pickle=args.trust_pickle,
        processor_preset=args.processor_preset,
    )
    config = model.config
    print(
        f"Converted a {config.hidden_size}-wide, {config.num_hidden_layers}-block PerA ({config.num_attention_heads} "
        f"heads, {config.patch_size}-pixel patches, {config.num_channels} bands, {config.image_size} px) to "
        f"{args.output_dir}; the encoder is in {args.output_dir / 'encoder'}. The DINO centre starts at zero "
        "(reference checkpoints do not store it)."
    )


if __name__ == "__main__":
    run_cli(main)
