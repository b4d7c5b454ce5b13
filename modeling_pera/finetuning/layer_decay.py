# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Layer-wise learning-rate decay (as in BEiT and MAE fine-tuning): the depth of each ViT parameter, the optimizer
parameter groups it gives, and `LayerDecayTrainer`, the `Trainer` that uses them."""

import re
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from ..schedules import decays_weight


# Transformer blocks are named `...layers.<i>.` (PerA) or `...layer.<i>.` (ViT, DINOv2) in the parameter names.
LAYER_INDEX_PATTERN = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def parameter_depth(name: str, num_layers: int) -> int:
    """
    The depth of a ViT parameter for layer-wise learning-rate decay: 0 for the embeddings (patch embedding, CLS
    token, position embeddings), `i + 1` for block `i`, and `num_layers + 1` for everything after the blocks (final
    norm, heads, decoders).
    """
    match = LAYER_INDEX_PATTERN.search(name)
    if match is not None:
        return int(match.group(1)) + 1
    if "embeddings" in name.split("."):
        return 0
    return num_layers + 1


def layer_decay_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """
    Optimizer parameter groups with layer-wise learning-rate decay (as in BEiT and MAE fine-tuning): a parameter at
    depth `d` (see [`parameter_depth`]) gets `learning_rate * layer_decay ** (num_layers + 1 - d)`, so the head
    trains at `learning_rate` and each block below it `layer_decay` times slower.

    Args:
        model (`nn.Module`):
            A ViT-based model, e.g. [`PeraForImageClassification`] or `UperNetForSemanticSegmentation` on a
            [`PeraBackbone`]. Parameters that do not require gradients are left out.
        learning_rate (`float`):
            Learning rate of the top (head) group.
        weight_decay (`float`):
            Weight decay of the weight matrices and kernels; biases, norms and the CLS, mask and position embeddings
            get none (the package's rule, [`~schedules.decays_weight`]).
        layer_decay (`float`):
            The factor per block, in (0, 1].
        num_layers (`int`, *optional*):
            Number of blocks; defaults to `num_hidden_layers` of the model's config or of its `backbone_config`.

    Returns:
        `list[dict]`: one group per (depth, decayed or not), each with `params`, `lr` and `weight_decay`, the top
        first (`Trainer` logs the learning rate of the first group).
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"`layer_decay` must lie in (0, 1], got {layer_decay}.")
    if num_layers is None:
        config = getattr(model.config, "backbone_config", None) or model.config
        num_layers = config.num_hidden_layers
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = parameter_depth(name, num_layers)
        decayed = decays_weight(name, parameter)
        group = groups.setdefault(
            (depth, decayed),
            {
                "params": [],
                "lr": learning_rate * layer_decay ** (num_layers + 1 - depth),
                "weight_decay": weight_decay if decayed else 0.0,
            },
        )
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups, reverse=True)]


class LayerDecayTrainer(Trainer):
    """
    A `Trainer` whose optimizer uses [`layer_decay_parameter_groups`] when `layer_decay` is given; otherwise it is
    transformers' `Trainer`. The optimizer class and its settings still come from the `TrainingArguments` (`--optim`,
    betas, epsilon), for optimizers that take parameter groups (the torch and bitsandbytes ones).
    """

    def __init__(self, *args, layer_decay: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.layer_decay is None or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        parameter_groups = layer_decay_parameter_groups(
            model,
            self.args.learning_rate,
            self.args.weight_decay,
            self.layer_decay,
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer
