"""Nothing lost: faults injected into pretraining, checkpoints, model loading and imagery (issue 12). Each test fails
on the code before the fix: a diverging run, a reused output folder, broken and inexact checkpoints, foreign model
code, 16-bit and float pixels, nonsense settings and a full disk."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image, features
from safetensors.torch import load_file

from modeling_pera import PeraConfig, PeraForPreTraining, PeraImageProcessor
from modeling_pera.evaluation import load_encoder
from modeling_pera.pretraining import (
    CheckpointError,
    CheckpointWriteError,
    PretrainingArguments,
    TrainingDivergedError,
    pretrain,
)
from modeling_pera.pretraining.checkpoints import MANIFEST_NAME, TRAINER_STATE_NAME, latest_checkpoint
from modeling_pera.pretraining.methods import PeraMethod
from modeling_pera.pretraining.monitoring import DivergenceMonitor
from modeling_pera.raster import find_images
from pera_testing import TINY_SETTINGS, tiny_arguments, tiny_config, write_random_tiffs


def assert_finite(path: Path) -> None:
    for name, tensor in load_file(path).items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), f"{path}: {name} is not finite"


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# 1. A diverging run
# ---------------------------------------------------------------------------------------------------------------------


def test_a_diverging_run_stops_before_saving_non_finite_weights(images, tmp_path):
    # lr 1e6 diverges within a few steps; before the fix the loss was checked on logging steps only, so checkpoints
    # 4, 6, 8 held NaN, pruning deleted the last good one and the exports were NaN.
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"non-finite .*resume with --resume_from_checkpoint latest"):
        pretrain(
            tiny_arguments(
                images,
                run,
                learning_rate=1e6,
                max_train_steps=12,
                checkpointing_steps=2,
                logging_steps=10,
                checkpoints_total_limit=2,
                warmup_fraction=0.0,
            )
        )
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    for checkpoint in checkpoints:
        assert_finite(checkpoint / "model.safetensors")
    for export in (run / "model.safetensors", run / "encoder" / "model.safetensors"):
        if export.exists():
            assert_finite(export)


def test_non_finite_weights_with_a_finite_loss_are_caught_before_a_save():
    model = PeraForPreTraining(tiny_config())
    monitor = DivergenceMonitor(
        Accelerator(cpu=True), completed_steps=7, checkpoints_dir="out/checkpoints", loss_terms=PeraMethod.loss_terms
    )
    monitor.check(model)  # all finite: no error
    with torch.no_grad():
        model.student.layers[0].attention.q_proj.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match=r"student\.layers\.0\.attention\.q_proj\.weight"):
        monitor.check(model)


def test_the_monitor_names_the_first_non_finite_step_and_its_loss_terms():
    monitor = DivergenceMonitor(
        Accelerator(cpu=True), completed_steps=10, checkpoints_dir="out/checkpoints", loss_terms=PeraMethod.loss_terms
    )
    finite = {
        "loss": torch.tensor(1.0),
        "dino_loss": torch.tensor(0.5),
        "koleo_loss": torch.tensor(0.1),
        "pixel_loss": torch.tensor(0.4),
    }
    monitor.record(finite)
    monitor.record({**finite, "loss": torch.tensor(float("nan")), "pixel_loss": torch.tensor(float("inf"))})
    monitor.record(finite)  # later finite losses do not clear the flag
    with pytest.raises(TrainingDivergedError, match=r"step 12 .*'pixel_loss': inf"):
        monitor.check()


def test_a_nan_pixel_in_training_leaves_the_dino_centre_as_it_was():
    torch.manual_seed(0)
    model = PeraForPreTraining(tiny_config(num_local_crops=0)).train()
    views = torch.randn(2, 2, 3, 32, 32)
    model(student_global_pixel_values=views, teacher_global_pixel_values=views)
    centre = model.center.clone()
    poisoned = views.clone()
    poisoned[0, 0, 0] = float("nan")  # one band of the teacher's view: every patch the teacher sees holds a NaN
    outputs = model(student_global_pixel_values=views, teacher_global_pixel_values=poisoned)
    assert not torch.isfinite(outputs.loss)  # the step's loss says it (and stops pretraining)
    assert torch.equal(model.center, centre)
    model(student_global_pixel_values=views, teacher_global_pixel_values=views)
    assert torch.isfinite(model.center).all() and not torch.equal(model.center, centre)


# ---------------------------------------------------------------------------------------------------------------------
# 2. A reused output folder
# ---------------------------------------------------------------------------------------------------------------------


def test_a_new_run_refuses_a_folder_holding_another_run(images, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_arguments(images, run, max_train_steps=2, checkpointing_steps=1))
    first = weights_of(run / "checkpoints" / "step_2")
    with pytest.raises(ValueError, match=r"holds another run .*--overwrite_output_dir"):
        pretrain(tiny_arguments(images, run, max_train_steps=3, seed=4))
    assert_same_weights(weights_of(run / "checkpoints" / "step_2"), first)  # untouched

    pretrain(tiny_arguments(images, run, max_train_steps=3, checkpointing_steps=3, seed=4, overwrite_output_dir=True))
    assert [path.name for path in (run / "checkpoints").iterdir()] == ["step_3"]  # the old run's are gone
    assert latest_checkpoint(run).name == "step_3"


def test_overwriting_the_folder_of_the_model_to_continue_from_is_refused(images, tmp_path):
    with pytest.raises(ValueError, match="lies in --output_dir"):
        tiny_arguments(
            images, tmp_path / "run", model_name_or_path=str(tmp_path / "run" / "encoder"), overwrite_output_dir=True
        )


def test_a_folder_without_a_run_is_used_as_it_is(images, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("my experiment")
    pretrain(tiny_arguments(images, run, max_train_steps=1))
    assert (run / "notes.txt").read_text() == "my experiment"
    assert (run / "encoder" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# 5. Checkpoints: manifests, broken files, leftovers, inexact resumes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(images, tmp_path_factory) -> Path:
    """A 4-step run with a checkpoint after every step, kept; its final weights are the reference of the resumes."""
    run = tmp_path_factory.mktemp("full") / "run"
    pretrain(tiny_arguments(images, run, checkpointing_steps=1, checkpoints_total_limit=4))
    return run


def interrupted_copy(full_run: Path, folder: Path, steps: tuple[int, ...]) -> Path:
    for step in steps:
        shutil.copytree(full_run / "checkpoints" / f"step_{step}", folder / "checkpoints" / f"step_{step}")
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the last tensor's data: the header still parses
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda step: (step / "random_states_0.pkl").unlink(), id="missing random states"),
        pytest.param(lambda step: truncate(step / "model.safetensors"), id="truncated weights"),
        pytest.param(lambda step: flip_a_byte(step / "model.safetensors"), id="one flipped byte"),
        pytest.param(lambda step: (step / MANIFEST_NAME).unlink(), id="no manifest (interrupted save)"),
    ],
)
def test_latest_skips_a_broken_newest_checkpoint_and_resumes_exactly(damage, images, full_run, tmp_path, caplog):
    run = interrupted_copy(full_run, tmp_path / "run", steps=(2, 3))
    damage(run / "checkpoints" / "step_3")
    with caplog.at_level(logging.WARNING):
        summary = pretrain(tiny_arguments(images, run, resume_from_checkpoint="latest"))
    assert "Skipping the broken checkpoint" in caplog.text and "step_3" in caplog.text
    assert summary["completed_steps"] == 4
    assert_same_weights(weights_of(run), weights_of(full_run))  # resumed from step 2, bit-identical


def test_leftovers_of_an_interrupted_save_are_never_read_as_steps(images, full_run, tmp_path):
    run = interrupted_copy(full_run, tmp_path / "run", steps=(2,))
    # a kill between the two renames of a re-save leaves step_3.old complete and step_3 missing
    shutil.copytree(full_run / "checkpoints" / "step_3", run / "checkpoints" / "step_3.old")
    (run / "checkpoints" / ".staging_step_4").mkdir()
    summary = pretrain(tiny_arguments(images, run, resume_from_checkpoint="latest", checkpointing_steps=1))
    assert summary["completed_steps"] == 4
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["step_3", "step_4"]
    assert_same_weights(weights_of(run), weights_of(full_run))


def test_an_explicit_broken_checkpoint_is_refused_with_the_reason(images, full_run, tmp_path):
    run = interrupted_copy(full_run, tmp_path / "run", steps=(2,))
    truncate(run / "checkpoints" / "step_2" / "optimizer.bin")
    with pytest.raises(CheckpointError, match=r"optimizer\.bin has \d+ bytes instead of \d+"):
        pretrain(tiny_arguments(images, run, resume_from_checkpoint=str(run / "checkpoints" / "step_2")))
    with pytest.raises(CheckpointError, match="No intact checkpoint"):
        pretrain(tiny_arguments(images, run, resume_from_checkpoint="latest"))


def make_legacy(checkpoint: Path) -> None:
    """A checkpoint as written before manifests: no manifest.json, no record of processes and batch."""
    (checkpoint / MANIFEST_NAME).unlink()
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    state = {key: state[key] for key in ("completed_steps", "epoch", "batches_in_epoch")}
    (checkpoint / TRAINER_STATE_NAME).write_text(json.dumps(state))


def test_a_checkpoint_without_random_states_resumes_only_when_asked(images, full_run, tmp_path, caplog):
    run = interrupted_copy(full_run, tmp_path / "run", steps=(2,))
    make_legacy(run / "checkpoints" / "step_2")
    (run / "checkpoints" / "step_2" / "random_states_0.pkl").unlink()
    with pytest.raises(CheckpointError, match=r"random states of process 0 are missing.*--allow_inexact_resume"):
        pretrain(tiny_arguments(images, run, resume_from_checkpoint="latest"))
    with caplog.at_level(logging.WARNING):
        summary = pretrain(tiny_arguments(images, run, resume_from_checkpoint="latest", allow_inexact_resume=True))
    assert summary["completed_steps"] == 4 and "Continuing anyway" in caplog.text


def test_a_legacy_checkpoint_still_resumes_exactly(images, full_run, tmp_path):
    run = interrupted_copy(full_run, tmp_path / "run", steps=(2,))
    make_legacy(run / "checkpoints" / "step_2")
    pretrain(tiny_arguments(images, run, resume_from_checkpoint="latest"))
    assert_same_weights(weights_of(run), weights_of(full_run))


def test_another_batch_size_refuses_to_resume(images, full_run, tmp_path):
    run = interrupted_copy(full_run, tmp_path / "run", steps=(2,))
    with pytest.raises(CheckpointError, match="per_device_train_batch_size was 4, now 2"):
        pretrain(tiny_arguments(images, run, resume_from_checkpoint="latest", per_device_train_batch_size=2))


# ---------------------------------------------------------------------------------------------------------------------
# 8. A full disk
# ---------------------------------------------------------------------------------------------------------------------


def test_a_full_disk_removes_the_partial_checkpoint_and_keeps_the_previous_one(images, tmp_path, monkeypatch):
    run = tmp_path / "run"
    save_state = Accelerator.save_state
    calls = []

    def failing_save_state(self, output_dir, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # the second checkpoint: half written, then torch's full-disk error
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "optimizer.bin").write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1180")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", failing_save_state)
    full_disk = r"checkpoints/step_2: the disk is full; a checkpoint of this run takes [\d.]+ GB \([\d.]+ GB free"
    with pytest.raises(CheckpointWriteError, match=full_disk):
        pretrain(tiny_arguments(images, run, checkpointing_steps=1))
    assert [path.name for path in (run / "checkpoints").iterdir()] == ["step_1"]  # no staging folder left
    assert latest_checkpoint(run).name == "step_1"


# ---------------------------------------------------------------------------------------------------------------------
# 3. Foreign model code
# ---------------------------------------------------------------------------------------------------------------------


FOREIGN_CODE = """
from pathlib import Path
Path(__file__).with_name("{marker}").write_text("foreign code ran")
from transformers import PretrainedConfig, PreTrainedModel
class ForeignConfig(PretrainedConfig):
    model_type = "foreign"
class ForeignModel(PreTrainedModel):
    config_class = ForeignConfig
"""


def test_foreign_model_code_is_not_run_without_trust_remote_code(tmp_path):
    folder = tmp_path / "foreign"
    folder.mkdir()
    (folder / "foreign.py").write_text(FOREIGN_CODE.format(marker="marker.txt"))
    auto_map = {"AutoConfig": "foreign.ForeignConfig", "AutoModel": "foreign.ForeignModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "foreign", "auto_map": auto_map}))
    processor_auto_map = {"AutoImageProcessor": "foreign.ForeignConfig"}
    (folder / "preprocessor_config.json").write_text(json.dumps({"auto_map": processor_auto_map}))
    with pytest.raises(ValueError, match="ships its own Python code.*--trust_remote_code"):
        load_encoder(folder)
    with pytest.raises(ValueError, match="ships its own Python code"):
        load_encoder(folder, random_init=True)
    assert not (folder / "marker.txt").exists()


# ---------------------------------------------------------------------------------------------------------------------
# 4. 16-bit and float imagery
# ---------------------------------------------------------------------------------------------------------------------


def test_the_8_bit_processor_refuses_16_bit_pixels_with_the_fix():
    processor = PeraImageProcessor.from_preset("pera-rgb", size=32)
    pixels = np.full((3, 32, 32), 40000, dtype=np.uint16)
    with pytest.raises(ValueError, match=r"values in \[40000, 40000\].*8-bit.*rescale_factor"):
        processor(pixels)
    processor(pixels, rescale_factor=1 / 65535)  # statistics for the data's range: accepted


def test_floats_in_0_1_are_the_same_image_as_their_8_bit_equivalent():
    processor = PeraImageProcessor.from_preset("pera-rgb", size=32)
    eight_bit = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    as_float = eight_bit.astype(np.float32) / 255
    torch.testing.assert_close(processor(as_float)["pixel_values"], processor(eight_bit)["pixel_values"])
    torch.testing.assert_close(
        processor(torch.from_numpy(as_float))["pixel_values"], processor(eight_bit)["pixel_values"]
    )
    with pytest.raises(ValueError, match=r"values in \[-2"):
        processor(as_float - 2.5)


def test_pretraining_names_a_bit_depth_mismatch_of_the_data(tmp_path):
    folder = write_random_tiffs(tmp_path / "sixteen_bit", count=4, shape=(40, 40, 3), dtype="uint16", high=65535)
    with pytest.raises(ValueError, match=r"statistics are for 8-bit pixels .*tile_0\.tif has values in"):
        pretrain(tiny_arguments(folder, tmp_path / "run"))


# ---------------------------------------------------------------------------------------------------------------------
# 7. Nonsense settings
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("head_bottleneck_size", 0),
        ("student_temperature", 0.0),
        ("teacher_temperature", 0.0),
        ("center_momentum", 1.5),
        ("layer_norm_eps", -1.0),
        ("num_attention_heads", 0),
        ("num_prototypes", 0),
        ("hidden_act", "nope"),
        ("drop_path_rate", 1.5),
        ("hidden_size", 0),
        ("pixel_loss_weight", -1.0),
    ],
)
def test_the_config_rejects_nonsense_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PeraConfig(**{**TINY_SETTINGS, field: value})


def test_the_teacher_refuses_a_momentum_outside_0_1():
    model = PeraForPreTraining(tiny_config())
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\], got 2"):
        model.update_teacher(momentum=2)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("max_train_steps", 0),
        ("checkpoints_total_limit", 0),
        ("logging_steps", 0),
        ("learning_rate", -1.0),
        ("teacher_temperature_end", 0.0),
        ("momentum_start", 1.5),
    ],
)
def test_flags_that_would_mean_something_else_are_refused(flag, value):
    with pytest.raises(ValueError, match=f"--{flag}"):
        PretrainingArguments(output_dir="out", **{flag: value})


# ---------------------------------------------------------------------------------------------------------------------
# 9. Smaller items
# ---------------------------------------------------------------------------------------------------------------------


def test_empty_images_and_batches_are_refused_with_a_message():
    processor = PeraImageProcessor.from_preset("pera-rgb", size=32)
    with pytest.raises(ValueError, match="holds no pixels"):
        processor(np.zeros((3, 0, 0), dtype=np.uint8), input_data_format="channels_first")
    model = PeraForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="batch size 0"):
        model.pera(torch.zeros(0, 3, 32, 32))


def test_exports_are_readable_like_any_other_file(images, tmp_path):
    umask = os.umask(0o022)
    try:
        pretrain(tiny_arguments(images, tmp_path / "run", max_train_steps=1))
    finally:
        os.umask(umask)
    for path in (tmp_path / "run" / "model.safetensors", tmp_path / "run" / "encoder" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_webp_files_are_listed_and_files_of_other_types_are_named(tmp_path, caplog):
    if not features.check("webp"):
        pytest.skip("this Pillow was built without WebP")
    Image.new("RGB", (16, 16)).save(tmp_path / "tile.webp")
    (tmp_path / "scene.jp2").write_bytes(b"not read")
    with caplog.at_level(logging.WARNING):
        assert find_images(tmp_path) == [tmp_path / "tile.webp"]
    assert "scene.jp2" in caplog.text


def test_replaced_samples_are_reported_without_tracking(images, tmp_path, caplog):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "tile_00.png").write_bytes(b"not a png")  # replaced by the next usable image whenever drawn
    with caplog.at_level(logging.WARNING):
        summary = pretrain(tiny_arguments(folder, tmp_path / "run", max_train_steps=3))  # one epoch of 12 images
    assert summary["replaced_samples"] == 1
    assert "1 samples were unusable" in caplog.text
