"""What the one pretraining loop (`loop.py`) trains: PerA, or the MAE baseline it is measured against (`--method`).

A method builds its model, says what one micro-batch feeds it, what follows an optimizer step and what a run exports.
Everything else is the loop's and the same for both: the data pipeline and its views, the optimizer's parameter groups,
the schedules, bf16 and compile, checkpoints and exact resumes, the divergence checks, the logs and the signals.
"""

import torch
from transformers import ViTMAEForPreTraining

from ..baselines import build_mae, mae_config_from_pera
from ..configuration_pera import PeraConfig
from ..data import seeded_generator
from ..image_processing_pera import PeraImageProcessor
from ..modeling_pera import PeraForPreTraining
from ..schedules import ScheduleValues
from .arguments import PretrainingArguments
from .building import build_model, new_model_config
from .checkpoints import ENCODER_DIRNAME, export_encoder, export_pretrained, save_model_folder


def num_patches(config: PeraConfig, pixel_values: torch.Tensor) -> int:
    height, width = pixel_values.shape[-2:]
    return (height // config.patch_size) * (width // config.patch_size)


class PeraMethod:
    """PerA (docs/method.md): `PeraForPreTraining`'s student and EMA teacher on global and local crops, with the
    teacher's EMA step after each optimizer step; exports the teacher as the encoder and the whole model beside it."""

    name, title = "pera", "PerA"
    loss_terms = ("loss", "dino_loss", "koleo_loss", "pixel_loss")
    logged_outputs = (*loss_terms, "teacher_entropy", "center_norm")
    logged_schedule = ("learning_rate", "weight_decay", "momentum", "teacher_temperature")
    optimizer_options = {"betas": (0.9, 0.999), "eps": 2e-5}  # the reference's AdamW

    def __init__(self, seed: int, device: torch.device):
        self.seed = seed
        # One device tensor, refilled each step: `fill_` copies nothing from the host, and a tensor (not a float that
        # changes every step) lets a compiled forward run without recompiling.
        self.teacher_temperature = torch.zeros((), device=device)

    def build_model(self, arguments: PretrainingArguments) -> tuple[PeraForPreTraining, PeraConfig]:
        """The model and the config its views are cut for."""
        model = build_model(arguments)
        return model, model.config

    def views_config(self, config: PeraConfig) -> PeraConfig:
        return config

    def inputs(self, config: PeraConfig, batch: dict, values: ScheduleValues, micro_step: int, rank: int) -> dict:
        """The forward's inputs for one micro-batch: its views, the mask noise of (seed, micro step, process), drawn on
        the batch's device, and the step's teacher temperature."""
        device = batch["student_global_pixel_values"].device
        generator = seeded_generator(self.seed, micro_step, rank, device=device)
        noise = {}
        for kind in ("global", "local"):
            pixel_values = batch.get(f"student_{kind}_pixel_values")
            if pixel_values is not None:
                num_crops, batch_size = pixel_values.shape[:2]
                shape = (num_crops, batch_size, num_patches(config, pixel_values))
                noise[f"{kind}_noise"] = torch.rand(shape, generator=generator, device=device)
        self.teacher_temperature.fill_(values.teacher_temperature)
        return {**batch, **noise, "teacher_temperature": self.teacher_temperature}

    def after_step(self, model: PeraForPreTraining, values: ScheduleValues) -> None:
        model.update_teacher(values.momentum)

    def export_snapshot(self, model: PeraForPreTraining, processor: PeraImageProcessor, target) -> None:
        export_encoder(model, processor, target)

    def export(self, model: PeraForPreTraining, processor: PeraImageProcessor, output_dir) -> None:
        export_pretrained(model, processor, output_dir)


class MaeMethod:
    """The MAE baseline: transformers' `ViTMAEForPreTraining` with the PerA encoder's size (`baselines.py`), on the
    lightly jittered teacher view of one global crop per image (PerA's crop sizes and scales), with MAE's mask noise
    drawn per (seed, micro step, process) so that its runs resume exactly too; exports the whole model as the
    encoder (`evaluation.load_encoder` reads its `ViTMAEModel`). Its recipe: `arguments.MAE_RECIPE`."""

    name, title = "mae", "MAE"
    loss_terms = ("loss",)
    logged_outputs = loss_terms
    logged_schedule = ("learning_rate", "weight_decay")
    optimizer_options = {"betas": (0.9, 0.95)}  # MAE's AdamW

    def __init__(self, seed: int, device: torch.device):
        self.seed = seed

    def build_model(self, arguments: PretrainingArguments) -> tuple[ViTMAEForPreTraining, PeraConfig]:
        """MAE with the encoder of the PerA config that `arguments` describe, and that config (for the views)."""
        config = new_model_config(arguments)
        return build_mae(mae_config_from_pera(config)), config

    def views_config(self, config: PeraConfig) -> PeraConfig:
        return PeraConfig(**{**config.to_dict(), "num_global_crops": 1, "num_local_crops": 0})

    def inputs(self, config: PeraConfig, batch: dict, values: ScheduleValues, micro_step: int, rank: int) -> dict:
        pixel_values = batch["teacher_global_pixel_values"][0]
        generator = seeded_generator(self.seed, micro_step, rank, device=pixel_values.device)
        shape = (pixel_values.shape[0], num_patches(config, pixel_values))
        return {
            "pixel_values": pixel_values,
            "noise": torch.rand(shape, generator=generator, device=pixel_values.device),
        }

    def after_step(self, model: ViTMAEForPreTraining, values: ScheduleValues) -> None:
        pass  # no teacher

    def export_snapshot(self, model: ViTMAEForPreTraining, processor: PeraImageProcessor, target) -> None:
        save_model_folder(model, processor, target)

    def export(self, model: ViTMAEForPreTraining, processor: PeraImageProcessor, output_dir) -> None:
        save_model_folder(model, processor, output_dir / ENCODER_DIRNAME)


METHODS = {method.name: method for method in (PeraMethod, MaeMethod)}
