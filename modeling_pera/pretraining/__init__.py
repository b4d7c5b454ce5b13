"""PerA pretraining: arguments and recipes, the parts of a run, the loop, checkpoints and exports (see loop.py)."""

from .arguments import RECIPES, PretrainingArguments, parse_config_overrides
from .building import build_model, build_processor, enable_activation_checkpointing, parameter_groups
from .checkpoints import (
    CheckpointError,
    CheckpointWriteError,
    export_encoder,
    export_pretrained,
    latest_checkpoint,
    save_model_folder,
    snapshot_directory,
)
from .loop import apply_schedule, pretrain, push_encoder
from .monitoring import DivergenceMonitor, TrainingDivergedError


__all__ = [
    "RECIPES",
    "CheckpointError",
    "CheckpointWriteError",
    "DivergenceMonitor",
    "PretrainingArguments",
    "TrainingDivergedError",
    "apply_schedule",
    "build_model",
    "build_processor",
    "enable_activation_checkpointing",
    "export_encoder",
    "export_pretrained",
    "latest_checkpoint",
    "parameter_groups",
    "parse_config_overrides",
    "pretrain",
    "push_encoder",
    "save_model_folder",
    "snapshot_directory",
]
