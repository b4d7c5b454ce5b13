"""Per-step schedules of PerA pretraining: learning rate, weight decay, EMA momentum and teacher temperature; and the
package's one rule for which parameters weight decay applies to.

Every value is a pure function of the completed step, so a resumed run continues exactly where it stopped. The
warm-ups are fractions of the whole run: the reference's 20 (lr) and 30 (teacher temperature) of 200 epochs are
0.1 and 0.15, and the same fractions keep a short run's schedules in proportion.
"""

import math
from dataclasses import dataclass, fields
from typing import Any

import torch


# Parameters that are not weight matrices: decaying them pulls tokens, positions, scales and offsets to zero.
NO_DECAY_NAMES = ("cls_token", "mask_token", "position_embeddings", "weight_g")


def decays_weight(name: str, parameter: torch.Tensor) -> bool:
    """The package's one weight-decay rule (pretraining, fine-tuning, the MAE baseline): weight matrices and
    convolution kernels decay; biases, norms, tokens, position embeddings and weight-norm scales do not."""
    return parameter.ndim >= 2 and not name.endswith(NO_DECAY_NAMES)


def split_by_weight_decay(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The trainable parameters of `model`, as (decayed, not decayed) by [`decays_weight`]."""
    decayed, not_decayed = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decayed if decays_weight(name, parameter) else not_decayed).append(parameter)
    return decayed, not_decayed


def cosine_decay(progress: float, start: float, end: float) -> float:
    """Half-cosine from `start` (progress 0) to `end` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class ScheduleValues:
    learning_rate: float
    weight_decay: float
    momentum: float
    teacher_temperature: float


@dataclass(frozen=True)
class PretrainingSchedule:
    """
    The reference recipe (method.md, "Optimisation"): lr linear warm-up from 0 to `learning_rate`, then cosine to
    `min_learning_rate`; weight decay cosine `weight_decay_start` -> `weight_decay_end`; EMA momentum cosine
    `momentum_start` -> 1 over all steps; teacher temperature linear `teacher_temperature_start` ->
    `teacher_temperature_end`, then constant. ViT-G used momentum 0.998 and temperatures 0.02 -> 0.03.
    """

    total_steps: int
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-6
    warmup_fraction: float = 0.1
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.2
    momentum_start: float = 0.992
    momentum_end: float = 1.0
    teacher_temperature_start: float = 0.03
    teacher_temperature_end: float = 0.05
    teacher_temperature_warmup_fraction: float = 0.15

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {self.total_steps}.")
        for name in ("warmup_fraction", "teacher_temperature_warmup_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")

    @classmethod
    def from_arguments(cls, arguments: Any, total_steps: int) -> "PretrainingSchedule":
        """The schedule of a run of `total_steps` with the same-named settings of `arguments` (a
        `PretrainingArguments`, its recipe applied)."""
        names = [field.name for field in fields(cls) if field.name != "total_steps" and hasattr(arguments, field.name)]
        return cls(total_steps=total_steps, **{name: getattr(arguments, name) for name in names})

    def at(self, step: int) -> ScheduleValues:
        """The values for optimizer step `step` (0-based: the number of steps already completed)."""
        warmup_steps = round(self.warmup_fraction * self.total_steps)
        if step < warmup_steps:
            learning_rate = self.learning_rate * step / warmup_steps
        else:
            progress = (step - warmup_steps) / max(self.total_steps - warmup_steps, 1)
            learning_rate = cosine_decay(progress, self.learning_rate, self.min_learning_rate)
        overall_progress = step / self.total_steps
        temperature_steps = round(self.teacher_temperature_warmup_fraction * self.total_steps)
        temperature_progress = min(step / temperature_steps, 1.0) if temperature_steps else 1.0
        return ScheduleValues(
            learning_rate=learning_rate,
            weight_decay=cosine_decay(overall_progress, self.weight_decay_start, self.weight_decay_end),
            momentum=cosine_decay(overall_progress, self.momentum_start, self.momentum_end),
            teacher_temperature=self.teacher_temperature_start
            + temperature_progress * (self.teacher_temperature_end - self.teacher_temperature_start),
        )
