#!/usr/bin/env python
"""Training-step speed and memory of PerA (forward + backward + optimizer + EMA; synthetic inputs on the device).

    python benchmarks/step.py --device cuda --model_size vit-base --batch_sizes 24 64 --output_json bench.json

Prints one row per batch size: median step time, images/s and peak memory (CUDA: max_memory_allocated).
"""

import argparse
import json
import statistics
import time

import torch

from modeling_pera import PeraConfig, PeraForPreTraining
from modeling_pera.training import apply_schedule, student_parameter_groups
from modeling_pera.schedules import PretrainingSchedule


def synthetic_batch(config: PeraConfig, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    def views(num_crops, size):
        return torch.randn(num_crops, batch_size, config.num_channels, size, size, device=device)

    return {
        "student_global_pixel_values": views(config.num_global_crops, config.image_size),
        "teacher_global_pixel_values": views(config.num_global_crops, config.image_size),
        "student_local_pixel_values": views(config.num_local_crops, config.local_crop_size),
        "teacher_local_pixel_values": views(config.num_local_crops, config.local_crop_size),
    }


def measure(config: PeraConfig, batch_size: int, device: torch.device, steps: int, warmup: int, bf16: bool) -> dict:
    model = PeraForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW(student_parameter_groups(model), lr=1e-4, eps=2e-5, fused=device.type == "cuda")
    apply_schedule(optimizer, PretrainingSchedule(total_steps=100).at(50))
    batch = synthetic_batch(config, batch_size, device)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(**batch, teacher_temperature=0.04)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.996)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    step_time = statistics.median(times)
    result = {
        "batch_size": batch_size,
        "step_time_s": step_time,
        "images_per_second": batch_size / step_time,
        "loss": float(outputs.loss),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, optimizer, batch, outputs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model_size", default="vit-base")
    parser.add_argument("--config_overrides", default="", help="e.g. image_size=224,num_prototypes=8192")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[24])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no_bf16", action="store_true")
    parser.add_argument("--output_json")
    args = parser.parse_args()

    from modeling_pera.training import parse_config_overrides

    device = torch.device(args.device)
    config = PeraConfig.from_preset(args.model_size, **parse_config_overrides(args.config_overrides))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for batch_size in args.batch_sizes:
        try:
            row = measure(config, batch_size, device, args.steps, args.warmup, bf16=not args.no_bf16)
        except torch.OutOfMemoryError:
            row = {"batch_size": batch_size, "oom": True}
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.output_json:
        with open(args.output_json, "w") as file:
            json.dump({"device": device_name, "model_size": args.model_size, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main()
