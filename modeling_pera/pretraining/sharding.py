"""Sharded training (`--fsdp`): PyTorch's FSDP2 (`fully_shard`) over the run's processes, for backbones whose
weights, gradients and optimizer state do not fit once per GPU, and the checkpoints of such a run, written by every
process with `torch.distributed.checkpoint`.

The unit of sharding is a block: each module of the model's `_no_split_modules` classes (PerA's embeddings and
layers, of the student and the teacher alike; MAE's), then the whole model. PerA needs nothing else: the EMA update
(`update_teacher`'s foreach lerp) and gradient clipping run on the shards (DTensors), and the DINO centre is a
replicated buffer whose all-reduce stays in the loss. Mixed precision is the same autocast as DDP's, so a sharded run
computes what a DDP run computes.
"""

from collections.abc import Callable

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from accelerate.utils import convert_outputs_to_fp32, parse_flag_from_env
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor


SHARDED_STATE_DIRNAME = "sharded_state"  # in a checkpoint of a sharded run: weights and optimizer, one file a process


def refuse_accelerate_fsdp() -> None:
    """PerA shards itself (`--fsdp`); accelerate's FSDP plugin would wrap the model a second time and save it its own
    way."""
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        raise ValueError(
            "The launch config asks for accelerate's FSDP (distributed_type: FSDP): PerA shards itself. Launch with "
            "a multi-GPU config (examples/accelerate_configs/multi_gpu.yaml) and pass --fsdp."
        )


def shard_model(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Moves `model` to the run's device and shards it in place over all processes (before its optimizer is built:
    the optimizer takes the sharded parameters)."""
    if accelerator.num_processes < 2:
        raise ValueError(
            "--fsdp shards the model over the run's processes, and this run has one: launch several (accelerate "
            "launch --num_processes N, or torchrun --nproc_per_node N), or drop --fsdp."
        )
    if accelerator.mixed_precision == "fp16":
        raise ValueError("--fsdp trains in float32 or bf16 (--mixed_precision bf16); fp16 needs a gradient scaler.")
    model.to(accelerator.device)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    blocks = set(model._no_split_modules)
    for module in reversed(list(model.modules())):  # inner blocks before the blocks and the model that hold them
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def autocast_forward(model: Callable, accelerator: Accelerator) -> Callable:
    """`model`'s forward under the run's mixed precision, its outputs in float32: what `accelerator.prepare` adds to a
    model it wraps."""

    def forward(**inputs):
        with accelerator.autocast():
            return model(**inputs)

    return convert_outputs_to_fp32(forward)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def gathered_model(model: FSDPModule, is_main_process: bool) -> torch.nn.Module | None:
    """A whole, unsharded copy of `model` on the CPU for the main process (None on the others), to export with
    `save_pretrained`. Collective: every process calls it."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main_process:
        return None
    model_class = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    with torch.device("meta"):  # no initialisation: every tensor comes from the gathered state
        whole = model_class(model.config)
    whole.load_state_dict(state, strict=True, assign=True)
    return whole


def save_sharded_state(model: FSDPModule, optimizer: torch.optim.Optimizer, folder) -> None:
    """Each process writes its shards of the weights (with the DINO centre) and of the optimizer's state. Collective."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_sharded_state(model: FSDPModule, optimizer: torch.optim.Optimizer, folder) -> None:
    """Loads what [`save_sharded_state`] wrote into `model` and `optimizer`. Collective."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
