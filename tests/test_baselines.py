"""The MAE baseline: transformers' ViTMAE with PerA's encoder, initialised as MAE intends, trained by PerA's loop on
PerA's data (`--method mae`)."""

import dataclasses

import numpy as np
import pytest
import torch

from fixtures import make_loop_fixture
from modeling_pera import PeraConfig
from modeling_pera.baselines import build_mae, mae_config_from_pera
from modeling_pera.evaluation import load_encoder
from modeling_pera.pretraining import (
    CheckpointError,
    PretrainingArguments,
    TrainingDivergedError,
    methods,
    parse_config_overrides,
    pretrain,
)
from pera_testing import TINY_MODEL, assert_resumes_exactly, tiny_arguments, tiny_config


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


def run_tiny_mae(tmp_path, **options) -> dict:
    """The MAE baseline (`--method mae`) with the tiny encoder on 8 random images, batch 4, no workers, into
    tmp_path / "mae"; `options` change any flag (max_train_steps, ...)."""
    images = tmp_path / "images"
    if not images.is_dir():
        make_loop_fixture.write_images(images)
    return pretrain(tiny_arguments(images, tmp_path / "mae", method="mae", **options))


def test_mae_saves_snapshots_that_the_evaluation_loads(tmp_path):
    summary = run_tiny_mae(tmp_path, max_train_steps=3, snapshot_steps=[1])
    assert summary["completed_steps"] == 3 and summary["train_seconds"] > 0
    assert [step for step, _ in summary["loss_history"]] == [1, 2, 3] and np.isfinite(summary["loss_history"][-1][1])
    torch.manual_seed(3)  # the run's seed: the weights it started from
    start = build_mae(mae_config_from_pera(PeraConfig.from_preset("vit-small", **parse_config_overrides(TINY_MODEL))))
    for folder in (tmp_path / "mae" / "snapshots" / "step_1", tmp_path / "mae" / "encoder"):
        encoder, loaded_processor = load_encoder(folder)
        assert type(encoder).__name__ == "ViTMAEModel"
        # the same preprocessing as the PerA encoders it is compared with
        assert type(loaded_processor).__name__ == "PeraImageProcessor"
        assert not torch.equal(
            encoder.embeddings.patch_embeddings.projection.weight,
            start.vit.embeddings.patch_embeddings.projection.weight,
        )
    # the frozen sin-cos table is MAE's, and stays so
    final, _ = load_encoder(tmp_path / "mae" / "encoder")
    assert torch.equal(final.embeddings.position_embeddings, start.vit.embeddings.position_embeddings)


def test_mae_takes_its_own_recipe_and_refuses_what_is_pera_s_only(tmp_path):
    mae = tiny_arguments(None, tmp_path, method="mae", recipe="short-budget")
    assert (mae.learning_rate, mae.min_learning_rate, mae.weight_decay_start, mae.weight_decay_end) == (
        1.5e-4,
        0.0,
        0.05,
        0.05,
    )
    assert "normalize_pixel_targets" not in mae.model_config_overrides()  # the recipe's heads are PerA's
    assert tiny_arguments(None, tmp_path, method="mae", learning_rate=1e-3).learning_rate == 1e-3  # a flag wins
    pera = tiny_arguments(None, tmp_path)
    assert (pera.min_learning_rate, pera.weight_decay_start, pera.weight_decay_end) == (1e-6, 0.04, 0.2)
    for flags in ({"activation_checkpointing": "full"}, {"model_name_or_path": "x"}, {"push_to_hub": True}):
        with pytest.raises(ValueError, match="PerA only"):
            tiny_arguments(None, tmp_path, method="mae", hub_model_id="a/b", **flags)
    with pytest.raises(ValueError, match="Unknown --method 'dino'"):
        tiny_arguments(None, tmp_path, method="dino")
    # the flag offers the methods the loop knows
    choices = {field.name: field for field in dataclasses.fields(PretrainingArguments)}["method"].metadata["choices"]
    assert sorted(choices) == sorted(methods.METHODS)


def test_mae_refuses_a_diverged_loss(tmp_path, monkeypatch):
    def broken_mae(config):
        model = build_mae(config)
        with torch.no_grad():
            model.vit.embeddings.patch_embeddings.projection.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(methods, "build_mae", broken_mae)
    # logged every 10 steps, a snapshot after step 2: the non-finite loss of step 1 stops the run before that save
    with pytest.raises(TrainingDivergedError, match=r"loss became non-finite at step 1 .*Lower --learning_rate"):
        run_tiny_mae(tmp_path, max_train_steps=10, logging_steps=10, snapshot_steps=[2])
    assert not (tmp_path / "mae" / "encoder").exists()
    assert not (tmp_path / "mae" / "snapshots").exists()


def test_mae_stops_on_the_clock_and_saves_its_encoder(tmp_path):
    # over after the first step
    summary = run_tiny_mae(tmp_path, max_train_steps=1000, max_train_minutes=1e-9)
    assert summary["stopped_by_time_limit"] and summary["completed_steps"] == 1
    assert [step for step, _ in summary["loss_history"]] == [1]
    assert type(load_encoder(tmp_path / "mae" / "encoder")[0]).__name__ == "ViTMAEModel"


def test_mae_resumes_exactly_and_is_not_resumed_as_pera(tmp_path):
    images = make_loop_fixture.write_images(tmp_path / "images")
    assert_resumes_exactly(tmp_path, train_dir=str(images), method="mae", weights="encoder/model.safetensors")
    with pytest.raises(CheckpointError, match="method was mae, now pera"):
        pretrain(tiny_arguments(images, tmp_path / "interrupted", resume_from_checkpoint="latest"))
