"""Sharded training (--fsdp): 2 CPU processes (gloo) train what DDP trains, resume exactly from sharded checkpoints
and export a normal encoder; what cannot work is refused by name."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_pera import PeraModel
from modeling_pera.evaluation import load_encoder
from modeling_pera.pretraining import CheckpointError, pretrain
from modeling_pera.pretraining.sharding import SHARDED_STATE_DIRNAME
from pera_testing import TINY_MODEL, tiny_arguments, write_rgb_images


# One launch of 2 processes runs DDP, then --fsdp with a checkpoint at step 2, then --fsdp resumed from a copy of
# that checkpoint (the state a kill after step 2 leaves), with gradient accumulation and an epoch boundary in the way;
# then 2 steps of the MAE baseline under --fsdp; then a run whose teacher weights turn NaN on process 1's shards only.
TWO_PROCESS_RUNS = """
    import json, shutil, sys
    import torch
    from modeling_pera import PeraForPreTraining
    from modeling_pera.pretraining import PretrainingArguments, TrainingDivergedError, pretrain

    images, root = sys.argv[1:]
    def run(name, **settings):
        common = dict(
            train_dir=images, output_dir=f"{root}/{name}", config_overrides=TINY_MODEL, per_device_train_batch_size=2,
            gradient_accumulation_steps=2, max_train_steps=4, logging_steps=1, dataloader_num_workers=0, seed=5,
        )
        return pretrain(PretrainingArguments(**{**common, **settings}))["loss_history"]

    losses = {"ddp": run("ddp"), "fsdp": run("fsdp", fsdp=True, checkpointing_steps=2)}
    if torch.distributed.get_rank() == 0:
        shutil.copytree(f"{root}/fsdp/checkpoints/step_2", f"{root}/interrupted/checkpoints/step_2")
    torch.distributed.barrier()
    losses["resumed"] = run("interrupted", fsdp=True, checkpointing_steps=2, resume_from_checkpoint="latest")
    losses["mae"] = run("mae", fsdp=True, method="mae", max_train_steps=2)
    if torch.distributed.get_rank() == 0:
        with open(f"{root}/losses.json", "w") as file:
            json.dump(losses, file)

    update_teacher = PeraForPreTraining.update_teacher
    def poisoning_update_teacher(self, momentum):
        update_teacher(self, momentum)
        if torch.distributed.get_rank() == 1:
            shard = next(p.to_local() for n, p in self.named_parameters() if n.startswith("pera.") and p.to_local().numel())
            shard.fill_(float("nan"))
    PeraForPreTraining.update_teacher = poisoning_update_teacher
    try:
        run("poisoned", fsdp=True, max_train_steps=2, checkpointing_steps=1)
    except TrainingDivergedError as error:
        with open(f"{root}/poisoned_{torch.distributed.get_rank()}.txt", "w") as file:
            file.write(str(error))
"""


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    images = write_rgb_images(root / "images", count=16)
    script = root / "runs.py"
    script.write_text(f"TINY_MODEL = {TINY_MODEL!r}\n" + textwrap.dedent(TWO_PROCESS_RUNS))
    # accelerate detects a torchrun launch on the CPU only with ACCELERATE_USE_CPU
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(script),
        str(images),
        str(root),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, images, json.loads((root / "losses.json").read_text())


def test_sharded_training_computes_what_ddp_computes(two_process_runs):
    root, _, losses = two_process_runs
    np.testing.assert_allclose(losses["fsdp"], losses["ddp"], rtol=1e-5)
    sharded, replicated = load_file(root / "fsdp" / "model.safetensors"), load_file(root / "ddp" / "model.safetensors")
    assert sharded.keys() == replicated.keys()
    for name, tensor in replicated.items():  # student, teacher (EMA over shards), heads and the all-reduced centre
        torch.testing.assert_close(sharded[name], tensor, rtol=1e-5, atol=1e-5, msg=name)
    assert torch.count_nonzero(sharded["center"]) > 0
    encoder = PeraModel.from_pretrained(root / "fsdp" / "encoder")  # the export is a whole, normal encoder
    torch.testing.assert_close(encoder.state_dict()["embeddings.cls_token"], sharded["pera.embeddings.cls_token"])


def test_a_sharded_run_resumes_exactly(two_process_runs):
    root, _, losses = two_process_runs
    checkpoint = root / "fsdp" / "checkpoints" / "step_2"
    written = {path.name for path in (checkpoint / SHARDED_STATE_DIRNAME).iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= written  # each process wrote its shards
    assert not (checkpoint / "model.safetensors").exists()
    assert losses["resumed"] == losses["fsdp"][2:]
    expected, resumed = (
        load_file(root / "fsdp" / "model.safetensors"),
        load_file(root / "interrupted" / "model.safetensors"),
    )
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_the_mae_baseline_trains_sharded(two_process_runs):
    root, _, losses = two_process_runs
    assert [step for step, _ in losses["mae"]] == [1, 2]
    assert np.isfinite([loss for _, loss in losses["mae"]]).all()
    encoder, _ = load_encoder(root / "mae" / "encoder")
    assert type(encoder).__name__ == "ViTMAEModel"


def test_weights_that_turn_non_finite_on_one_process_stop_every_process_before_the_save(two_process_runs):
    root, _, _ = two_process_runs
    here, elsewhere = (root / "poisoned_1.txt").read_text(), (root / "poisoned_0.txt").read_text()
    assert "the weights became non-finite (pera." in here
    assert "the weights became non-finite (shards held by another process)" in elsewhere
    assert not (root / "poisoned" / "checkpoints").exists() or not any((root / "poisoned" / "checkpoints").iterdir())


def test_a_sharded_checkpoint_is_refused_where_it_cannot_continue(two_process_runs):
    root, images, _ = two_process_runs
    settings = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_train_steps=6, seed=5)
    with pytest.raises(CheckpointError, match="num_processes was 2, now 1"):
        pretrain(tiny_arguments(images, root / "fsdp", resume_from_checkpoint="latest", **settings))
    with pytest.raises(CheckpointError, match="holds sharded weights and this run is not: resume it with --fsdp"):
        pretrain(
            tiny_arguments(
                images, root / "fsdp", resume_from_checkpoint="latest", allow_inexact_resume=True, **settings
            )
        )
    with pytest.raises(ValueError, match="--fsdp shards the model over the run's processes, and this run has one"):
        pretrain(tiny_arguments(images, root / "one_process", fsdp=True))


def test_accelerates_own_fsdp_plugin_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="PerA shards itself.*pass --fsdp"):
        pretrain(tiny_arguments(write_rgb_images(tmp_path / "images"), tmp_path / "run"))
