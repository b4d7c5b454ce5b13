"""The MAE baseline: transformers' ViTMAE with PerA's encoder, initialised as MAE intends, trained on PerA's data."""

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_pera import PeraConfig, PeraImageProcessor
from modeling_pera.baselines import build_mae, mae_config_from_pera, pretrain_mae
from modeling_pera.evaluation import load_encoder
from modeling_pera.pretraining import TrainingDivergedError
from pera_testing import tiny_config


def test_mae_config_takes_the_pera_encoder_and_a_decoder_that_fits_it():
    tiny = mae_config_from_pera(tiny_config(num_channels=4))
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.patch_size, tiny.image_size, tiny.num_channels) == (
        32,
        2,
        8,
        32,
        4,
    )
    assert (tiny.decoder_hidden_size, tiny.decoder_num_hidden_layers) == (32, 4)
    assert tiny.mask_ratio == 0.75 and tiny.norm_pix_loss
    base = mae_config_from_pera(PeraConfig.from_preset("vit-base"))
    assert (base.decoder_hidden_size, base.decoder_num_hidden_layers) == (512, 8)  # MAE's own decoder


def test_build_mae_sets_the_tables_that_a_config_built_mae_leaves_at_zero():
    config = mae_config_from_pera(tiny_config())
    torch.manual_seed(0)
    model = build_mae(config)
    embeddings, decoder = model.vit.embeddings, model.decoder
    for name, table in (("encoder", embeddings.position_embeddings), ("decoder", decoder.decoder_pos_embed)):
        patch_rows = table[0, 1:]
        assert patch_rows.abs().amax() > 0.5, f"{name} position table is still zero"
        # every patch gets a different position code; the table is the frozen sin-cos one
        assert torch.cdist(patch_rows, patch_rows).fill_diagonal_(1.0).amin() > 1e-3
        assert not table.requires_grad
    for token in (embeddings.cls_token, decoder.mask_token):
        assert token.abs().amax() > 0 and token.std() > 0.005


def write_images(folder, count=8):
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(generator.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def tiny_mae() -> torch.nn.Module:
    return build_mae(mae_config_from_pera(tiny_config()))


def run_tiny_mae(tmp_path, model, **options) -> dict:
    """`pretrain_mae` of `model` (see `tiny_mae`) on 8 random images, batch 4, no workers, into tmp_path / "mae";
    `options` give the other arguments (total_steps, ...)."""
    return pretrain_mae(
        model,
        tiny_config(),
        PeraImageProcessor.from_preset("pera-rgb", size={"height": 32, "width": 32}),
        train_dir=[str(write_images(tmp_path / "images"))],
        output_dir=tmp_path / "mae",
        batch_size=4,
        num_workers=0,
        **options,
    )


def test_pretrain_mae_saves_snapshots_that_the_evaluation_loads(tmp_path):
    model = tiny_mae()
    before = model.vit.embeddings.patch_embeddings.projection.weight.detach().clone()
    summary = run_tiny_mae(tmp_path, model, total_steps=3, snapshot_steps=(1,))
    assert summary["completed_steps"] == 3 and summary["train_seconds"] > 0
    assert np.isfinite(summary["loss_history"][-1][1])
    assert not torch.equal(before, model.vit.embeddings.patch_embeddings.projection.weight)
    for folder in (tmp_path / "mae" / "snapshots" / "step_1", tmp_path / "mae" / "encoder"):
        encoder, loaded_processor = load_encoder(folder)
        assert type(encoder).__name__ == "ViTMAEModel"
        # the same preprocessing as the PerA encoders it is compared with
        assert type(loaded_processor).__name__ == "PeraImageProcessor"
    final, _ = load_encoder(tmp_path / "mae" / "encoder")
    assert torch.equal(
        final.embeddings.patch_embeddings.projection.weight, model.vit.embeddings.patch_embeddings.projection.weight
    )


def test_pretrain_mae_refuses_a_diverged_loss(tmp_path):
    model = tiny_mae()
    with torch.no_grad():
        model.vit.embeddings.patch_embeddings.projection.weight.fill_(float("nan"))
    # logged every 10 steps, a snapshot after step 2: the non-finite loss of step 1 stops the run before that save
    with pytest.raises(TrainingDivergedError, match=r"loss became non-finite at step 1 .*Lower --learning_rate"):
        run_tiny_mae(tmp_path, model, total_steps=10, snapshot_steps=(2,))
    assert not (tmp_path / "mae" / "encoder").exists()
    assert not (tmp_path / "mae" / "snapshots").exists()


def test_pretrain_mae_stops_on_the_clock_and_saves_its_encoder(tmp_path):
    # over after the first step
    summary = run_tiny_mae(tmp_path, tiny_mae(), total_steps=1000, max_train_minutes=1e-9)
    assert summary["stopped_by_time_limit"] and summary["completed_steps"] == 1
    assert [step for step, _ in summary["loss_history"]] == [1]
    assert type(load_encoder(tmp_path / "mae" / "encoder")[0]).__name__ == "ViTMAEModel"
