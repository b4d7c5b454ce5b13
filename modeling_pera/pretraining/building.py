"""The parts of a pretraining run, built from its arguments: the model (new or continued), its image processor, the
optimizer's parameter groups and activation checkpointing."""

import contextlib
from pathlib import Path

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from ..configuration_pera import PeraConfig
from ..image_processing_pera import PeraImageProcessor
from ..modeling_pera import PeraForPreTraining
from ..schedules import split_by_weight_decay
from .arguments import PretrainingArguments, parse_config_overrides


# Operations whose outputs selective activation checkpointing keeps: matrix products and attention, costly to
# recompute. The rest of a block (norms, GELU, casts, residual adds, drop path) is recomputed in backward.
KEPT_BY_SELECTIVE_CHECKPOINTING = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def build_model(arguments: PretrainingArguments) -> PeraForPreTraining:
    if arguments.model_name_or_path:
        # training state is float32 whatever the checkpoint's dtype; the architecture is the checkpoint's
        return PeraForPreTraining.from_pretrained(
            arguments.model_name_or_path, dtype=torch.float32, **parse_config_overrides(arguments.config_overrides)
        )
    return PeraForPreTraining(new_model_config(arguments))


def new_model_config(arguments: PretrainingArguments) -> PeraConfig:
    """The config of a new model: `--model_size`'s preset with the recipe's and `--config_overrides`' settings."""
    return PeraConfig.from_preset(arguments.model_size, **arguments.model_config_overrides())


def build_processor(arguments: PretrainingArguments, config: PeraConfig) -> PeraImageProcessor:
    """The processor of `--model_name_or_path` when it has one, else one with `--image_mean`/`--image_std` or of
    `--processor_preset` (by default the statistics for 3 or 4 bands) at the model's input size; with
    `--ground_sampling_distance` recorded in it."""
    if arguments.model_name_or_path and Path(arguments.model_name_or_path, "preprocessor_config.json").is_file():
        processor = PeraImageProcessor.from_pretrained(arguments.model_name_or_path)
    else:
        processor = _processor_from_preset(arguments, config)
    if arguments.ground_sampling_distance is not None:
        processor.ground_sampling_distance = float(arguments.ground_sampling_distance)
    return processor


def _processor_from_preset(arguments: PretrainingArguments, config: PeraConfig) -> PeraImageProcessor:
    size = {"height": config.image_size, "width": config.image_size}
    if arguments.image_mean is not None:
        if len(arguments.image_mean) != config.num_channels:
            raise ValueError(
                f"--image_mean has {len(arguments.image_mean)} values, the model has {config.num_channels} bands: give "
                "one statistic per band."
            )
        return PeraImageProcessor(
            num_channels=config.num_channels,
            image_mean=arguments.image_mean,
            image_std=arguments.image_std,
            do_rescale=False,
            size=size,
        )
    preset = arguments.processor_preset or {3: "pera-rgb", 4: "rgbn"}.get(config.num_channels)
    if preset is None:
        raise ValueError(
            f"No default band statistics for {config.num_channels} bands: pass --processor_preset (e.g. "
            "sentinel2-l2a for 12 Sentinel-2 L2A bands), or the bands' --image_mean and --image_std."
        )
    processor = PeraImageProcessor.from_preset(preset, size=size)
    if processor.num_channels != config.num_channels:
        raise ValueError(
            f"--processor_preset {preset} has {processor.num_channels} bands but the model has {config.num_channels}; "
            "choose a preset with the model's bands or set num_channels in --config_overrides."
        )
    return processor


def parameter_groups(model: torch.nn.Module) -> list[dict]:
    """The trainable parameters (PerA's student side: its teacher is frozen), split into weight-decayed matrices and the
    rest; the schedule sets the first group's weight decay at every step."""
    decayed, not_decayed = split_by_weight_decay(model)
    return [{"params": decayed, "apply_weight_decay": True}, {"params": not_decayed, "apply_weight_decay": False}]


def _selective_checkpointing_policy(context, operation, *arguments, **keyword_arguments) -> CheckpointPolicy:
    if operation in KEPT_BY_SELECTIVE_CHECKPOINTING:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@contextlib.contextmanager
def _without_autocast_cache(forward_context: contextlib.AbstractContextManager):
    """`forward_context` with autocast's weight-cast cache off. Autocast keeps its casts for the whole forward pass,
    so a block run a second time in one pass (the student sees the global crops, then the local ones) would cast
    nothing, while its recomputation in backward casts its weights: selective checkpointing needs both to run the
    same operations."""
    cache_enabled = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        with forward_context:
            yield
    finally:
        torch.set_autocast_cache_enabled(cache_enabled)


def _selective_checkpointing_contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    forward_context, recompute_context = create_selective_checkpoint_contexts(_selective_checkpointing_policy)
    return _without_autocast_cache(forward_context), recompute_context


def enable_activation_checkpointing(model: PeraForPreTraining, mode: str) -> None:
    """Checkpoints every block of the student: `mode` 'full' or 'selective' (see `PretrainingArguments`)."""
    if mode not in ("full", "selective"):
        raise ValueError(f"activation checkpointing is 'full' or 'selective', got {mode!r}.")
    checkpoint_kwargs = {"use_reentrant": False}
    if mode == "selective":
        checkpoint_kwargs["context_fn"] = _selective_checkpointing_contexts
    model.student.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
