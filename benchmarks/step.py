#!/usr/bin/env python
"""Training-step speed and memory: PerA against the same model with full views and transformers' ViTMAE.

    python benchmarks/step.py --device cuda --model_size vit-base --batch_sizes 24 64 --find_max_batch \\
        --output_json bench.json --markdown docs/benchmarks.md --section h100-vit-base

A step is forward + backward + gradient clipping + optimizer (+ EMA for PerA), on synthetic inputs already on the
device (or, with --train_dir, on real batches from the pretraining DataLoader: "data included", the transfer to the
device and, with --photometry_on_device, `finish_batch` counted in the step). Each measurement runs in a fresh
process, so peak memory is its own: CUDA `max_memory_allocated`, CPU peak resident set size. Options measure the
fast paths: --compile [MODE], --activation_checkpointing {full,selective}.

Variants:
- `pera`: PeraForPreTraining as configured (student sees 20 %, teacher 60 % of each crop's patches);
- `full_view`: the same model with `full_views=True` (student and teacher see every patch, no mask tokens);
- `mae`: `ViTMAEForPreTraining` with the same encoder size, patch and global crop size, one global crop per image
  (MAE's own recipe; see `modeling_pera.baselines.mae_config_from_pera` for the decoder).
"""

import argparse
import json
import subprocess
import sys

import torch

from reporting import command_line, device_name, markdown_table, median_seconds, peak_memory_bytes, publish


VARIANTS = ("pera", "full_view", "mae")


def build(variant: str, config, device: torch.device):
    from modeling_pera import PeraForPreTraining
    from modeling_pera.baselines import build_mae, mae_config_from_pera
    from modeling_pera.pretraining import parameter_groups

    if variant == "mae":
        model = build_mae(mae_config_from_pera(config))
    else:
        config.full_views = variant == "full_view"
        model = PeraForPreTraining(config)
    return model.to(device).train(), parameter_groups(model)


def synthetic_batch(variant: str, config, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    if variant == "mae":
        return {
            "pixel_values": torch.randn(
                batch_size, config.num_channels, config.image_size, config.image_size, device=device
            )
        }

    def views(num_crops, size):
        return torch.randn(num_crops, batch_size, config.num_channels, size, size, device=device)

    return {
        "student_global_pixel_values": views(config.num_global_crops, config.image_size),
        "teacher_global_pixel_values": views(config.num_global_crops, config.image_size),
        "student_local_pixel_values": views(config.num_local_crops, config.local_crop_size),
        "teacher_local_pixel_values": views(config.num_local_crops, config.local_crop_size),
    }


def real_batches(config, arguments, device: torch.device):
    """Batches from the pretraining DataLoader, moved to `device` (and finished there with --photometry_on_device)."""
    from modeling_pera import PeraImageProcessor
    from modeling_pera.data import load_pretraining_dataset, make_pretraining_dataloader, make_pretraining_dataset
    from modeling_pera.views import AlignedPairViews, pop_sample_counts

    views = AlignedPairViews(
        config, PeraImageProcessor.from_preset("pera-rgb"), defer_photometry=arguments.photometry_on_device
    )
    dataset = make_pretraining_dataset(load_pretraining_dataset(train_dir=arguments.train_dir), views)
    loader = make_pretraining_dataloader(dataset, batch_size=arguments.batch_size, num_workers=arguments.num_workers)
    while True:
        for batch in loader:
            pop_sample_counts(batch)
            batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
            yield views.finish_batch(batch) if views.defer_photometry else batch


def data_label(arguments) -> str:
    if not arguments.train_dir:
        return "synthetic"
    return "real, photometry on device" if arguments.photometry_on_device else "real"


def measure(arguments) -> dict:
    """One (variant, batch size) measurement; runs in its own process."""
    from modeling_pera import PeraConfig
    from modeling_pera.pretraining import apply_schedule, parse_config_overrides
    from modeling_pera.schedules import PretrainingSchedule

    device = torch.device(arguments.device)
    config = PeraConfig.from_preset(arguments.model_size, **parse_config_overrides(arguments.config_overrides))
    model, groups = build(arguments.variant, config, device)
    if arguments.activation_checkpointing and arguments.variant != "mae":
        from modeling_pera.pretraining import enable_activation_checkpointing

        enable_activation_checkpointing(model, arguments.activation_checkpointing)
    optimizer = torch.optim.AdamW(groups, lr=1e-4, eps=2e-5, fused=device.type == "cuda")
    apply_schedule(optimizer, PretrainingSchedule(total_steps=100).at(50))
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    if arguments.train_dir and arguments.variant != "mae":
        batches = real_batches(config, arguments, device)
    else:
        fixed = synthetic_batch(arguments.variant, config, arguments.batch_size, device)
        batches = iter(lambda: fixed, None)
    extra = {} if arguments.variant == "mae" else {"teacher_temperature": torch.tensor(0.04, device=device)}
    forward = torch.compile(model, mode=arguments.compile) if arguments.compile else model
    memory_before_steps = peak_memory_bytes(device) / 2**30

    def training_step() -> torch.Tensor:
        batch = next(batches)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=arguments.bf16):
            loss = forward(**batch, **extra).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if arguments.variant != "mae":
            model.update_teacher(0.996)
        return loss

    step_time, loss = median_seconds(training_step, device, arguments.steps, arguments.warmup)
    peak_gib = peak_memory_bytes(device) / 2**30
    return {
        "variant": arguments.variant,
        "batch_size": arguments.batch_size,
        "data": data_label(arguments) if arguments.variant != "mae" else "synthetic",
        "step_time_s": round(step_time, 4),
        "images_per_second": round(arguments.batch_size / step_time, 1),
        "peak_memory_gib": round(peak_gib, 2),
        # what the steps add on top of the model, optimizer-free weights and inputs (on the CPU, the RSS also counts
        # the Python process itself)
        "step_memory_gib": round(peak_gib - memory_before_steps, 2),
        "loss": round(float(loss.detach()), 4),
        "compiled": arguments.compile or False,
        "activation_checkpointing": arguments.activation_checkpointing if arguments.variant != "mae" else None,
    }


def run_measurement(arguments, variant: str, batch_size: int, train_dir: str | None = None) -> dict:
    """Runs `measure` in a fresh process; an out-of-memory error comes back as {"oom": True}."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--variant",
        variant,
        "--batch_size",
        str(batch_size),
        "--device",
        arguments.device,
        "--model_size",
        arguments.model_size,
        "--config_overrides",
        arguments.config_overrides,
        "--steps",
        str(arguments.steps),
        "--warmup",
        str(arguments.warmup),
        "--num_workers",
        str(arguments.num_workers),
    ]
    command += (["--no_bf16"] if not arguments.bf16 else []) + (
        ["--compile", arguments.compile] if arguments.compile else []
    )
    command += (
        ["--activation_checkpointing", arguments.activation_checkpointing]
        if arguments.activation_checkpointing
        else []
    )
    command += ["--train_dir", train_dir] if train_dir else []
    command += ["--photometry_on_device"] if arguments.photometry_on_device else []
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 0:
        return json.loads(result.stdout.strip().splitlines()[-1])
    if "OutOfMemoryError" in result.stderr or "out of memory" in result.stderr:
        return {"variant": variant, "batch_size": batch_size, "oom": True}
    raise RuntimeError(f"{variant} at batch {batch_size} failed:\n{result.stderr[-3000:]}")


def find_max_batch(arguments, variant: str, start: int, limit: int) -> int:
    """Largest batch size that fits: doubling from `start`, then bisection (each trial a fresh process)."""
    fits, fails = 0, None
    size = start
    while fails is None and size <= limit:
        if run_measurement(arguments, variant, size).get("oom"):
            fails = size
        else:
            fits, size = size, size * 2
    if fails is None:
        return fits
    while fails - fits > max(8, fits // 16):
        middle = (fits + fails) // 2
        if run_measurement(arguments, variant, middle).get("oom"):
            fails = middle
        else:
            fits = middle
    return fits


def step_table(report: dict) -> str:
    columns = [
        "variant",
        "batch",
        "data",
        "compiled",
        "checkpointing",
        "step (s)",
        "images/s",
        "peak memory (GiB)",
        "added by the steps (GiB)",
    ]
    rows = []
    for row in report["rows"]:
        if row.get("oom"):
            rows.append([row["variant"], row["batch_size"], "", "", "", "OOM", "", "", ""])
        else:
            rows.append(
                [
                    row["variant"],
                    row["batch_size"],
                    row["data"],
                    row["compiled"],
                    row.get("activation_checkpointing") or "",
                    row["step_time_s"],
                    row["images_per_second"],
                    row["peak_memory_gib"],
                    row["step_memory_gib"],
                ]
            )
    text = (
        f"Device: **{report['device']}**; {report['model_size']} ({report['config_overrides'] or 'reference crops'}); "
        f"bf16 autocast: {report['bf16']}. Command: `{report['command']}`\n\n" + markdown_table(columns, rows)
    )
    if report.get("max_batch"):
        text += "\n\nLargest batch that fits: " + ", ".join(f"{k} {v}" for k, v in report["max_batch"].items())
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model_size", default="vit-base")
    parser.add_argument("--config_overrides", default="", help="e.g. image_size=224,num_prototypes=8192")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[24])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no_bf16", dest="bf16", action="store_false")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=("default", "reduce-overhead", "max-autotune"),
        help="torch.compile the model, in this mode (reduce-overhead: CUDA graphs); the first steps compile.",
    )
    parser.add_argument("--activation_checkpointing", choices=("full", "selective"), help="For pera and full_view.")
    parser.add_argument("--train_dir", help="Also measure PerA with real batches from this folder (data included).")
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument(
        "--photometry_on_device",
        action="store_true",
        help="With --train_dir: colour jitter on the device (finish_batch).",
    )
    parser.add_argument("--find_max_batch", action="store_true", help="Search the largest batch per variant (GPU).")
    parser.add_argument("--max_batch_limit", type=int, default=2048)
    parser.add_argument("--output_json")
    parser.add_argument("--markdown", help="A markdown file to write the table into (e.g. docs/benchmarks.md).")
    parser.add_argument("--section", default="step", help="Name of the table's block in --markdown.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(measure(arguments)))
        return

    device = torch.device(arguments.device)
    rows = []
    for batch_size in arguments.batch_sizes:
        for variant in arguments.variants:
            rows.append(run_measurement(arguments, variant, batch_size))
            print(json.dumps(rows[-1]), flush=True)
        if arguments.train_dir:
            rows.append(run_measurement(arguments, "pera", batch_size, arguments.train_dir))
            print(json.dumps(rows[-1]), flush=True)
    max_batch = {}
    if arguments.find_max_batch:
        for variant in [variant for variant in arguments.variants if variant != "mae"]:
            max_batch[variant] = find_max_batch(
                arguments, variant, max(arguments.batch_sizes), arguments.max_batch_limit
            )
            print(json.dumps({"variant": variant, "max_batch": max_batch[variant]}), flush=True)
    report = {
        "device": device_name(device),
        "model_size": arguments.model_size,
        "config_overrides": arguments.config_overrides,
        "bf16": arguments.bf16,
        "torch": torch.__version__,
        "command": command_line(),
        "rows": rows,
        "max_batch": max_batch,
    }
    publish(report, step_table(report), arguments.output_json, arguments.markdown, arguments.section)


if __name__ == "__main__":
    main()
