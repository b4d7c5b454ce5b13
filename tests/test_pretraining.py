"""The pretraining job end to end: schedules, parameter groups, the script on real and multispectral images, the
exported encoder, exact resume, and a 2-process run."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fixtures import make_loop_fixture
from modeling_pera import PeraConfig, PeraForPreTraining
from modeling_pera.pretraining import (
    CheckpointError,
    PretrainingArguments,
    build_model,
    parameter_groups,
    parse_config_overrides,
    pretrain,
)
from modeling_pera.pretraining.checkpoints import stream_state_path
from modeling_pera.schedules import PretrainingSchedule
from pera_testing import TINY_MODEL, run_without_package, tiny_arguments, write_random_tiffs, write_rgb_images


REPO_ROOT = Path(__file__).resolve().parents[1]


def load_encoder_without_package(encoder_dir: Path, num_channels: int) -> str:
    script = f"""
        import torch
        from transformers import AutoImageProcessor, AutoModel
        encoder = AutoModel.from_pretrained({str(encoder_dir)!r}, trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained({str(encoder_dir)!r}, trust_remote_code=True)
        image = torch.randint(0, 256, ({num_channels}, 40, 40), dtype=torch.uint8).numpy()
        features = encoder(**processor(image, input_data_format="channels_first", return_tensors="pt")).pooler_output
        print(type(encoder).__name__, tuple(features.shape))
        """
    return run_without_package(script, workdir=encoder_dir.parent).stdout.strip()


def test_schedules_follow_the_reference_shapes():
    schedule = PretrainingSchedule(total_steps=200)
    start, warm, end = schedule.at(0), schedule.at(20), schedule.at(200)
    assert (
        start.learning_rate == 0
        and warm.learning_rate == pytest.approx(1e-3)
        and end.learning_rate == pytest.approx(1e-6)
    )
    assert start.weight_decay == pytest.approx(0.04) and end.weight_decay == pytest.approx(0.2)
    assert start.momentum == pytest.approx(0.992) and end.momentum == pytest.approx(1.0)
    assert start.teacher_temperature == pytest.approx(0.03)
    assert schedule.at(15).teacher_temperature == pytest.approx(0.04)
    assert schedule.at(30).teacher_temperature == schedule.at(150).teacher_temperature == pytest.approx(0.05)
    momenta = [schedule.at(step).momentum for step in range(201)]
    assert momenta == sorted(momenta)


def test_only_student_matrices_are_decayed():
    model = PeraForPreTraining(PeraConfig(**parse_config_overrides(TINY_MODEL)))
    decayed, not_decayed = parameter_groups(model)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    not_decayed_names = {names[id(p)] for p in not_decayed["params"]}
    assert not any(name.startswith(("pera.", "teacher_dino_head.")) for name in decayed_names | not_decayed_names)
    assert "student.layers.0.attention.q_proj.weight" in decayed_names
    assert {
        "student.layers.0.attention.q_proj.bias",
        "student.layers.0.norm1.weight",
        "student.embeddings.cls_token",
        "student.embeddings.mask_token",
        "student.embeddings.position_embeddings",
        "student_dino_head.last_layer.weight_g",
    } <= not_decayed_names
    assert len(decayed_names | not_decayed_names) == sum(p.requires_grad for p in model.parameters())


def test_script_on_real_images_exports_a_loadable_encoder(tmp_path, shared_data):
    images = tmp_path / "images"
    for path in sorted((shared_data / "ucmerced").glob("*/*.jpg"))[::200][:10]:
        images.mkdir(exist_ok=True)
        shutil.copy(path, images / f"{path.parent.name}_{path.name}")
    command = [
        sys.executable,
        str(REPO_ROOT / "examples" / "run_pretraining.py"),
        "--train_dir",
        str(images),
        "--output_dir",
        str(tmp_path / "run"),
        "--config_overrides",
        TINY_MODEL,
        "--per_device_train_batch_size",
        "4",
        "--max_train_steps",
        "2",
        "--logging_steps",
        "1",
        "--dataloader_num_workers",
        "0",
        "--with_tracking",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "model.safetensors").is_file() and (run / "encoder" / "model.safetensors").is_file()
    assert list((run / "pera_pretraining").rglob("events.out.tfevents*")), "no TensorBoard events written"
    assert load_encoder_without_package(run / "encoder", num_channels=3) == "PeraModel (1, 32)"


def test_multispectral_geotiffs_train_and_export(tmp_path):
    images = write_random_tiffs(tmp_path / "tiles", count=8, shape=(36, 36, 4), dtype="uint8", high=256)
    summary = pretrain(
        tiny_arguments(images, tmp_path / "run", config_overrides=TINY_MODEL + ",num_channels=4", max_train_steps=2)
    )
    assert summary["completed_steps"] == 2 and np.isfinite(summary["loss"])
    config = json.loads((tmp_path / "run" / "encoder" / "config.json").read_text())
    assert config["num_channels"] == 4 and config["architectures"] == ["PeraModel"]
    processor = json.loads((tmp_path / "run" / "encoder" / "preprocessor_config.json").read_text())
    assert len(processor["image_mean"]) == 4
    assert load_encoder_without_package(tmp_path / "run" / "encoder", num_channels=4) == "PeraModel (1, 32)"


LOOP_FIXTURE = Path(__file__).parent / "fixtures" / "loop_losses_3e8d398.json"


@pytest.mark.parametrize("recipe", make_loop_fixture.RECIPES)
def test_the_loop_gives_the_losses_it_gave_before_the_mae_baseline_joined_it(recipe, tmp_path):
    # tests/fixtures/README.md: recorded by the loop of commit 3e8d398, at a fixed seed
    expected = json.loads(LOOP_FIXTURE.read_text())[recipe]
    images = make_loop_fixture.write_images(tmp_path / "images")
    got = make_loop_fixture.loss_history(images, tmp_path / "run", recipe)
    assert [step for step, _ in got] == [step for step, _ in expected]
    np.testing.assert_allclose([loss for _, loss in got], [loss for _, loss in expected], rtol=1e-5, atol=0)


def test_resume_reaches_the_same_weights_and_losses(tmp_path):
    images = write_rgb_images(tmp_path / "images")
    full = pretrain(tiny_arguments(images, tmp_path / "full", checkpointing_steps=2, dataloader_num_workers=2))
    # a run stopped after step 2: only its step-2 checkpoint survives
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_2", interrupted / "checkpoints" / "step_2")
    resumed = pretrain(tiny_arguments(images, interrupted, resume_from_checkpoint="latest", dataloader_num_workers=2))
    assert resumed["loss_history"] == full["loss_history"][2:]
    expected = load_file(tmp_path / "full" / "model.safetensors")
    got = load_file(interrupted / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert torch.count_nonzero(got["center"]) > 0


def test_the_clock_ends_a_run_within_its_schedule_and_counts_across_resumes(tmp_path):
    images = write_rgb_images(tmp_path / "images")
    pretrain(tiny_arguments(images, tmp_path / "full", checkpointing_steps=2))
    interrupted = tmp_path / "interrupted"  # a run stopped after step 2
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_2", interrupted / "checkpoints" / "step_2")
    saved = json.loads((interrupted / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert saved["train_seconds"] > 0
    # Resumed with a limit the saved training time already exceeds: one more step, then the export.
    resumed = pretrain(
        tiny_arguments(
            images, interrupted, resume_from_checkpoint="latest", max_train_minutes=saved["train_seconds"] / 120
        )
    )
    assert resumed["stopped_by_time_limit"] and resumed["completed_steps"] == 3
    assert resumed["train_seconds"] > saved["train_seconds"]
    # The schedules stay laid out over --max_train_steps: step 3 of 4 has the lr of the 4-step run.
    arguments = tiny_arguments(images, tmp_path / "unused")
    schedule = PretrainingSchedule.from_arguments(arguments, total_steps=4)
    assert resumed["learning_rate"] == pytest.approx(schedule.at(2).learning_rate)
    assert (interrupted / "encoder" / "model.safetensors").is_file()


def test_max_train_minutes_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="--max_train_minutes must be a positive number, got 0"):
        tiny_arguments(None, tmp_path, max_train_minutes=0)


def write_parquet_shards(folder: Path, num_shards: int = 4, per_shard: int = 3) -> Path:
    """`num_shards` parquet files of `per_shard` random PNG images each: a stream of `num_shards` shards."""
    folder.mkdir(parents=True)
    generator = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image()})
    for shard in range(num_shards):
        images = []
        for _ in range(per_shard):
            buffer = io.BytesIO()
            Image.fromarray(generator.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        datasets.Dataset.from_dict({"image": images}, features=features).to_parquet(folder / f"{shard}.parquet")
    return folder


def test_a_streamed_run_resumes_exactly_from_its_position_in_the_stream(tmp_path):
    shards = write_parquet_shards(tmp_path / "shards")
    # 2 workers with 2 shards (6 images) each, 2 images per batch: 6 batches per epoch, the workers' in turn; after
    # step 3 the second worker's batch comes next, and step 8 is in the second epoch.
    streamed = dict(
        dataset_name="parquet",
        streaming=True,
        per_device_train_batch_size=2,
        max_train_steps=8,
        dataloader_num_workers=2,
    )
    full = pretrain(tiny_arguments(shards, tmp_path / "full", checkpointing_steps=3, **streamed))
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_3", interrupted / "checkpoints" / "step_3")
    resumed = pretrain(tiny_arguments(shards, interrupted, resume_from_checkpoint="latest", **streamed))
    assert resumed["loss_history"] == full["loss_history"][3:]
    expected = load_file(tmp_path / "full" / "model.safetensors")
    got = load_file(interrupted / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)

    checkpoint = str(tmp_path / "full" / "checkpoints" / "step_6")
    other_workers = {**streamed, "dataloader_num_workers": 1}
    with pytest.raises(CheckpointError, match="dataloader_num_workers was 2, now 1"):
        pretrain(tiny_arguments(shards, tmp_path / "full", resume_from_checkpoint=checkpoint, **other_workers))
    (shards / "3.parquet").unlink()  # a shard of the stream has disappeared since the checkpoint
    with pytest.raises(CheckpointError, match="num_stream_shards was 4, now 3"):
        pretrain(tiny_arguments(shards, tmp_path / "full", resume_from_checkpoint=checkpoint, **streamed))
    # A streamed checkpoint written before positions were saved: intact, but without a position.
    stream_state_path(Path(checkpoint), 0).unlink()
    manifest = Path(checkpoint) / "manifest.json"
    files = json.loads(manifest.read_text())["files"]
    manifest.write_text(
        json.dumps({"files": {name: record for name, record in files.items() if "stream" not in name}})
    )
    with pytest.raises(CheckpointError, match="the stream position of process 0 is missing"):
        pretrain(tiny_arguments(shards, tmp_path / "full", resume_from_checkpoint=checkpoint, **streamed))


def test_recipes_fill_only_what_the_user_left_unset():
    reference = PretrainingArguments(output_dir="out")
    assert (reference.learning_rate, reference.momentum_start, reference.model_config_overrides()) == (1e-3, 0.992, {})
    assert (reference.teacher_temperature_start, reference.teacher_temperature_end) == (0.03, 0.05)
    short = PretrainingArguments(output_dir="out", recipe="short-budget")
    assert (short.learning_rate, short.min_learning_rate, short.momentum_start) == (3e-4, 1e-5, 0.95)
    assert (short.teacher_temperature_start, short.teacher_temperature_end) == (0.04, 0.05)
    assert short.model_config_overrides() == {
        "num_prototypes": 1024,
        "drop_path_rate": 0.1,
        "head_hidden_size": 512,
        "head_bottleneck_size": 256,
        "num_local_crops": 4,
        "normalize_pixel_targets": True,
        "student_ratio": 0.3,
        "teacher_ratio": 0.5,
    }
    # an explicit flag wins, even one equal to the reference value
    explicit = PretrainingArguments(
        output_dir="out", recipe="short-budget", learning_rate=1e-3, config_overrides="num_prototypes=64"
    )
    assert explicit.learning_rate == 1e-3
    assert explicit.model_config_overrides()["num_prototypes"] == 64
    assert explicit.model_config_overrides()["num_local_crops"] == 4
    with pytest.raises(ValueError, match="Unknown --recipe 'fast'"):
        PretrainingArguments(output_dir="out", recipe="fast")


def test_a_recipe_does_not_change_the_architecture_of_a_checkpoint(tmp_path):
    images = write_rgb_images(tmp_path / "images")
    pretrain(tiny_arguments(images, tmp_path / "first", max_train_steps=1))
    continued = build_model(
        PretrainingArguments(
            output_dir=str(tmp_path / "second"), model_name_or_path=str(tmp_path / "first"), recipe="short-budget"
        )
    )
    assert continued.config.num_prototypes == 64  # the checkpoint's, not the recipe's 1024
    fresh = build_model(PretrainingArguments(output_dir="out", model_size="vit-tiny", recipe="short-budget"))
    assert (fresh.config.num_prototypes, fresh.config.drop_path_rate) == (1024, 0.1)


def test_snapshots_hold_the_teacher_at_their_step(tmp_path):
    images = write_rgb_images(tmp_path / "images")
    summary = pretrain(tiny_arguments(images, tmp_path / "run", snapshot_steps=[1, 4]))
    assert summary["train_seconds"] > 0
    snapshots = tmp_path / "run" / "snapshots"
    assert sorted(path.name for path in snapshots.iterdir()) == ["step_1", "step_4"]
    final = load_file(tmp_path / "run" / "encoder" / "model.safetensors")
    at_end = load_file(snapshots / "step_4" / "model.safetensors")
    after_one = load_file(snapshots / "step_1" / "model.safetensors")
    assert final.keys() == at_end.keys() == after_one.keys()
    assert all(torch.equal(final[name], at_end[name]) for name in final)
    assert not all(torch.equal(final[name], after_one[name]) for name in final)
    assert (snapshots / "step_1" / "preprocessor_config.json").is_file()


def test_two_process_run_keeps_ranks_in_step(tmp_path):
    images = write_rgb_images(tmp_path / "images", count=16)
    script = tmp_path / "two_ranks.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import torch
            from modeling_pera import PeraForPreTraining
            from modeling_pera.pretraining import PretrainingArguments, pretrain

            models = []
            update_teacher = PeraForPreTraining.update_teacher
            def recording_update_teacher(self, momentum):
                models[:] = [self]
                update_teacher(self, momentum)
            PeraForPreTraining.update_teacher = recording_update_teacher

            summary = pretrain(PretrainingArguments(
                train_dir={str(images)!r}, output_dir={str(tmp_path / "run")!r}, config_overrides={TINY_MODEL!r},
                per_device_train_batch_size=2, max_train_steps=3, checkpointing_steps=3, logging_steps=1,
                dataloader_num_workers=0, seed=5,
            ))
            rank = torch.distributed.get_rank()
            model = models[0]
            torch.save({{"state": model.state_dict(), "world_size": torch.distributed.get_world_size(),
                        "loss": summary["loss"]}}, {str(tmp_path)!r} + f"/rank{{rank}}.pt")
            """
        )
    )
    # accelerate detects a torchrun launch on the CPU only with ACCELERATE_USE_CPU
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["loss"] != ranks[1]["loss"]  # the ranks trained on different images
    for name, tensor in ranks[0]["state"].items():
        if name.startswith(("pera.", "teacher_dino_head.", "student", "pixel_head.", "center")):
            torch.testing.assert_close(ranks[1]["state"][name], tensor, rtol=0, atol=0, msg=name)
    assert torch.count_nonzero(ranks[0]["state"]["center"]) > 0
    assert [path.name for path in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_3"]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {
        p.name for p in (tmp_path / "run" / "checkpoints" / "step_3").iterdir()
    }
    # the 2-process checkpoint cannot continue exactly with 1 process (global batch, random states, data position)
    with pytest.raises(CheckpointError, match="num_processes was 2, now 1"):
        pretrain(
            tiny_arguments(
                images,
                tmp_path / "run",
                per_device_train_batch_size=2,
                max_train_steps=4,
                seed=5,
                resume_from_checkpoint="latest",
            )
        )


def test_photometry_on_device_trains_on_the_same_views(tmp_path):
    # Deferred photometry (the default) draws the same views; only the 8-bit rounding of the crops differs.
    images = write_rgb_images(tmp_path / "images")
    in_loader = pretrain(tiny_arguments(images, tmp_path / "in_loader", max_train_steps=3, photometry_on_device=False))
    on_device = pretrain(tiny_arguments(images, tmp_path / "on_device", max_train_steps=3))
    np.testing.assert_allclose(on_device["loss_history"], in_loader["loss_history"], rtol=2e-3)
    assert in_loader["loss_history"] != on_device["loss_history"]  # the deferred path really ran


def test_compiled_forward_trains_like_eager(tmp_path):
    images = write_rgb_images(tmp_path / "images")
    eager = pretrain(tiny_arguments(images, tmp_path / "eager", max_train_steps=3))
    with torch._inductor.config.patch(fallback_random=True):  # drop path draws the same numbers as in eager mode
        compiled = pretrain(tiny_arguments(images, tmp_path / "compiled", max_train_steps=3, torch_compile=True))
    np.testing.assert_allclose(compiled["loss_history"], eager["loss_history"], rtol=1e-4)
