#!/usr/bin/env python
"""Representation quality at an equal wall-clock budget: PerA against full-view DINO, transformers' ViTMAE and a
random-init encoder, pretrained on the same unlabeled images with the same backbone and crops.

    python benchmarks/representation.py                  # CPU: ViT-Tiny/8, 4 blocks, 64/32 px, ~40 min on 2 cores
    python benchmarks/representation.py --setting cuda   # GPU: ViT-S/16 at 224/96 px, fits a 15-minute session

Methods:
- `pera`: PeraForPreTraining with the short-budget recipe (`modeling_pera.pretraining.RECIPES["short-budget"]`);
- `full_view`: the same model and recipe with `full_views=True` (student and teacher see every patch: DINO-style
  aligned-pair distillation without PerA's masks, no pixel prediction);
- `mae`: `ViTMAEForPreTraining` with the same encoder (`modeling_pera.baselines`), one global crop per image, trained
  by the same loop (`--method mae`);
- `random_init`: the PerA encoder with random weights (the floor, and each curve's point at time 0).

Each method first measures its steady-state step time (a short calibration run), then trains until its training time
reaches the budget (its schedules laid out over a little more than the steps that fit; see budgeted.py), saving the
encoder at evenly spaced steps. Every
saved encoder is evaluated with 20-NN on UC Merced (CLS features, stratified 50/50 split) and the final ones also
with the linear probe and, with --segmentation, the GID-MTL5 segmentation probe. Writes JSON, a markdown table into docs/benchmarks.md and a plot of
kNN accuracy against pretraining time.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from budgeted import (
    DEFAULT_DATA_DIR,
    REPOSITORY,
    SETTINGS,
    evaluate,
    make_job,
    resolve_setting,
    train_dirs,
    train_for_budget,
)
from modeling_pera.pretraining import snapshot_directory
from reporting import command_line, device_name, markdown_table, publish, save_figure, write_section


METHODS = ("pera", "full_view", "mae")


def run_table(report: dict) -> str:
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
            f"{100 * final[key]:.1f} %" if key in final else ""
            for key in ("knn_top1", "linear_probe_top1", "segmentation_miou")
        ]
        lines.append(
            f"| {method} | {row.get('steps', 0)} | {row.get('train_seconds', 0):.0f} | " + " | ".join(cells) + " |"
        )
    lines += ["", f"![kNN accuracy against pretraining time]({report['plot']})"]
    return "\n".join(lines)


PROBES = {"knn_top1": "UC Merced 20-NN", "linear_probe_top1": "linear probe", "segmentation_miou": "GID-MTL5 mIoU"}


def mean_and_spread(values: list[float]) -> str:
    """'mean ± half the range' in points, for fractions."""
    spread = f" ± {50 * (max(values) - min(values)):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.fmean(values):.1f}{spread}"


def seeds_table(reports: list[dict], paths: list[Path]) -> str:
    """The runs of several seeds (same setting): each method's mean ± half-range, then PerA's margin over each other
    method, taken seed by seed."""
    setting = reports[0]["setting"]
    finals = {method: [report["methods"][method]["final"] for report in reports] for method in reports[0]["methods"]}
    probes = [probe for probe in PROBES if all(probe in final for final in finals["random_init"])]
    rows = [
        [
            method,
            f"{statistics.fmean(report['methods'][method].get('steps', 0) for report in reports):.0f}",
            " / ".join(f"{report['methods'][method].get('train_seconds', 0):.0f}" for report in reports),
            *(mean_and_spread([final[probe] for final in finals[method]]) for probe in probes),
        ]
        for method in finals
    ]
    rows += [
        [
            f"**PerA - {method}**",
            "",
            "",
            *(
                mean_and_spread([pera[probe] - other[probe] for pera, other in zip(finals["pera"], finals[method])])
                for probe in probes
            ),
        ]
        for method in finals
        if method != "pera" and "pera" in finals
    ]
    header = (
        f"Machine: **{reports[0]['device_name']}**; {setting['model_size']} ({setting['config_overrides']}), batch "
        f"{setting['batch_size']}, {setting['budget_minutes']} min of training per method; seeds "
        f"{', '.join(str(report['seed']) for report in reports)} (mean ± half the range, in points). Commands: "
        + "; ".join(f"`{report['command']}`" for report in reports)
        + ". JSON: "
        + ", ".join(f"`{path}`" for path in paths)
        + "."
    )
    columns = ["method", "steps (mean)", "training time per seed (s)", *(PROBES[probe] for probe in probes)]
    return header + "\n\n" + markdown_table(columns, rows)


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
    save_figure(figure, path)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--budget_minutes", type=float, help="Training time per method (default: the setting's).")
    parser.add_argument("--model_size", help="Backbone preset (default: the setting's).")
    parser.add_argument("--config_overrides", help="Model settings (default: the setting's crops and patch size).")
    parser.add_argument("--batch_size", type=int, help="Images per step (default: the setting's).")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--num_snapshots", type=int, default=3, help="Encoders evaluated per method, evenly spaced.")
    parser.add_argument(
        "--calibration_steps",
        type=int,
        default=24,
        help="Steps that measure each method's speed (on their second half).",
    )
    parser.add_argument("--segmentation", action="store_true", help="Also run the GID-MTL5 probe on final encoders.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", type=Path, default=REPOSITORY / "outputs" / "representation")
    parser.add_argument("--markdown", type=Path, help="Write the table into this file (e.g. docs/benchmarks.md).")
    parser.add_argument(
        "--output_json",
        type=Path,
        help="Default: <output_dir>/representation.json; for the docs, "
        "benchmarks/results/representation_<setting>_seed<N>.json.",
    )
    parser.add_argument(
        "--seed_reports",
        type=Path,
        nargs="+",
        help="Train nothing: write the table of these runs' JSON (one per seed, e.g. "
        "benchmarks/results/representation_cpu_seed*.json) into --markdown.",
    )
    return parser.parse_args()


def train_and_evaluate(method: str, setting: dict, folders: list[str], arguments: argparse.Namespace) -> dict:
    """One method trained for the budget, its snapshots scored by 20-NN and its final encoder by every probe."""
    output_dir = arguments.output_dir / method
    job = make_job(setting, method, folders, arguments.seed, output_dir)
    run = train_for_budget(job, 60 * setting["budget_minutes"], arguments.calibration_steps, arguments.num_snapshots)
    # Training time at each snapshot, from the measured step rate of the run itself.
    seconds_per_step = run["train_seconds"] / run["completed_steps"]
    curve = [
        {
            "step": step,
            "train_seconds": step * seconds_per_step,
            **evaluate(snapshot_directory(output_dir, step), arguments.data_dir, setting, final=False),
        }
        for step in run["snapshot_steps"]
    ]
    final = evaluate(
        output_dir / "encoder", arguments.data_dir, setting, final=True, segmentation=arguments.segmentation
    )
    curve.append({"step": run["steps"], "train_seconds": run["train_seconds"], "knn_top1": final["knn_top1"]})
    return {
        "steps": run["steps"],
        "planned_steps": run["planned_steps"],
        "train_seconds": run["train_seconds"],
        "calibrated_seconds_per_step": run["seconds_per_step"],
        "final": final,
        "curve": curve,
        "loss_history": run["loss_history"],
    }


def main():
    arguments = parse_args()
    if arguments.seed_reports:
        reports = [json.loads(path.read_text()) for path in arguments.seed_reports]
        text = seeds_table(reports, arguments.seed_reports)
        print(text)
        if arguments.markdown:
            write_section(arguments.markdown, f"representation-{arguments.setting}", text)
        return
    setting = resolve_setting(
        arguments.setting,
        **{
            name: getattr(arguments, name)
            for name in ("budget_minutes", "model_size", "config_overrides", "batch_size")
        },
    )
    if setting["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--setting cuda needs a CUDA device; use the default CPU setting here.")
    folders = train_dirs(arguments.data_dir)
    report = {
        "command": command_line(),
        "device_name": device_name(torch.device(setting["device"])),
        "setting": setting,
        "seed": arguments.seed,
        "num_train_dirs": len(folders),
        "methods": {},
    }
    started = time.perf_counter()
    for method in arguments.methods:
        report["methods"][method] = train_and_evaluate(method, setting, folders, arguments)
        print(json.dumps({method: report["methods"][method]["final"]}), flush=True)
    reference_encoder = arguments.output_dir / arguments.methods[0] / "encoder"
    report["methods"]["random_init"] = {
        "final": evaluate(
            reference_encoder,
            arguments.data_dir,
            setting,
            final=True,
            segmentation=arguments.segmentation,
            random_init=True,
        ),
        "curve": [],
    }
    report["total_minutes"] = (time.perf_counter() - started) / 60

    # The plot goes beside the markdown that shows it (docs/figures/), else into the output folder.
    figures_dir = arguments.markdown.parent / "figures" if arguments.markdown else arguments.output_dir
    figure = figures_dir / f"representation_{arguments.setting}.png"
    report["plot"] = str(figure.relative_to(arguments.markdown.parent)) if arguments.markdown else str(figure)
    plot(report, figure)
    output_json = arguments.output_json or arguments.output_dir / "representation.json"
    publish(report, run_table(report), output_json, arguments.markdown, f"representation-{arguments.setting}")


if __name__ == "__main__":
    main()
