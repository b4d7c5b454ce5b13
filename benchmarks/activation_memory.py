#!/usr/bin/env python
"""Where a PerA training step's activation memory goes: the tensors autograd saves for backward in one forward pass,
grouped by the module that saved them (block indices merged), per image of the batch.

    python benchmarks/activation_memory.py --model_size vit-base --batch_size 2 --bf16 --markdown docs/benchmarks.md

The saved tensors are the same on any device (their sizes and dtypes follow from the shapes and autocast), so this
runs on the CPU in seconds and explains GPU peak memory: peak = weights + gradients + optimizer state + these
tensors + the largest temporaries. Each storage is counted once; parameters are left out, their low-precision
copies made by autocast are counted under "weight copies".
"""

import argparse
import collections
import re
from pathlib import Path

import torch

from reporting import command_line, markdown_table, publish


def saved_tensor_bytes(model, batch: dict, bf16: bool) -> collections.Counter:
    """Bytes saved for backward by one forward pass, keyed by (module path with indices merged, dtype)."""
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    weight_shapes = {tuple(parameter.shape) for parameter in model.parameters() if parameter.ndim == 2}
    module_stack = ["(top level)"]

    def leave(*_) -> None:  # a forward hook that returned a value would replace the module's output
        module_stack.pop()

    for name, module in model.named_modules():
        if name:
            merged = re.sub(r"\.\d+", ".*", name)
            module.register_forward_pre_hook(lambda *_, merged=merged: module_stack.append(merged))
            module.register_forward_hook(leave)
    counted, saved = set(), collections.Counter()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters and storage.data_ptr() not in counted:
            counted.add(storage.data_ptr())
            # a low-precision tensor of a weight's shape (or its transpose) is autocast's copy of that weight
            shape = tuple(tensor.shape)
            is_weight_copy = tensor.dtype != torch.float32 and (shape in weight_shapes or shape[::-1] in weight_shapes)
            key = "weight copies" if is_weight_copy else module_stack[-1]
            saved[(key, str(tensor.dtype).removeprefix("torch."))] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(**batch)
    return saved


def main():
    from modeling_pera import PeraConfig, PeraForPreTraining
    from modeling_pera.pretraining import parse_config_overrides

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_size", default="vit-base")
    parser.add_argument("--config_overrides", default="")
    parser.add_argument("--variant", choices=("pera", "full_view"), default="pera")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="Under bf16 autocast, as on a GPU.")
    parser.add_argument("--top", type=int, default=12, help="Rows in the table.")
    parser.add_argument("--output_json")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--section", default="activation-memory")
    arguments = parser.parse_args()

    torch.manual_seed(0)
    config = PeraConfig.from_preset(arguments.model_size, **parse_config_overrides(arguments.config_overrides))
    config.full_views = arguments.variant == "full_view"
    model = PeraForPreTraining(config).train()

    def views(num_crops: int, size: int) -> torch.Tensor:
        return torch.randn(num_crops, arguments.batch_size, config.num_channels, size, size)

    batch = {
        "student_global_pixel_values": views(config.num_global_crops, config.image_size),
        "teacher_global_pixel_values": views(config.num_global_crops, config.image_size),
        "student_local_pixel_values": views(config.num_local_crops, config.local_crop_size),
        "teacher_local_pixel_values": views(config.num_local_crops, config.local_crop_size),
    }
    saved = saved_tensor_bytes(model, batch, arguments.bf16)
    weight_copies = sum(size for (module, _), size in saved.items() if module == "weight copies")
    activations = sum(saved.values()) - weight_copies
    rows = [
        {"module": module, "dtype": dtype, "mib_per_image": round(size / arguments.batch_size / 2**20, 2)}
        for (module, dtype), size in saved.most_common()
        if module != "weight copies"
    ]
    report = {
        "command": command_line(),
        "model_size": arguments.model_size,
        "variant": arguments.variant,
        "bf16": arguments.bf16,
        "activations_mib_per_image": round(activations / arguments.batch_size / 2**20, 1),
        "weight_copies_mib": round(weight_copies / 2**20, 1),
        "rows": rows,
    }
    text = (
        f"{arguments.variant}, {arguments.model_size} ({arguments.config_overrides or 'reference crops'}), bf16 "
        f"autocast: {arguments.bf16}: **{report['activations_mib_per_image']} MiB of activations per image** saved "
        f"for backward, and {report['weight_copies_mib']} MiB of weight copies per step. Command: "
        f"`{report['command']}`\n\n"
        + markdown_table(
            ["saved by", "dtype", "MiB per image"],
            [[row["module"], row["dtype"], row["mib_per_image"]] for row in rows[: arguments.top]],
        )
    )
    publish(report, text, arguments.output_json, arguments.markdown, arguments.section)


if __name__ == "__main__":
    main()
