# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Encoding image files with a frozen encoder: loading it, reading and preprocessing the images (any band count),
batched extraction with pooled or patch features, and the feature cache."""

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from ..raster import read_encoder_input


POOLINGS = ("cls", "mean", "cls+mean")


# The `pooling` of `extract_features` that keeps one feature vector per patch, as a map `(dim, rows, columns)`.
PATCH_FEATURES = "patches"


class _ImageFiles(torch.utils.data.Dataset):
    """Reads and preprocesses one image file per item, so that a `DataLoader` can do it in worker processes."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        processor: Any,
        processor_kwargs: dict[str, Any],
        bands: Sequence[int] | None = None,
    ):
        self.paths = list(paths)
        self.processor = processor
        self.processor_kwargs = processor_kwargs
        self.bands = bands

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return preprocess_image_file(self.paths[index], self.processor, bands=self.bands, **self.processor_kwargs)


def preprocess_image_file(
    path: str | os.PathLike, processor: Any, bands: Sequence[int] | None = None, **processor_kwargs
) -> torch.Tensor:
    """
    Reads an image file or band folder with [`~modeling_pera.raster.read_image`] and preprocesses it.

    Args:
        path (`str` or `os.PathLike`):
            A JPEG, PNG or (Geo)TIFF file with any number of bands, or a band folder.
        processor:
            An image processor accepting channels-first arrays, e.g. [`PeraImageProcessor`] or any transformers
            image processor (those take 1 or 3 bands).
        bands (`Sequence[int]`, *optional*):
            The file's bands to give the processor, in order (0-based; see [`~modeling_pera.raster.select_bands`]),
            e.g. `[0, 1, 2]` for the RGB of RGB+NIR tiles; all of them by default.
        processor_kwargs:
            Per-call options of the processor, e.g. `size`.

    Returns:
        `torch.Tensor`: the pixel values, `(bands, height, width)`.
    """
    pixels = read_encoder_input(path, getattr(processor, "num_channels", None), bands)
    inputs = processor(pixels, return_tensors="pt", input_data_format="channels_first", **processor_kwargs)
    return inputs["pixel_values"][0]


def _accepts_argument(model: nn.Module, name: str) -> bool:
    """Whether `model.forward` has a parameter called `name` (not just `**kwargs`)."""
    return name in inspect.signature(model.forward).parameters


@contextlib.contextmanager
def _evaluation_mode(model: nn.Module) -> Iterator[None]:
    """
    Puts `model` in eval mode and, for masked-image-modelling encoders such as ViT-MAE (whose forward masks
    `config.mask_ratio` of the patches at random, even in eval mode), sets `config.mask_ratio` to 0 so that every patch
    is encoded. The training flag and the mask ratio are restored on exit.
    """
    was_training = model.training
    config = getattr(model, "config", None)
    mask_ratio = getattr(config, "mask_ratio", None)
    model.eval()
    if mask_ratio is not None:
        config.mask_ratio = 0.0
    try:
        yield
    finally:
        model.train(was_training)
        if mask_ratio is not None:
            config.mask_ratio = mask_ratio


def _forward_kwargs(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, Any]:
    """Options that make stock encoders see the whole image at any size, in raster order."""
    kwargs = {}
    # ViT and ViT-MAE refuse images of another size than their config's unless asked to interpolate.
    if _accepts_argument(model, "interpolate_pos_encoding"):
        kwargs["interpolate_pos_encoding"] = True
    # ViT-MAE shuffles the patches by argsort(noise) even with mask_ratio 0: increasing noise keeps raster order.
    if _accepts_argument(model, "noise") and getattr(getattr(model, "config", None), "mask_ratio", None) is not None:
        num_patches = _num_patches(model, pixel_values)
        kwargs["noise"] = torch.arange(num_patches, device=pixel_values.device).expand(pixel_values.shape[0], -1)
    return kwargs


def _patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int] | None:
    """The `(rows, columns)` of patches of a patch-based encoder for `pixel_values`, or `None` without
    `config.patch_size`."""
    patch_size = getattr(getattr(model, "config", None), "patch_size", None)
    if patch_size is None:
        return None
    patch_height, patch_width = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    return pixel_values.shape[-2] // patch_height, pixel_values.shape[-1] // patch_width


def _num_patches(model: nn.Module, pixel_values: torch.Tensor) -> int | None:
    """The number of patches of a patch-based encoder for `pixel_values`, or `None` without `config.patch_size`."""
    grid = _patch_grid(model, pixel_values)
    return None if grid is None else grid[0] * grid[1]


def pool_encoder_outputs(outputs: Any, pooling: str, num_patches: int | None) -> torch.Tensor:
    """
    Turns an encoder's outputs into one feature vector per image.

    The CLS token is `last_hidden_state[:, 0]` when the sequence holds more tokens than patches (CLS, and register
    tokens if any, come first: ViT, ViT-MAE, DINOv2, PerA): the CLS token after the final norm, which DINO-style
    evaluations use, rather than `pooler_output`, which ViT computes with an extra dense + tanh layer. Encoders
    without a CLS token (Swin, ConvNeXt, ...) use their `pooler_output` for `"cls"`, or the token mean if they have
    none.

    Args:
        outputs:
            The model's output, with `last_hidden_state` (`(batch, tokens, dim)` or a `(batch, dim, height, width)`
            feature map) and optionally `pooler_output`.
        pooling (`str`):
            `"cls"`, `"mean"` (mean of the patch tokens) or `"cls+mean"` (both, concatenated).
        num_patches (`int`, *optional*):
            The number of patch tokens, to tell them from the CLS and register tokens.

    Returns:
        `torch.Tensor`: `(batch, dim)`, or `(batch, 2 * dim)` for `"cls+mean"`.
    """
    hidden_states = outputs.last_hidden_state
    if hidden_states.ndim == 4:  # a convolutional feature map
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    num_prefix_tokens = hidden_states.shape[1] - num_patches if num_patches is not None else 0
    has_cls_token = num_prefix_tokens > 0
    patch_mean = hidden_states[:, num_prefix_tokens if has_cls_token else 0 :].mean(dim=1)
    if pooling == "mean":
        return patch_mean
    if has_cls_token:
        global_feature = hidden_states[:, 0]
    elif getattr(outputs, "pooler_output", None) is not None:
        global_feature = outputs.pooler_output.flatten(1)
    else:
        global_feature = patch_mean
    if pooling == "cls":
        return global_feature
    return torch.cat((global_feature, patch_mean), dim=1)


def patch_feature_map(outputs: Any, grid_size: tuple[int, int] | None) -> torch.Tensor:
    """
    Turns an encoder's outputs into a map of patch features, for dense probes.

    Args:
        outputs:
            The model's output, with `last_hidden_state`: tokens `(batch, tokens, dim)` whose last
            `rows * columns` are the patches in raster order (CLS and register tokens, if any, come first), or a
            convolutional feature map `(batch, dim, height, width)`, returned as it is.
        grid_size (`tuple[int, int]`, *optional*):
            The `(rows, columns)` of patches; required for token outputs.

    Returns:
        `torch.Tensor`: `(batch, dim, rows, columns)`.
    """
    hidden_states = outputs.last_hidden_state
    if hidden_states.ndim == 4:
        return hidden_states
    if grid_size is None or hidden_states.shape[1] < grid_size[0] * grid_size[1]:
        raise ValueError(
            f"Cannot lay the {hidden_states.shape[1]} output tokens out on a patch grid of {grid_size}: patch feature "
            "maps need an encoder with `config.patch_size` that returns one token per patch (plain ViTs), or a "
            "convolutional feature map."
        )
    rows, columns = grid_size
    patch_tokens = hidden_states[:, hidden_states.shape[1] - rows * columns :]
    return patch_tokens.reshape(len(patch_tokens), rows, columns, -1).permute(0, 3, 1, 2)


def _weights_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameter values (sum and sum of squares of each tensor), for cache keys."""
    with torch.no_grad():
        statistics = [
            torch.stack((tensor.double().sum(), tensor.double().square().sum()))
            for tensor in model.state_dict().values()
            if tensor.is_floating_point()
        ]
    values = torch.stack(statistics).cpu().numpy() if statistics else np.zeros(0)
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]


def _processor_description(processor: Any) -> str:
    to_json_string = getattr(processor, "to_json_string", None)
    return to_json_string() if to_json_string is not None else repr(processor)


def _features_cache_key(
    model: nn.Module,
    processor: Any,
    paths: Sequence[str | os.PathLike],
    pooling: str,
    processor_kwargs: dict[str, Any],
    bands: Sequence[int] | None,
) -> dict[str, Any]:
    """What the features depend on: the model (name and weights), the preprocessing, the pooling and the files."""
    return {
        "model": str(getattr(model, "name_or_path", type(model).__name__)),
        "weights": _weights_fingerprint(model),
        "processor": _processor_description(processor),
        "processor_kwargs": json.dumps(processor_kwargs, sort_keys=True, default=str),
        "pooling": pooling,
        "bands": None if bands is None else list(bands),
        "files": [(str(Path(path).resolve()), Path(path).stat().st_size) for path in paths],
    }


def _encode_batches(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, pooling: str, progress_bar: bool
) -> torch.Tensor:
    """The pooled features of every batch of `loader`, float32 on the CPU (see [`extract_features`])."""
    features = []
    with (
        _evaluation_mode(model),
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        tqdm(total=len(loader.dataset), unit="img", desc="Extracting features", disable=not progress_bar) as progress,
    ):
        for pixel_values in loader:
            pixel_values = pixel_values.to(device, non_blocking=True)
            outputs = model(pixel_values=pixel_values, **_forward_kwargs(model, pixel_values))
            if pooling == PATCH_FEATURES:
                pooled = patch_feature_map(outputs, _patch_grid(model, pixel_values))
            else:
                pooled = pool_encoder_outputs(outputs, pooling, _num_patches(model, pixel_values))
            # Kept on the device until the end: a copy to the CPU per batch would synchronise every step.
            features.append(pooled.float())
            progress.update(len(pixel_values))
    return torch.cat(features).cpu()


def extract_features(
    model: nn.Module,
    processor: Any,
    paths: Sequence[str | os.PathLike],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    pooling: str = "cls",
    cache_path: str | os.PathLike | None = None,
    processor_kwargs: dict[str, Any] | None = None,
    num_workers: int = 0,
    progress_bar: bool = True,
    bands: Sequence[int] | None = None,
) -> torch.Tensor:
    """
    Encodes image files with a frozen vision encoder.

    Images are read with [`~modeling_pera.raster.read_image`], preprocessed one by one by `processor` (in
    `num_workers` worker processes), and encoded in batches in eval mode under `torch.inference_mode()`, with bf16
    autocast on CUDA. Encoders that mask patches at random (ViT-MAE) are run with `config.mask_ratio = 0` (restored
    afterwards) and `noise` set so that every patch is encoded, in raster order.

    Args:
        model (`nn.Module`):
            A vision encoder returning `last_hidden_state` (and optionally `pooler_output`), e.g. [`PeraModel`],
            `ViTModel`, `ViTMAEModel` or `Dinov2Model`.
        processor:
            Its image processor (see [`preprocess_image_file`]).
        paths (`Sequence[str | os.PathLike]`):
            The image files.
        batch_size (`int`, *optional*, defaults to 64):
            Images per forward pass.
        device (`str` or `torch.device`, *optional*):
            Where to run the model; defaults to the device the model is on. The model is moved there.
        pooling (`str`, *optional*, defaults to `"cls"`):
            `"cls"`, `"mean"` or `"cls+mean"` (see [`pool_encoder_outputs`]), or `"patches"` for a map of patch
            features per image (see [`patch_feature_map`]).
        cache_path (`str` or `os.PathLike`, *optional*):
            A file to save the features to with `torch.save`, together with a key (model name, a fingerprint of its
            weights, the preprocessing, the pooling and the files). When the file exists and its key matches, the
            features are loaded from it and the model is not run.
        processor_kwargs (`dict`, *optional*):
            Per-call options of the processor, e.g. `{"size": {"height": 224, "width": 224}}`.
        num_workers (`int`, *optional*, defaults to 0):
            Processes reading and preprocessing images (0: the main process).
        progress_bar (`bool`, *optional*, defaults to `True`):
            Whether to show a progress bar (with the rate in images per second).
        bands (`Sequence[int]`, *optional*):
            The files' bands to encode, in order (see [`preprocess_image_file`]); all of them by default.

    Returns:
        `torch.Tensor`: float32 features on the CPU, `(len(paths), dim)`, or `(len(paths), dim, rows, columns)` for
        `"patches"`, in the order of `paths`.
    """
    if pooling not in (*POOLINGS, PATCH_FEATURES):
        raise ValueError(f"`pooling` must be one of {(*POOLINGS, PATCH_FEATURES)}, got {pooling!r}.")
    if not paths:
        raise ValueError("No image paths were given.")
    processor_kwargs = processor_kwargs or {}
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    cache_key = None
    if cache_path is not None:
        cache_key = _features_cache_key(model, processor, paths, pooling, processor_kwargs, bands)
        if os.path.isfile(cache_path):
            cached = torch.load(cache_path, weights_only=True)
            if cached.get("key") == cache_key:
                return cached["features"]

    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, processor, processor_kwargs, bands),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    features = _encode_batches(model, loader, device, pooling, progress_bar)

    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": cache_key, "features": features}, cache_path)
    return features


def load_encoder(
    model_name_or_path: str | os.PathLike, random_init: bool = False, seed: int = 0, trust_remote_code: bool = False
) -> tuple[nn.Module, Any]:
    """
    Loads a vision encoder and its image processor with the Auto classes.

    Args:
        model_name_or_path (`str` or `os.PathLike`):
            A Hub id or a local folder with a config, weights (unless `random_init`) and a preprocessor config.
        random_init (`bool`, *optional*, defaults to `False`):
            Build the same architecture from the config with fresh random weights (the "random-init encoder"
            baseline) instead of loading the weights.
        seed (`int`, *optional*, defaults to 0):
            Seed of the random weights when `random_init`; the global random state is left untouched.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run the Python code the folder or repository ships (its `auto_map`), for models other than PerA: only for
            code you trust. PerA models load without it (this package registers their classes).

    Returns:
        `tuple[nn.Module, Any]`: the model, in eval mode, and the processor.
    """
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
        if random_init:
            config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        else:
            model = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"{model_name_or_path} is not a PerA model and ships its own Python code, which is not run by default. "
            "Read it first; pass --trust_remote_code (trust_remote_code=True) only if you trust it."
        ) from error
    return model.eval(), processor


def processor_size_kwargs(processor: Any, image_size: int | None) -> dict[str, Any]:
    """Per-call processor options giving square model inputs of side `image_size` (the processor's size if `None`)."""
    if image_size is None:
        return {}
    processor_kwargs = {"size": {"height": image_size, "width": image_size}}
    # Stock processors may center-crop after resizing (e.g. DINOv2's 256 -> 224): crop to the same size.
    if getattr(processor, "do_center_crop", False):
        processor_kwargs["crop_size"] = {"height": image_size, "width": image_size}
    return processor_kwargs
