#!/usr/bin/env python
"""Can the data pipeline keep up? Images/s of the pretraining DataLoader, with the photometry in the workers
(`in_loader`) or on the training device (`on_device`: workers only cut the crops, `AlignedPairViews.finish_batch`
does the rest, batched), and the bytes each image sends from the workers to the device.

    python benchmarks/data.py --train_dir ../shared/data/ucmerced --num_workers 1 2 --markdown docs/benchmarks.md
    python benchmarks/data.py --scenes --model_size vit-tiny --config_overrides image_size=64,local_crop_size=32 \
        --num_workers 1 2 --output_json benchmarks/results/data_scenes_cpu.json --markdown docs/benchmarks.md

With --scenes it compares the two ways of pretraining on a large scene, on the same pixels: random windows read with
rasterio from the scene (`--train_scenes`, at full resolution and at half through the overviews) against the scene
cut beforehand into tiles of the window's size (`--train_dir`; the tiles with at least half their pixels valid, as
the window sampler keeps). The scene is synthetic (`modeling_pera.scene_io.write_synthetic_scene`, --scene_size px
square, default 8000, 4 uint16 bands, a nodata border of 3/16 of its side), written to a temporary folder with its
tiles of --scene_window_size px (default 256).

Crop sizes and counts come from --model_size (the reference crops: 2 x 448 + 8 x 96). Loader images/s are
measured over --batches batches after one warm-up batch, per worker count; `finish_batch` is timed on --device
(median over the same batches). A GPU step that processes N images/s needs loader images/s >= N.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
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


def time_loader(loader, batches: int) -> tuple[float, list[dict]]:
    """Seconds the loader takes to give `batches` batches after a first one (which starts the workers), and those
    batches without their sample counts."""
    from modeling_pera.views import pop_sample_counts

    endless_batches = endless(loader)
    next(endless_batches)
    seconds, timed = 0.0, []
    for _ in range(batches):
        started = time.perf_counter()
        batch = next(endless_batches)
        seconds += time.perf_counter() - started
        pop_sample_counts(batch)
        timed.append(batch)
    return seconds, timed


def loader_figures(arguments, mode: str, num_workers: int) -> dict:
    from modeling_pera import PeraConfig, PeraImageProcessor
    from modeling_pera.data import load_pretraining_dataset, make_pretraining_dataloader, make_pretraining_dataset
    from modeling_pera.pretraining import parse_config_overrides
    from modeling_pera.views import AlignedPairViews

    config = PeraConfig.from_preset(arguments.model_size, **parse_config_overrides(arguments.config_overrides))
    views = AlignedPairViews(config, PeraImageProcessor.from_preset("pera-rgb"), defer_photometry=mode == "on_device")
    dataset = make_pretraining_dataset(load_pretraining_dataset(train_dir=arguments.train_dir), views)
    loader = make_pretraining_dataloader(dataset, batch_size=arguments.batch_size, num_workers=num_workers)
    device = torch.device(arguments.device)
    if len(loader) == 0:
        raise SystemExit(f"{arguments.train_dir} has fewer images than one batch of {arguments.batch_size}.")
    loader_seconds, timed_batches = time_loader(loader, arguments.batches)
    del loader  # shuts the workers down before finish_batch is timed
    batch_bytes = sum(tensor.numel() * tensor.element_size() for tensor in timed_batches[-1].values())
    finish_images_per_second = None
    if views.defer_photometry:
        device_batches = iter([{name: tensor.to(device) for name, tensor in batch.items()} for batch in timed_batches])
        seconds, _ = median_seconds(lambda: views.finish_batch(next(device_batches)), device, len(timed_batches))
        finish_images_per_second = round(arguments.batch_size / seconds, 1)
    return {
        "mode": mode,
        "num_workers": num_workers,
        "loader_images_per_second": round(arguments.batches * arguments.batch_size / loader_seconds, 1),
        "bytes_per_image": batch_bytes // arguments.batch_size,
        "finish_images_per_second": finish_images_per_second,
    }


def cut_into_tiles(scene_path: Path, folder: Path, tile_size: int, min_valid_fraction: float = 0.5) -> int:
    """Cuts the scene into `tile_size` tiles (uncompressed TIFFs, as a chipping tool writes them), keeping those with
    at least `min_valid_fraction` valid pixels; returns how many."""
    import rasterio
    import tifffile
    from rasterio.windows import Window

    folder.mkdir()
    count = 0
    with rasterio.open(scene_path) as scene:
        for row in range(0, scene.height - tile_size + 1, tile_size):
            for col in range(0, scene.width - tile_size + 1, tile_size):
                tile = scene.read(window=Window(col, row, tile_size, tile_size), masked=True)
                if (~np.ma.getmaskarray(tile).any(axis=0)).mean() >= min_valid_fraction:
                    tifffile.imwrite(folder / f"tile_{row}_{col}.tif", tile.filled(0).transpose(1, 2, 0))
                    count += 1
    return count


def scene_rows(arguments) -> list[dict]:
    """Loader images/s from windows of a synthetic large scene and from the same scene cut into tiles."""
    from modeling_pera import PeraConfig, PeraImageProcessor
    from modeling_pera.data import (
        SceneDataset,
        load_pretraining_dataset,
        make_pretraining_dataloader,
        make_pretraining_dataset,
    )
    from modeling_pera.pretraining import parse_config_overrides
    from modeling_pera.scene_io import write_synthetic_scene
    from modeling_pera.views import AlignedPairViews

    overrides = {**parse_config_overrides(arguments.config_overrides), "num_channels": 4}
    config = PeraConfig.from_preset(arguments.model_size, **overrides)
    # statistics of the synthetic scene's 16-bit values
    processor = PeraImageProcessor(num_channels=4, image_mean=1400.0, image_std=250.0, do_rescale=False)
    views = AlignedPairViews(config, processor, defer_photometry=True)
    window = arguments.scene_window_size
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scene = write_synthetic_scene(
            Path(folder) / "scene.tif", size=arguments.scene_size, border=3 * arguments.scene_size // 16
        )
        num_tiles = cut_into_tiles(scene, Path(folder) / "tiles", window)
        sources = {
            f"scene windows, {window} px read at {window}": lambda: SceneDataset([scene], views, window_size=window),
            f"scene windows, {2 * window} px read at {window} (overviews)": lambda: SceneDataset(
                [scene], views, window_size=2 * window, sample_size=window
            ),
            f"{num_tiles} pre-chipped tiles of {window} px": lambda: make_pretraining_dataset(
                load_pretraining_dataset(train_dir=Path(folder) / "tiles"), views
            ),
        }
        for source, make_dataset in sources.items():
            for num_workers in arguments.num_workers:
                loader = make_pretraining_dataloader(
                    make_dataset(), batch_size=arguments.batch_size, num_workers=num_workers
                )
                seconds, _ = time_loader(loader, arguments.batches)
                del loader
                rows.append(
                    {
                        "source": source,
                        "num_workers": num_workers,
                        "loader_images_per_second": round(arguments.batches * arguments.batch_size / seconds, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


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
    parser.add_argument(
        "--scenes", action="store_true", help="Compare windows of a large scene with the scene cut into tiles."
    )
    parser.add_argument("--scene_size", type=int, default=8000, help="Side of the synthetic scene (--scenes).")
    parser.add_argument("--scene_window_size", type=int, default=256, help="Window and tile side (--scenes).")
    arguments = parser.parse_args()
    if arguments.scenes:
        publish_scene_rows(arguments, scene_rows(arguments))
        return
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


def publish_scene_rows(arguments, rows: list[dict]) -> None:
    report = {
        "cpu_count": len(os.sched_getaffinity(0)),
        "command": command_line(),
        "model_size": arguments.model_size,
        "config_overrides": arguments.config_overrides,
        "batch_size": arguments.batch_size,
        "scene_size": arguments.scene_size,
        "scene_window_size": arguments.scene_window_size,
        "rows": rows,
    }
    text = (
        f"{report['cpu_count']} CPU cores; a synthetic {arguments.scene_size} x {arguments.scene_size} px 4-band uint16 "
        "scene (tiled, deflate, overviews, nodata border) and the same scene cut into tiles; crops of "
        f"{arguments.model_size} "
        f"({arguments.config_overrides or 'reference crops'}), batch {arguments.batch_size}, photometry on the device "
        f"(not timed). Command: `{report['command']}`\n\n"
        + markdown_table(
            ["source", "workers", "loader images/s"],
            [[row["source"], row["num_workers"], row["loader_images_per_second"]] for row in rows],
        )
    )
    publish(report, text, arguments.output_json, arguments.markdown, arguments.section or "data-scenes")


if __name__ == "__main__":
    main()
