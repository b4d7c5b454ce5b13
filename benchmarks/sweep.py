#!/usr/bin/env python
"""A grid of PerA pretraining configurations, each trained for the same wall-clock budget and evaluated with the
fixed protocols: UC Merced 20-NN and linear probe, and (with --segmentation) the GID-MTL5 segmentation probe.

    python benchmarks/sweep.py benchmarks/sweeps/cpu_levers.json --seeds 0 1 --segmentation --markdown docs/benchmarks.md

A grid is a JSON file: the setting (`cpu` or `cuda`, see budgeted.py), the budget, and named configurations, each a
set of `PretrainingArguments` fields on top of the short-budget recipe (its `config_overrides` are added to the
setting's crops and patch size):

    {"setting": "cpu", "budget_minutes": 3,
     "configs": {"short-budget": {}, "lr 5e-4": {"learning_rate": 5e-4},
                 "4 local crops": {"config_overrides": "num_local_crops=4"}}}

Each configuration is calibrated (steady-state step time) and then trained for as many steps as fit the budget, so
a faster configuration gets more steps. Writes benchmarks/results/sweep_<grid>.json (every run), a table (mean and
spread over seeds) and a bar chart (docs/figures/sweep_<grid>.png next to --markdown).

With --speed_only, each configuration only runs its calibration (real data, the real training loop) and the table
gives its steady-state images/s, relative to the first configuration: a before/after table of speed options.
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
    evaluate,
    make_job,
    resolve_setting,
    steady_images_per_second,
    train_dirs,
    train_for_budget,
)
from reporting import command_line, device_name, markdown_table, publish, save_figure


METRICS = {"knn_top1": "UC Merced 20-NN", "linear_probe_top1": "linear probe", "segmentation_miou": "GID-MTL5 mIoU"}


def load_grid(path: Path) -> dict:
    grid = json.loads(path.read_text())
    if not isinstance(grid.get("configs"), dict) or not grid["configs"]:
        raise SystemExit(f"{path}: a grid needs a non-empty 'configs' object of named PretrainingArguments fields.")
    return grid


def mean_and_spread(values: list[float]) -> str:
    """'mean ± half the range' in percent ('mean' alone for one value)."""
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {50 * (max(values) - min(values)):.1f}"


def summarize(report: dict) -> str:
    metrics = [key for key in METRICS if any(key in run["final"] for run in report["runs"])]
    rows = []
    for name, flags in {**report["configs"], "random init": None}.items():
        runs = [run for run in report["runs"] if run["config"] == name]
        if not runs:
            continue
        cells = [mean_and_spread([run["final"][key] for run in runs]) for key in metrics]
        if flags is None:
            rows.append([name, "", "", "", *cells])
            continue
        changes = ", ".join(f"{key}={value}" for key, value in flags.items()) or "(the recipe)"
        rows.append(
            [
                name,
                changes,
                round(statistics.fmean(run["steps"] for run in runs)),
                f"{statistics.fmean(run['train_seconds'] for run in runs):.0f}",
                *cells,
            ]
        )
    setting = report["setting"]
    return (
        f"Machine: **{report['device_name']}**; {setting['model_size']} ({setting['config_overrides']}), batch "
        f"{setting['batch_size']}, {setting['budget_minutes']} min of training per run, short-budget recipe plus each "
        f"configuration's changes; seeds {report['seeds']} (mean ± half the range). Command: `{report['command']}`\n\n"
        + markdown_table(
            ["configuration", "changes", "steps", "training (s)", *(METRICS[key] + " (%)" for key in metrics)], rows
        )
        + f"\n\n![sweep results]({report['plot']})"
    )


def speed_table(report: dict) -> str:
    rows, baseline = [], None
    for name, flags in report["configs"].items():
        rates = [run["images_per_second"] for run in report["runs"] if run["config"] == name]
        baseline = baseline or statistics.fmean(rates)
        changes = ", ".join(f"{key}={value}" for key, value in flags.items()) or "(the recipe)"
        spread = f" ± {(max(rates) - min(rates)) / 2:.1f}" if len(rates) > 1 else ""
        rows.append(
            [name, changes, f"{statistics.fmean(rates):.1f}{spread}", f"{statistics.fmean(rates) / baseline:.2f}x"]
        )
    setting = report["setting"]
    return (
        f"Machine: **{report['device_name']}**; {setting['model_size']} ({setting['config_overrides']}), batch "
        f"{setting['batch_size']}, the pretraining loop on real images ({setting['num_workers']} DataLoader workers); "
        f"images/s of the second half of {report['calibration_steps']} steps, seeds {report['seeds']}. "
        f"Command: `{report['command']}`\n\n"
        + markdown_table(["configuration", "changes", "images/s", "vs the first"], rows)
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [key for key in METRICS if any(key in run["final"] for run in report["runs"])]
    names = [*report["configs"], "random init"]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.45 * len(names) + 1.5), squeeze=False)
    for axis, key in zip(axes[0], metrics):
        for row, name in enumerate(names):
            values = [
                100 * run["final"][key] for run in report["runs"] if run["config"] == name and key in run["final"]
            ]
            if name == "random init" and values:
                axis.axvline(values[0], color="gray", linestyle="--")
            if values:
                axis.plot(values, [row] * len(values), ".", color="tab:blue", alpha=0.5)
                axis.plot(statistics.fmean(values), row, "o", color="gray" if name == "random init" else "tab:blue")
        axis.set_yticks(range(len(names)), names if axis is axes[0][0] else [""] * len(names))
        axis.set_ylim(len(names) - 0.5, -0.5)
        axis.set_xlabel(METRICS[key] + " (%)")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{report['grid']}: {report['setting']['budget_minutes']} min per run, {report['device_name']}")
    figure.tight_layout()
    save_figure(figure, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path, help="The grid's JSON file (e.g. benchmarks/sweeps/cpu_levers.json).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--configs", nargs="+", help="Run only these configurations of the grid.")
    parser.add_argument("--budget_minutes", type=float, help="Training time per run (default: the grid's).")
    parser.add_argument("--batch_size", type=int, help="Images per step (default: the setting's).")
    parser.add_argument(
        "--calibration_steps", type=int, default=24, help="Steps that measure each run's speed (on their second half)."
    )
    parser.add_argument("--segmentation", action="store_true", help="Also run the GID-MTL5 segmentation probe.")
    parser.add_argument("--speed_only", action="store_true", help="Only measure each configuration's images/s.")
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--output_dir", type=Path, help="Runs go here (default: outputs/sweep_<grid>).")
    parser.add_argument("--output_json", type=Path, help="Default: benchmarks/results/sweep_<grid>.json.")
    parser.add_argument("--markdown", type=Path, help="Write the table into this file (e.g. docs/benchmarks.md).")
    arguments = parser.parse_args()

    grid = load_grid(arguments.grid)
    name = arguments.grid.stem
    configs = grid["configs"]
    if arguments.configs:
        unknown = set(arguments.configs) - set(configs)
        if unknown:
            raise SystemExit(f"--configs {sorted(unknown)} are not in {arguments.grid}; it has {sorted(configs)}.")
        configs = {key: configs[key] for key in arguments.configs}
    setting = resolve_setting(
        grid.get("setting", "cpu"),
        budget_minutes=arguments.budget_minutes or grid.get("budget_minutes"),
        batch_size=arguments.batch_size,
        **{key: grid[key] for key in ("model_size", "config_overrides") if key in grid},
    )
    if setting["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{arguments.grid} is a CUDA grid and there is no CUDA device here.")
    output_dir = arguments.output_dir or REPOSITORY / "outputs" / f"sweep_{name}"
    folders = train_dirs(arguments.data_dir)
    report = {
        "grid": name,
        "command": command_line(),
        "device_name": device_name(torch.device(setting["device"])),
        "setting": setting,
        "seeds": arguments.seeds,
        "configs": configs,
        "runs": [],
    }
    started = time.perf_counter()
    for seed in arguments.seeds:
        for index, (config_name, flags) in enumerate(configs.items()):
            run_dir = output_dir / f"seed{seed}" / f"{index:02d}"
            job = make_job(setting, "pera", folders, seed, run_dir, flags=flags)
            if arguments.speed_only:
                images_per_second = steady_images_per_second(job, arguments.calibration_steps)
                report["runs"].append({"config": config_name, "seed": seed, "images_per_second": images_per_second})
            else:
                run = train_for_budget(
                    job, 60 * setting["budget_minutes"], arguments.calibration_steps, num_snapshots=1
                )
                final = evaluate(
                    run_dir / "encoder", arguments.data_dir, setting, final=True, segmentation=arguments.segmentation
                )
                report["runs"].append(
                    {
                        "config": config_name,
                        "seed": seed,
                        "steps": run["steps"],
                        "planned_steps": run["planned_steps"],
                        "train_seconds": run["train_seconds"],
                        "calibrated_seconds_per_step": run["seconds_per_step"],
                        "final": final,
                        "last_losses": {
                            key: run.get(key) for key in ("loss", "dino_loss", "pixel_loss", "teacher_entropy")
                        },
                    }
                )
            print(json.dumps(report["runs"][-1]), flush=True)
    output_json = arguments.output_json or REPOSITORY / "benchmarks" / "results" / f"sweep_{name}.json"
    if arguments.speed_only:
        report["calibration_steps"] = arguments.calibration_steps
        publish(report, speed_table(report), output_json, arguments.markdown, f"sweep-{name}")
        return
    random_init = evaluate(
        output_dir / f"seed{arguments.seeds[0]}" / "00" / "encoder",
        arguments.data_dir,
        setting,
        final=True,
        segmentation=arguments.segmentation,
        random_init=True,
    )
    report["runs"].append({"config": "random init", "seed": None, "final": random_init})
    report["total_minutes"] = (time.perf_counter() - started) / 60

    figures_dir = arguments.markdown.parent / "figures" if arguments.markdown else output_dir
    figure = figures_dir / f"sweep_{name}.png"
    report["plot"] = str(figure.relative_to(arguments.markdown.parent)) if arguments.markdown else str(figure)
    plot(report, figure)
    publish(report, summarize(report), output_json, arguments.markdown, f"sweep-{name}")


if __name__ == "__main__":
    main()
