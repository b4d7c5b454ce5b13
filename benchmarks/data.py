#!/usr/bin/env python
"""Can the data pipeline keep up? Images/s of the pretraining DataLoader, with the photometry in the workers
(`in_loader`) or on the training device (`on_device`: workers only cut the crops, `AlignedPairViews.finish_batch`
does the rest, batched), and the bytes each image sends from the workers to the device.

    python benchmarks/data.py --train_dir ../shared/data/ucmerced --num_workers 1 2 --markdown docs/benchmarks.md

Crop sizes and counts come from --model_size (the reference crops: 2 x 448 + 8 x 96). Loader images/s are
measured over --batches batches after one warm-up batch, per worker count; `finish_batch` is timed on --device
(median over the same batches). A GPU step that processes N images/s needs loader images/s >= N.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from reporting import command_line, device_name, markdown_table, median_seconds, publish


MODES = ("in_loader", "on_device")


def endless(loader):
    """The loader's batches, epoch after epoch (a small folder still gives as many batches as asked for)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def loader_figures(arguments, mode: str, num_workers: int) -> dict:
    from modeling_pera import PeraConfig, PeraImageProcessor
    from modeling_pera.data import load_pretraining_dataset, make_pretraining_dataloader, make_pretraining_dataset
    from modeling_pera.pretraining import parse_config_overrides
    from modeling_pera.views import AlignedPairViews, pop_sample_counts

    config = PeraConfig.from_preset(arguments.model_size, **parse_config_overrides(arguments.config_overrides))
    views = AlignedPairViews(config, PeraImageProcessor.from_preset("pera-rgb"), defer_photometry=mode == "on_device")
    dataset = make_pretraining_dataset(load_pretraining_dataset(train_dir=arguments.train_dir), views)
    loader = make_pretraining_dataloader(dataset, batch_size=arguments.batch_size, num_workers=num_workers)
    device = torch.device(arguments.device)
    if len(loader) == 0:
        raise SystemExit(f"{arguments.train_dir} has fewer images than one batch of {arguments.batch_size}.")
    batches = endless(loader)
    next(batches)  # starts the workers
    loader_seconds, deferred_batches, batch_bytes = 0.0, [], 0
    for _ in range(arguments.batches):
        started = time.perf_counter()
        batch = next(batches)
        loader_seconds += time.perf_counter() - started
        pop_sample_counts(batch)
        batch_bytes = sum(tensor.numel() * tensor.element_size() for tensor in batch.values())
        if views.defer_photometry:
            deferred_batches.append(batch)
    del batches, loader  # shuts the workers down before finish_batch is timed
    finish_images_per_second = None
    if views.defer_photometry:
        device_batches = iter(
            [{name: tensor.to(device) for name, tensor in batch.items()} for batch in deferred_batches]
        )
        seconds, _ = median_seconds(lambda: views.finish_batch(next(device_batches)), device, len(deferred_batches))
        finish_images_per_second = round(arguments.batch_size / seconds, 1)
    return {
        "mode": mode,
        "num_workers": num_workers,
        "loader_images_per_second": round(arguments.batches * arguments.batch_size / loader_seconds, 1),
        "bytes_per_image": batch_bytes // arguments.batch_size,
        "finish_images_per_second": finish_images_per_second,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--train_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ucmerced")
    )
    parser.add_argument("--model_size", default="vit-base")
    parser.add_argument("--config_overrides", default="")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--num_workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Runs finish_batch.")
    parser.add_argument("--output_json")
    parser.add_argument("--markdown", type=Path, help="Write the table into this file (e.g. docs/benchmarks.md).")
    parser.add_argument("--section", help="Name of the table's block (default: data-<device type>).")
    arguments = parser.parse_args()
    if not Path(arguments.train_dir).is_dir():
        raise SystemExit(f"No image folder at {arguments.train_dir}: pass --train_dir.")

    rows = []
    for num_workers in arguments.num_workers:
        for mode in MODES:
            rows.append(loader_figures(arguments, mode, num_workers))
            print(json.dumps(rows[-1]), flush=True)
    device = torch.device(arguments.device)
    report = {
        "device": device_name(device),
        "cpu_count": len(os.sched_getaffinity(0)),
        "command": command_line(),
        "model_size": arguments.model_size,
        "batch_size": arguments.batch_size,
        "rows": rows,
    }
    text = (
        f"{report['cpu_count']} CPU cores; finish_batch on **{report['device']}**; crops of {arguments.model_size} "
        f"({arguments.config_overrides or 'reference crops'}), batch {arguments.batch_size}, images from "
        f"`{Path(arguments.train_dir).name}`. Command: `{report['command']}`\n\n"
        + markdown_table(
            ["photometry", "workers", "loader images/s", "MB per image to the device", "finish_batch images/s"],
            [
                [
                    row["mode"],
                    row["num_workers"],
                    row["loader_images_per_second"],
                    f"{row['bytes_per_image'] / 1e6:.2f}",
                    row["finish_images_per_second"] or "",
                ]
                for row in rows
            ],
        )
    )
    publish(report, text, arguments.output_json, arguments.markdown, arguments.section or f"data-{device.type}")


if __name__ == "__main__":
    main()
