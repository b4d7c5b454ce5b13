#!/usr/bin/env python
"""Time and peak memory of the DINO cross-entropy over the prototypes, forward + backward: the plain expression
`-(teacher_probs * log_softmax(student_logits.float() / T)).sum(-1).mean()` against the chunked
`soft_target_cross_entropy` that PeraForPreTraining uses.

    python benchmarks/dino_loss.py --rows 640 --num_prototypes 131072 --dtype bfloat16   # batch 64 x 10 crops, ViT-B

Each implementation runs in a fresh process, so peak memory is its own (CUDA: max_memory_allocated above the
inputs; CPU: peak resident set size above the inputs).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from reporting import command_line, device_name, markdown_table, median_seconds, peak_memory_bytes, publish


IMPLEMENTATIONS = ("plain", "chunked")


def measure(arguments) -> dict:
    from modeling_pera.losses_pera import soft_target_cross_entropy

    device, dtype = torch.device(arguments.device), getattr(torch, arguments.dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (arguments.rows, arguments.num_prototypes)
    logits = torch.randn(shape, generator=generator, device=device).to(dtype).requires_grad_()
    targets = torch.softmax(torch.randn(shape, generator=generator, device=device) / 0.04, dim=-1)
    if arguments.implementation == "plain":

        def loss_of(student_logits):
            return -(targets * torch.log_softmax(student_logits.float() / 0.1, dim=-1)).sum(dim=-1).mean()
    else:

        def loss_of(student_logits):
            return soft_target_cross_entropy(student_logits, targets, 0.1)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_memory_bytes(device)

    def forward_and_backward() -> torch.Tensor:
        loss = loss_of(logits)
        loss.backward()
        logits.grad = None
        return loss

    seconds, loss = median_seconds(forward_and_backward, device, arguments.repeats, arguments.warmup)
    return {
        "implementation": arguments.implementation,
        "time_ms": round(1000 * seconds, 2),
        "peak_above_inputs_mib": round((peak_memory_bytes(device) - before) / 2**20, 1),
        "loss": round(float(loss.detach()), 5),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=640, help="crops x batch (10 x 64 for the reference at batch 64)")
    parser.add_argument("--num_prototypes", type=int, default=131072)
    parser.add_argument("--dtype", default="bfloat16", help="dtype of the student logits (bf16 under autocast)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output_json")
    parser.add_argument("--markdown", type=Path, help="Write the table into this file (e.g. docs/benchmarks.md).")
    parser.add_argument("--section", default="dino-loss")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(measure(arguments)))
        return

    rows = []
    for implementation in IMPLEMENTATIONS:
        command = [sys.executable, __file__, "--worker", "--implementation", implementation] + [
            f"--{name}={getattr(arguments, name)}"
            for name in ("device", "rows", "num_prototypes", "dtype", "repeats", "warmup")
        ]
        rows.append(
            json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        )
        print(json.dumps(rows[-1]), flush=True)
    device = torch.device(arguments.device)
    report = {
        "device": device_name(device),
        "command": command_line(),
        "rows": arguments.rows,
        "num_prototypes": arguments.num_prototypes,
        "dtype": arguments.dtype,
        "results": rows,
    }
    text = (
        f"Device: **{report['device']}**; {arguments.rows} rows x {arguments.num_prototypes} prototypes, "
        f"{arguments.dtype} logits. Command: `{report['command']}`\n\n"
        + markdown_table(
            ["DINO loss", "forward + backward (ms)", "peak memory above the inputs (MiB)", "loss"],
            [[row["implementation"], row["time_ms"], row["peak_above_inputs_mib"], row["loss"]] for row in rows],
        )
    )
    publish(report, text, arguments.output_json, arguments.markdown, arguments.section)


if __name__ == "__main__":
    main()
