"""Shared test settings: the tiny PerA used wherever a test needs a real but fast model."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from safetensors.torch import load_file

from modeling_pera import PeraConfig, PeraImageProcessor, PeraModel
from modeling_pera.pretraining import PretrainingArguments, pretrain
from modeling_pera.views import AlignedPairViews


TINY_SETTINGS = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "local_crop_size": 16,
    "head_hidden_size": 32,
    "head_bottleneck_size": 16,
    "num_prototypes": 64,
}


def tiny_config(**overrides) -> PeraConfig:
    """A tiny PerA config (32 wide, 32 px crops of 8 px patches); `overrides` change any field."""
    return PeraConfig(**{**TINY_SETTINGS, **overrides})


def tiny_config_overrides(**overrides) -> str:
    """The tiny settings as a `--config_overrides` string."""
    return ",".join(f"{key}={value}" for key, value in {**TINY_SETTINGS, **overrides}.items())


def run_without_package(script: str, *arguments, workdir: Path) -> subprocess.CompletedProcess:
    """
    Runs the Python `script` (with `arguments` in `sys.argv[1:]`) in a fresh process set up like a user's machine
    without this package: `modeling_pera` cannot be imported, the Hub is offline and `HF_HOME` is private to
    `workdir`, the working directory. Fails the calling test with the process's output when the script fails.
    """
    environment = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HOME", "HF_MODULES_CACHE")
    }
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(workdir / "hf_home"))
    blocked = 'import sys\nsys.modules["modeling_pera"] = None  # the package is not installed there\n'
    result = subprocess.run(
        [sys.executable, "-c", blocked + textwrap.dedent(script), *map(str, arguments)],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def write_rgb_images(folder: Path, count: int = 12) -> Path:
    """`count` random 8-bit RGB PNGs of different sizes (40-51 x 48 px), fixed seed."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        pixels = generator.integers(0, 256, (40 + index, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"tile_{index:02d}.png")
    return folder


def write_random_tiffs(folder: Path, count: int, shape: tuple[int, ...], dtype: str, high: int) -> Path:
    """`count` TIFFs `tile_<i>.tif` of uniform random pixels in [0, high) (channels last), fixed seed."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(1)
    for index in range(count):
        tifffile.imwrite(folder / f"tile_{index}.tif", generator.integers(0, high, shape, dtype=dtype))
    return folder


# The code files a saved model folder carries (the Hub code), for tests that check a folder is complete.
HUB_FILES = (
    "configuration_pera.py",
    "modeling_pera.py",
    "layers_pera.py",
    "losses_pera.py",
    "image_processing_pera.py",
    "bands_pera.py",
)


# The tiny model of the pretraining tests: 2 local crops keep a step short.
TINY_MODEL = tiny_config_overrides(num_local_crops=2)


def tiny_arguments(train_dir, output_dir, **overrides) -> PretrainingArguments:
    """Flags of a 4-step pretraining run of the tiny model on `train_dir` (batch 4, a log every step, no workers,
    seed 3); `overrides` change any field."""
    settings = dict(
        train_dir=None if train_dir is None else str(train_dir),
        output_dir=str(output_dir),
        config_overrides=TINY_MODEL,
        per_device_train_batch_size=4,
        max_train_steps=4,
        logging_steps=1,
        dataloader_num_workers=0,
        seed=3,
    )
    return PretrainingArguments(**{**settings, **overrides})


def sixteen_bit_views(global_crop_size=32, num_channels=4) -> AlignedPairViews:
    """Views with band statistics for write_synthetic_scene's uint16 values (no rescaling)."""
    return AlignedPairViews(
        global_crop_size=global_crop_size,
        local_crop_size=16,
        num_global_crops=2,
        num_local_crops=2,
        image_mean=[1400.0] * num_channels,
        image_std=[250.0] * num_channels,
        offset=0.0,
        rescale_factor=1.0,
    )


def sixteen_bit_start(folder: Path, num_channels: int = 4) -> Path:
    """A tiny encoder with a processor for write_synthetic_scene's uint16 values, to continue from."""
    PeraModel(tiny_config(num_channels=num_channels, num_local_crops=2)).save_pretrained(folder)
    PeraImageProcessor(
        num_channels=num_channels,
        image_mean=[1400.0] * num_channels,
        image_std=[250.0] * num_channels,
        do_rescale=False,
        size={"height": 32, "width": 32},
    ).save_pretrained(folder)
    return folder


def assert_resumes_exactly(tmp_path: Path, weights: str = "model.safetensors", **source) -> dict:
    """Runs 4 tiny steps on `source` (PretrainingArguments fields) into tmp_path/full with a checkpoint at step 2, resumes
    a copy of that checkpoint in tmp_path/interrupted, and asserts the same losses and bit-identical `weights` (a file
    of the output folder). Returns the full run's summary."""
    train_dir = source.pop("train_dir", None)
    full = pretrain(tiny_arguments(train_dir, tmp_path / "full", checkpointing_steps=2, **source))
    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    (tmp_path / "full" / "checkpoints" / "step_2").rename(interrupted / "checkpoints" / "step_2")
    resumed = pretrain(tiny_arguments(train_dir, interrupted, resume_from_checkpoint="latest", **source))
    assert resumed["loss_history"] == full["loss_history"][2:]
    expected, got = load_file(tmp_path / "full" / weights), load_file(interrupted / weights)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    return full
