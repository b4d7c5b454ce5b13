"""What the quality benchmarks share (representation.py, sweep.py): the settings, pretraining one configuration for
a wall-clock budget in a fresh process, and evaluating its encoders with the fixed protocols (UC Merced 20-NN and
linear probe, GID-MTL5 segmentation probe).

A budget is turned into steps from the configuration's steady-state step time: a short calibration run reports the
images/s of its second half (after start-up, worker spawn and the first steps), the real run's schedules are laid out
over a little more than the steps that fit (`SCHEDULE_MARGIN`), and the clock ends it when its training time reaches
the budget (`--max_train_minutes`). So every method trains for the same time even when its pace on a shared machine
drifts from its calibration (the last step overshoots by less than a step). Every run reports its own training time.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path


REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPOSITORY.parent / "shared" / "data"
SETTINGS = {
    "cpu": {
        "device": "cpu",
        "model_size": "vit-tiny",
        # The main job's model (`make pretrain`): 4 blocks learn more than 12 in minutes of CPU (docs/benchmarks.md).
        "config_overrides": "image_size=64,patch_size=8,local_crop_size=32,num_hidden_layers=4",
        "batch_size": 32,
        "budget_minutes": 8.0,
        # as `make pretrain`: on 2 cores one worker keeps up and a second only competes for them (docs/benchmarks.md)
        "num_workers": 1,
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


# A budgeted run's schedules cover this many times the steps its calibrated pace fits in the budget: a run up to this
# much faster than calibrated still trains for the whole budget (at the calibrated pace, the clock stops it at 83 % of
# its schedules, where the cosine lr is at 7 % of its peak).
SCHEDULE_MARGIN = 1.2


def merged_overrides(*overrides: str | None) -> str:
    return ",".join(part for part in overrides if part)


def make_job(setting: dict, method: str, train_dir: list[str], seed: int, output_dir: Path, **extra) -> dict:
    """The job of one pretraining run of `method` in `setting` (see `train_one`); `extra` adds e.g. `flags`."""
    return {
        "method": method,
        "train_dir": train_dir,
        "model_size": setting["model_size"],
        "config_overrides": setting["config_overrides"],
        "batch_size": setting["batch_size"],
        "num_workers": setting["num_workers"],
        "device": setting["device"],
        "seed": seed,
        "output_dir": str(output_dir),
        **extra,
    }


def train_one(job: dict) -> dict:
    """
    Pretrains one configuration for `job["steps"]` steps (in its own process); returns its training summary.

    `job["method"]` is `pera`, `full_view` or `mae` (the MAE baseline, through the same loop with `--method mae`);
    `job["flags"]` holds `PretrainingArguments` fields that replace the job's (the recipe, short-budget by default for
    PerA; the number of DataLoader workers; ...), except that its `config_overrides` are added to the setting's.
    """
    from modeling_pera.pretraining import PretrainingArguments, pretrain

    flags = dict(job.get("flags") or {})
    overrides = merged_overrides(job["config_overrides"], flags.pop("config_overrides", None))
    # What `accelerate launch` would be told: bf16 autocast on the GPU, else the CPU only.
    if job["device"] == "cuda":
        os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16")
    else:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    arguments = {
        "output_dir": job["output_dir"],
        "overwrite_output_dir": True,  # a benchmark re-run replaces its runs
        "train_dir": job["train_dir"],
        "model_size": job["model_size"],
        "method": "mae" if job["method"] == "mae" else "pera",
        "recipe": "short-budget",
        "per_device_train_batch_size": job["batch_size"],
        "max_train_steps": job["steps"],
        "logging_steps": job.get("logging_steps") or max(1, job["steps"] // 10),
        "seed": job["seed"],
        "dataloader_num_workers": job["num_workers"],
        "snapshot_steps": job["snapshot_steps"],
        "max_train_minutes": job.get("max_train_minutes"),
    }
    config_overrides = merged_overrides(overrides, "full_views=True" if job["method"] == "full_view" else None)
    arguments = PretrainingArguments(**{**arguments, **flags, "config_overrides": config_overrides})
    return pretrain(arguments)


def run_job(job: dict) -> dict:
    """Runs `train_one(job)` in a fresh process (its own Accelerate state and memory) and returns the summary."""
    output = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def steady_images_per_second(job: dict, steps: int) -> float:
    """Trains `job` for `steps` steps and returns the images/s of their second half (after start-up, worker spawn
    and the first steps)."""
    summary = run_job({**job, "steps": steps, "snapshot_steps": [], "logging_steps": steps // 2})
    return summary["images_per_second"]


def train_for_budget(job: dict, budget_seconds: float, calibration_steps: int, num_snapshots: int) -> dict:
    """
    Calibrates `job`'s steady-state step time on the second half of a run of `calibration_steps` steps, then trains
    until its training time reaches `budget_seconds`, with its schedules laid out over `SCHEDULE_MARGIN` times the
    steps that fit at that pace, saving the encoder at `num_snapshots - 1` evenly spaced steps of the expected run.
    Returns the run's summary with `steps` (those done), `planned_steps` (the schedules' length), `snapshot_steps`
    (those reached before the last step) and the calibrated `seconds_per_step`.
    """
    calibration_dir = Path(job["output_dir"]).with_name(Path(job["output_dir"]).name + "_calibration")
    calibration = {**job, "output_dir": str(calibration_dir)}
    seconds_per_step = job["batch_size"] / steady_images_per_second(calibration, calibration_steps)
    expected_steps = max(num_snapshots, math.floor(budget_seconds / seconds_per_step))
    planned_steps = math.ceil(SCHEDULE_MARGIN * expected_steps)
    snapshot_steps = [round(expected_steps * index / num_snapshots) for index in range(1, num_snapshots)]
    print(f"{job['output_dir']}: {seconds_per_step:.2f} s/step -> about {expected_steps} steps", flush=True)
    budgeted = {"steps": planned_steps, "snapshot_steps": snapshot_steps, "max_train_minutes": budget_seconds / 60}
    summary = run_job({**job, **budgeted})
    return {
        **summary,
        "steps": summary["completed_steps"],
        "planned_steps": planned_steps,
        # the final encoder is the run's last point, also when the clock stopped it at a snapshot's step
        "snapshot_steps": [step for step in snapshot_steps if step < summary["completed_steps"]],
        "seconds_per_step": seconds_per_step,
    }


def evaluate(
    encoder_dir: str | Path,
    data_dir: Path,
    setting: dict,
    final: bool,
    segmentation: bool = False,
    random_init: bool = False,
) -> dict:
    """UC Merced 20-NN (CLS, stratified 50/50 split); for `final` encoders also the linear probe and, with
    `segmentation`, the GID-MTL5 segmentation probe. Accuracies and mIoU as fractions."""
    from modeling_pera.evaluation import EvaluationArguments, evaluate_encoder, evaluate_segmentation

    segmentation_dir = data_dir / "gid_mtl" / "GID-MTL5"
    arguments = EvaluationArguments(
        model_name_or_path=str(encoder_dir),
        data_dir=str(data_dir / "ucmerced"),
        segmentation_dir=str(segmentation_dir),
        k=20,
        train_fraction=0.5,
        seed=0,
        image_size=setting["image_size"],
        pooling="cls",
        linear_probe=final,
        random_init=random_init,
        device=setting["device"],
        num_workers=setting["num_workers"],
        progress_bar=False,
    )
    classification = evaluate_encoder(arguments)
    result = {"knn_top1": classification["knn"]["top1_accuracy"]}
    if final:
        result["linear_probe_top1"] = classification["linear_probe"]["top1_accuracy"]
    if final and segmentation and segmentation_dir.is_dir():
        result["segmentation_miou"] = evaluate_segmentation(arguments)["mean_iou"]
    return result


def resolve_setting(name: str, **overrides) -> dict:
    """The named setting with the given (non-None) overrides and the model's `image_size`."""
    from modeling_pera import PeraConfig
    from modeling_pera.pretraining import parse_config_overrides

    setting = {**SETTINGS[name], **{key: value for key, value in overrides.items() if value is not None}}
    setting["image_size"] = PeraConfig.from_preset(
        setting["model_size"], **parse_config_overrides(setting["config_overrides"])
    ).image_size
    return setting


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        raise SystemExit("budgeted.py is a module of the benchmarks; run representation.py or sweep.py.")
    print(json.dumps(train_one(json.loads(sys.argv[2]))))
