"""
The baseline PerA is measured against: transformers' own `ViTMAEForPreTraining` with PerA's backbone size, and a
plain loop that pretrains it on the same images and crops as PerA (used by `benchmarks/step.py` and
`benchmarks/representation.py`).
"""

import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from .configuration_pera import PeraConfig
from .data import load_pretraining_dataset, make_pretraining_dataloader, make_pretraining_dataset
from .image_processing_pera import PeraImageProcessor
from .pretraining import DivergenceMonitor, save_model_folder, snapshot_directory
from .schedules import PretrainingSchedule, split_by_weight_decay
from .views import AlignedPairViews


def mae_config_from_pera(config: PeraConfig, **overrides) -> ViTMAEConfig:
    """
    A `ViTMAEConfig` with the encoder of `config` (width, depth, heads, MLP, patch, bands, global crop size) and MAE's
    own recipe: 75% masking, per-patch normalised pixel targets, and its 512-wide, 8-layer decoder. Encoders narrower
    than 512 get a 4-layer decoder of their own width instead (the default decoder would cost more than a ViT-Tiny
    encoder and leave it fewer steps in a time budget). `overrides` replace any field.
    """
    settings = {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "qkv_bias": config.qkv_bias,
        "layer_norm_eps": config.layer_norm_eps,
        "mask_ratio": 0.75,
        "norm_pix_loss": True,
    }
    if config.hidden_size < 512:
        settings.update(
            decoder_hidden_size=config.hidden_size,
            decoder_num_hidden_layers=4,
            decoder_num_attention_heads=config.num_attention_heads,
            decoder_intermediate_size=config.intermediate_size,
        )
    return ViTMAEConfig(**{**settings, **overrides})


def _sincos_position_table(grid_size: int, dim: int) -> torch.Tensor:
    """ViT-MAE's frozen 2-D sin-cos table with a zero CLS row, in the layout its pretrained weights use."""
    table = build_2d_sinusoidal_position_embedding(height=grid_size, width=grid_size, embed_dim=dim, cls_token=True)
    half = dim // 2
    return torch.cat([table[..., half:], table[..., :half]], dim=-1).unsqueeze(0)


def build_mae(config: ViTMAEConfig) -> ViTMAEForPreTraining:
    """
    `ViTMAEForPreTraining(config)` with MAE's initialisation actually applied.

    Built from a config in transformers 5.x, the model leaves its position tables, CLS token and mask token all zero
    (the module-level initialisers run in an order that skips them), so it would train without any position
    information. This sets them as MAE does: frozen sin-cos position tables for encoder and decoder, normal(0.02)
    CLS and mask tokens, and the patch projection initialised like a linear layer.
    """
    model = ViTMAEForPreTraining(config)
    embeddings, decoder = model.vit.embeddings, model.decoder
    grid_size = config.image_size // config.patch_size
    with torch.no_grad():
        embeddings.position_embeddings.copy_(_sincos_position_table(grid_size, config.hidden_size))
        decoder.decoder_pos_embed.copy_(_sincos_position_table(grid_size, config.decoder_hidden_size))
        projection = embeddings.patch_embeddings.projection.weight
        nn.init.xavier_uniform_(projection.view(projection.shape[0], -1))
        nn.init.normal_(embeddings.cls_token, std=config.initializer_range)
        nn.init.normal_(decoder.mask_token, std=config.initializer_range)
    return model


def mae_parameter_groups(model: ViTMAEForPreTraining) -> list[dict]:
    """Trainable parameters: weight matrices decayed by 0.05 (MAE's value), norms, biases and tokens not (the package's
    rule, `decays_weight`, which is MAE's split)."""
    decayed, not_decayed = split_by_weight_decay(model)
    return [{"params": decayed, "weight_decay": 0.05}, {"params": not_decayed, "weight_decay": 0.0}]


def _mae_data(
    pera_config: PeraConfig,
    processor: PeraImageProcessor,
    train_dir: list[str],
    batch_size: int,
    num_workers: int,
    seed: int,
) -> tuple[AlignedPairViews, torch.utils.data.DataLoader]:
    """The data pipeline PerA's loop uses, for one global crop per image: the workers cut the crops, the photometry
    runs batched on the device (`views.finish_batch`)."""
    view_config = PeraConfig(**{**pera_config.to_dict(), "num_global_crops": 1, "num_local_crops": 0})
    views = AlignedPairViews(view_config, processor, defer_photometry=True)
    dataset = make_pretraining_dataset(load_pretraining_dataset(train_dir=train_dir), views, seed=seed)
    return views, make_pretraining_dataloader(dataset, batch_size=batch_size, num_workers=num_workers, seed=seed)


def _mae_step(
    model: ViTMAEForPreTraining,
    optimizer: torch.optim.Optimizer,
    views: AlignedPairViews,
    batch: dict,
    lr: float,
    device: torch.device,
    monitor: DivergenceMonitor,
) -> torch.Tensor:
    """One optimizer step of MAE on the batch's global crop at learning rate `lr`; returns the loss."""
    batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
    pixel_values = views.finish_batch(batch)["teacher_global_pixel_values"][0]
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        outputs = model(pixel_values=pixel_values)
    monitor.record(outputs)
    outputs.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return outputs.loss


def pretrain_mae(
    model: ViTMAEForPreTraining,
    pera_config: PeraConfig,
    processor: PeraImageProcessor,
    train_dir: list[str],
    output_dir: str | Path,
    total_steps: int,
    batch_size: int,
    learning_rate: float = 1.5e-4,
    warmup_fraction: float = 0.1,
    seed: int = 0,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    snapshot_steps: tuple[int, ...] = (),
    logging_steps: int = 10,
    max_train_minutes: float | None = None,
) -> dict:
    """
    Pretrains `model` with MAE's recipe (AdamW betas 0.9/0.95, weight decay 0.05, lr warm-up then cosine, bf16
    autocast on CUDA) on PerA's data pipeline: one global crop per image, PerA's crop sizes and scales, its lightly
    jittered teacher view. Saves the model and `processor` to `output_dir/snapshots/step_N` at `snapshot_steps` and to
    `output_dir/encoder` at the end, staged and only with finite weights (else [`~pretraining.TrainingDivergedError`]).
    With `max_train_minutes`, stops (and saves `encoder`) once that much training time has passed, as
    `--max_train_minutes` does for PerA; the schedule stays laid out over `total_steps`. Returns `completed_steps`,
    `train_seconds` (snapshots excluded), `stopped_by_time_limit`, `loss_history` (every `logging_steps` steps) and
    `images_per_second` (of the last logging interval).
    """
    output_dir = Path(output_dir)
    device = torch.device(device)
    torch.manual_seed(seed)
    views, dataloader = _mae_data(pera_config, processor, train_dir, batch_size, num_workers, seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        mae_parameter_groups(model), lr=learning_rate, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    # PerA's lr schedule (linear warm-up, cosine to 0); its other values do not apply to MAE
    schedule = PretrainingSchedule(
        total_steps=total_steps, learning_rate=learning_rate, min_learning_rate=0.0, warmup_fraction=warmup_fraction
    )
    # the loss's finiteness is recorded on the device every step and read before every log and save
    monitor = DivergenceMonitor(None, 0, str(output_dir), loss_terms=("loss",), resumable=False, device=device)
    progress = tqdm(total=total_steps, desc="MAE pretraining", unit="step")
    summary: dict = {"loss_history": [], "stopped_by_time_limit": False}
    last_step = total_steps
    completed_steps, epoch, train_seconds, started = 0, 0, 0.0, time.perf_counter()
    log_started = started
    while completed_steps < last_step:
        dataloader.set_epoch(epoch)
        for batch in dataloader:
            lr = schedule.at(completed_steps).learning_rate
            loss = _mae_step(model, optimizer, views, batch, lr, device, monitor)
            completed_steps += 1
            progress.update(1)
            elapsed = train_seconds + time.perf_counter() - started
            if max_train_minutes is not None and elapsed >= 60 * max_train_minutes and completed_steps < last_step:
                summary["stopped_by_time_limit"] = True
                last_step = completed_steps  # the clock ends the run here
            if completed_steps % logging_steps == 0 or completed_steps == last_step:
                monitor.check()
                value = float(loss.detach())
                summary["loss_history"].append((completed_steps, value))
                interval_steps = (completed_steps - 1) % logging_steps + 1
                summary["images_per_second"] = interval_steps * batch_size / (time.perf_counter() - log_started)
                log_started = time.perf_counter()
                progress.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            if completed_steps in snapshot_steps or completed_steps == last_step:
                train_seconds += time.perf_counter() - started
                final = completed_steps == last_step
                target = output_dir / "encoder" if final else snapshot_directory(output_dir, completed_steps)
                monitor.check(model)
                save_model_folder(model, processor, target)
                started = time.perf_counter()
            if completed_steps >= last_step:
                break
        epoch += 1
    progress.close()
    summary.update(completed_steps=completed_steps, train_seconds=train_seconds)
    return summary


__all__ = ["build_mae", "mae_config_from_pera", "mae_parameter_groups", "pretrain_mae"]
