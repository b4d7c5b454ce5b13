#!/usr/bin/env python
"""Representation quality at an equal wall-clock budget: PerA against full-view DINO, transformers' ViTMAE and a
random-init encoder, pretrained on the same unlabeled images with the same backbone and crops.

    python benchmarks/representation.py                  # CPU: ViT-Tiny/8 at 64/32 px, about 60 minutes on 2 cores
    python benchmarks/representation.py --setting cuda   # GPU: ViT-S/16 at 224/96 px, fits a 15-minute session

Methods:
- `pera`: PeraForPreTraining with the short-budget recipe (`modeling_pera.training.RECIPES["short-budget"]`);
- `full_view`: the same model and recipe with `full_views=True` (student and teacher see every patch: DINO-style
  aligned-pair distillation without PerA's masks, no pixel prediction);
- `mae`: `ViTMAEForPreTraining` with the same encoder (`modeling_pera.baselines`), one global crop per image;
- `random_init`: the PerA encoder with random weights (the floor, and each curve's point at time 0).

Each method first measures its step time (two short runs, N and 2N steps, so that start-up costs cancel), then trains for as many steps as fit the budget (its
schedules laid out over them), saving the encoder at evenly spaced steps. Every saved encoder is evaluated with
20-NN on UC Merced (CLS features, stratified 50/50 split) and the final ones also with the linear probe and, with
--segmentation, the GID-MTL5 segmentation probe. Writes JSON, a markdown table into docs/benchmarks.md and a plot of
kNN accuracy against pretraining time.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from reporting import command_line, device_name, publish


REPOSITORY = Path(__file__).resolve().parents[1]
METHODS = ("pera", "full_view", "mae")
SETTINGS = {
    "cpu": {
        "device": "cpu",
        "model_size": "vit-tiny",
        "config_overrides": "image_size=64,patch_size=8,local_crop_size=32",
        "batch_size": 32,
        "budget_minutes": 14.0,
        "num_workers": 2,
    },
    "cuda": {
        "device": "cuda",
        "model_size": "vit-small",
        "config_overrides": "image_size=224,patch_size=16,local_crop_size=96",
        "batch_size": 64,
        "budget_minutes": 3.0,
        "num_workers": 8,
    },
}


def train_dirs(data_dir: Path) -> list[str]:
    """UC Merced and the GID-MTL image folders beside it (the labels are never read)."""
    folders = [data_dir / "ucmerced", *sorted(data_dir.glob("gid_mtl/GID-MTL*/image"))]
    if not folders[0].is_dir():
        raise SystemExit(f"No UC Merced images at {folders[0]}: pass --data_dir <folder holding ucmerced/>.")
    return [str(folder) for folder in folders if folder.is_dir()]


def train_one(job: dict) -> dict:
    """Pretrains one method for `job["steps"]` steps (runs in its own process); returns its training summary."""
    from modeling_pera import PeraConfig
    from modeling_pera.training import PretrainingArguments, parse_config_overrides, pretrain

    if job["method"] == "mae":
        from modeling_pera.baselines import build_mae, mae_config_from_pera, pretrain_mae
        from modeling_pera.training import build_processor

        arguments = PretrainingArguments(output_dir=job["output_dir"], model_size=job["model_size"])
        pera_config = PeraConfig.from_preset(job["model_size"], **parse_config_overrides(job["config_overrides"]))
        return pretrain_mae(
            build_mae(mae_config_from_pera(pera_config)),
            pera_config,
            build_processor(arguments, pera_config),
            train_dir=job["train_dir"],
            output_dir=job["output_dir"],
            total_steps=job["steps"],
            batch_size=job["batch_size"],
            seed=job["seed"],
            num_workers=job["num_workers"],
            device=job["device"],
            snapshot_steps=tuple(job["snapshot_steps"]),
        )
    # What `accelerate launch` would be told: bf16 autocast on the GPU (as the MAE loop uses), else the CPU only.
    if job["device"] == "cuda":
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")
    else:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    overrides = job["config_overrides"] + (",full_views=True" if job["method"] == "full_view" else "")
    arguments = PretrainingArguments(
        output_dir=job["output_dir"],
        train_dir=job["train_dir"],
        model_size=job["model_size"],
        config_overrides=overrides,
        recipe="short-budget",
        per_device_train_batch_size=job["batch_size"],
        max_train_steps=job["steps"],
        logging_steps=max(1, min(10, job["steps"] // 2)),
        seed=job["seed"],
        dataloader_num_workers=job["num_workers"],
        snapshot_steps=job["snapshot_steps"],
    )
    return pretrain(arguments)


def run_job(job: dict) -> dict:
    """Runs `train_one(job)` in a fresh process (its own Accelerate state and memory) and returns the summary."""
    output = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def evaluate(encoder_dir: str, arguments, setting: dict, final: bool, random_init: bool = False) -> dict:
    from modeling_pera.evaluation import evaluate_encoder, evaluate_segmentation

    classification = evaluate_encoder(
        encoder_dir,
        arguments.data_dir / "ucmerced",
        k=20,
        train_fraction=0.5,
        seed=0,
        image_size=setting["image_size"],
        pooling="cls",
        run_linear_probe=final,
        random_init=random_init,
        device=setting["device"],
        num_workers=setting["num_workers"],
        progress_bar=False,
    )
    result = {"knn_top1": classification["knn"]["top1_accuracy"]}
    if final:
        result["linear_probe_top1"] = classification["linear_probe"]["top1_accuracy"]
    segmentation_dir = arguments.data_dir / "gid_mtl" / "GID-MTL5"
    if final and arguments.segmentation and segmentation_dir.is_dir():
        segmentation = evaluate_segmentation(
            encoder_dir,
            segmentation_dir,
            image_size=setting["image_size"],
            random_init=random_init,
            device=setting["device"],
            seed=0,
            progress_bar=False,
        )
        result["segmentation_miou"] = segmentation["mean_iou"]
    return result


def markdown_table(report: dict) -> str:
    setting = report["setting"]
    lines = [
        f"Machine: **{report['device_name']}**; {setting['model_size']} ({setting['config_overrides']}), batch "
        f"{setting['batch_size']}, budget {setting['budget_minutes']} min of training per method; data: "
        f"{report['num_train_dirs']} folders (UC Merced + GID-MTL images). Command: `{report['command']}`",
        "",
        "| method | steps | training time (s) | UC Merced 20-NN top-1 | linear probe top-1 | GID-MTL5 probe mIoU |",
        "|---|---|---|---|---|---|",
    ]
    for method, row in report["methods"].items():
        final = row["final"]
        cells = [
            f"{100 * final[key]:.1f} %" if key in final else "" for key in ("knn_top1", "linear_probe_top1", "segmentation_miou")
        ]
        lines.append(
            f"| {method} | {row.get('steps', 0)} | {row.get('train_seconds', 0):.0f} | " + " | ".join(cells) + " |"
        )
    lines += ["", f"![kNN accuracy against pretraining time]({report['plot']})"]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    floor = report["methods"]["random_init"]["final"]["knn_top1"]
    for method, row in report["methods"].items():
        if method == "random_init":
            axes.axhline(100 * floor, color="gray", linestyle="--", label="random init")
            continue
        times = [0.0] + [point["train_seconds"] for point in row["curve"]]
        accuracies = [floor] + [point["knn_top1"] for point in row["curve"]]
        axes.plot([t / 60 for t in times], [100 * a for a in accuracies], marker="o", label=method)
    axes.set_xlabel("pretraining time (min)")
    axes.set_ylabel("UC Merced 20-NN top-1 (%)")
    axes.set_title(f"{report['setting']['model_size']}, {report['device_name']}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--data_dir", type=Path, default=REPOSITORY.parent / "shared" / "data")
    parser.add_argument("--budget_minutes", type=float, help="Training time per method (default: the setting's).")
    parser.add_argument("--model_size", help="Backbone preset (default: the setting's).")
    parser.add_argument("--config_overrides", help="Model settings (default: the setting's crops and patch size).")
    parser.add_argument("--batch_size", type=int, help="Images per step (default: the setting's).")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--num_snapshots", type=int, default=3, help="Encoders evaluated per method, evenly spaced.")
    parser.add_argument("--calibration_steps", type=int, default=12, help="Steps that measure each method's speed.")
    parser.add_argument("--segmentation", action="store_true", help="Also run the GID-MTL5 probe on final encoders.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=REPOSITORY / "outputs" / "representation")
    parser.add_argument("--markdown", type=Path, help="Write the table into this file (e.g. docs/benchmarks.md).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(train_one(json.loads(arguments.worker))))
        return

    setting = dict(SETTINGS[arguments.setting])
    for name in ("budget_minutes", "model_size", "config_overrides", "batch_size"):
        if getattr(arguments, name) is not None:
            setting[name] = getattr(arguments, name)
    from modeling_pera import PeraConfig
    from modeling_pera.training import parse_config_overrides, snapshot_directory

    setting["image_size"] = PeraConfig.from_preset(
        setting["model_size"], **parse_config_overrides(setting["config_overrides"])
    ).image_size
    if setting["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--setting cuda needs a CUDA device; use the default CPU setting here.")
    folders = train_dirs(arguments.data_dir)
    budget_seconds = 60 * setting["budget_minutes"]
    report = {
        "command": command_line(),
        "device_name": device_name(torch.device(setting["device"])),
        "setting": setting,
        "num_train_dirs": len(folders),
        "methods": {},
    }
    started = time.perf_counter()
    for method in arguments.methods:
        job = {
            "method": method,
            "train_dir": folders,
            "model_size": setting["model_size"],
            "config_overrides": setting["config_overrides"],
            "batch_size": setting["batch_size"],
            "num_workers": setting["num_workers"],
            "device": setting["device"],
            "seed": arguments.seed,
        }
        # Two short runs: the difference of their times is the step time without the start-up of the first steps.
        calibration_seconds = [
            run_job({**job, "steps": steps, "snapshot_steps": [],
                     "output_dir": str(arguments.output_dir / "calibration" / f"{method}_{steps}")})["train_seconds"]
            for steps in (arguments.calibration_steps, 2 * arguments.calibration_steps)
        ]
        seconds_per_step = max(calibration_seconds[1] - calibration_seconds[0], 1e-3) / arguments.calibration_steps
        steps = max(arguments.num_snapshots, math.floor(budget_seconds / seconds_per_step))
        snapshot_steps = [round(steps * index / arguments.num_snapshots) for index in range(1, arguments.num_snapshots)]
        print(f"{method}: {seconds_per_step:.2f} s/step -> {steps} steps", flush=True)
        output_dir = arguments.output_dir / method
        summary = run_job({**job, "steps": steps, "snapshot_steps": snapshot_steps, "output_dir": str(output_dir)})

        # Training time at each snapshot, from the measured step rate of the run itself.
        seconds_per_step = summary["train_seconds"] / summary["completed_steps"]
        curve = []
        for step in snapshot_steps:
            curve.append({"step": step, "train_seconds": step * seconds_per_step,
                          **evaluate(str(snapshot_directory(output_dir, step)), arguments, setting, final=False)})
        final = evaluate(str(output_dir / "encoder"), arguments, setting, final=True)
        curve.append({"step": steps, "train_seconds": summary["train_seconds"], "knn_top1": final["knn_top1"]})
        report["methods"][method] = {
            "steps": steps, "train_seconds": summary["train_seconds"], "final": final, "curve": curve,
            "loss_history": summary["loss_history"],
        }
        print(json.dumps({method: report["methods"][method]["final"]}), flush=True)
    reference_encoder = arguments.output_dir / arguments.methods[0] / "encoder"
    report["methods"]["random_init"] = {
        "final": evaluate(str(reference_encoder), arguments, setting, final=True, random_init=True), "curve": []
    }
    report["total_minutes"] = (time.perf_counter() - started) / 60

    # The plot goes beside the markdown that shows it (docs/figures/), else into the output folder.
    figures_dir = arguments.markdown.parent / "figures" if arguments.markdown else arguments.output_dir
    figure = figures_dir / f"representation_{arguments.setting}.png"
    report["plot"] = str(figure.relative_to(arguments.markdown.parent)) if arguments.markdown else str(figure)
    plot(report, figure)
    publish(
        report, markdown_table(report), arguments.output_dir / "representation.json", arguments.markdown,
        f"representation-{arguments.setting}",
    )


if __name__ == "__main__":
    main()
