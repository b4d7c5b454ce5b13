#!/usr/bin/env python
"""Time of the on-device photometry of one pretraining batch on the CPU: `apply_photometry`, which computes only
the views that change, against `_photometry_of_every_view`, which computes all of them (the accelerator's path and
the CPU's path before 2026-12-03). Rows are drawn as the pipeline draws them (default probabilities).

    python benchmarks/photometry.py --output_json benchmarks/results/photometry_cpu.json   # make pretrain's batch
"""

import argparse

import torch

from reporting import command_line, device_name, markdown_table, median_seconds, publish


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--global_crops", type=int, nargs=2, default=[2, 64], help="Count and size in pixels.")
    parser.add_argument("--local_crops", type=int, nargs=2, default=[4, 32], help="Count and size in pixels.")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output_json")
    arguments = parser.parse_args()

    from modeling_pera.views import AlignedPairViews, _photometry_of_every_view, apply_photometry

    (num_global, global_size), (num_local, local_size) = arguments.global_crops, arguments.local_crops
    views = AlignedPairViews(
        global_crop_size=global_size,
        local_crop_size=local_size,
        num_global_crops=num_global,
        num_local_crops=num_local,
    )
    generator = torch.Generator().manual_seed(0)
    batches = []  # (crops, photometry rows) for each kind of crop and each role
    for count, size in ((num_global, global_size), (num_local, local_size)):
        crops = torch.rand(arguments.batch_size * count, 3, size, size, generator=generator)
        for draw in (views._student_photometry, views._teacher_photometry):
            batches.append((crops, torch.stack([draw(generator) for _ in range(len(crops))])))
    implementations = {
        "every view (before)": lambda crops, rows: _photometry_of_every_view(crops, rows, rgb=True, on_cpu=True),
        "changed views only": lambda crops, rows: apply_photometry(crops, rows, rgb=True),
    }
    milliseconds = {}
    for name, photometry in implementations.items():
        seconds, _ = median_seconds(
            lambda: [photometry(crops, rows) for crops, rows in batches], torch.device("cpu"), arguments.repeats, 2
        )
        milliseconds[name] = 1000 * seconds
    report = {
        "command": command_line(),
        "device_name": device_name(torch.device("cpu")),
        "batch": vars(arguments),
        "milliseconds_per_batch": milliseconds,
    }
    text = markdown_table(["photometry", "ms per batch"], [(name, f"{ms:.1f}") for name, ms in milliseconds.items()])
    publish(report, text, arguments.output_json, None, "photometry")


if __name__ == "__main__":
    main()
