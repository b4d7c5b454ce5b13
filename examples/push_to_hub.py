#!/usr/bin/env python
# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Uploads a saved PerA model folder (an exported `encoder/`, a fine-tuned model) to a Hub model repository.

    python examples/push_to_hub.py --model_dir outputs/pera-ucmerced/encoder --hub_model_id your-name/pera-vit-tiny-rs

This is the upload `run_pretraining.py --push_to_hub` does at the end, alone: to retry one that failed, or to share a
model trained without the flag. A folder without a model card (README.md) gets one written from its files first.
"""

import argparse
from pathlib import Path

from modeling_pera.cli import HelpFormatter, run_cli
from modeling_pera.hub import check_hub_access, push_folder_to_hub, write_model_card


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model_dir", type=Path, required=True, help="The folder written by save_pretrained.")
    parser.add_argument("--hub_model_id", required=True, help="The repository, e.g. your-name/pera-vit-tiny-rs.")
    parser.add_argument("--hub_token", help="A token with write access (default: the logged-in one).")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if not (args.model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"--model_dir {args.model_dir} holds no config.json: give the folder of a saved model."
        )
    check_hub_access(args.hub_model_id, args.hub_token)
    if not (args.model_dir / "README.md").is_file():
        write_model_card(args.model_dir, repo_id=args.hub_model_id)
    repo_id = push_folder_to_hub(args.model_dir, args.hub_model_id, token=args.hub_token, private=args.private)
    print(f"Uploaded {args.model_dir} to https://huggingface.co/{repo_id}")


if __name__ == "__main__":
    run_cli(main)
