# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Conversion of checkpoints of the authors' reference PerA implementation to this package's layout.

The reference code (a DINOv2 code base) saves a `torch.save` dict whose `model` entry holds the student and teacher
backbones (`student.backbone.*`, `teacher.backbone.*`), their DINO heads (`{student,teacher}.cls_head.*`), the
student's pixel head (`pred_head.*`) and mask token (`s_mask_token`). The conversion maps every tensor to
[`PeraForPreTraining`], splits the fused `qkv` projections into `q_proj`, `k_proj` and `v_proj`, keeps the
weight-norm `weight_g`/`weight_v` pairs as they are, and refuses checkpoints with unknown or missing keys.

The reference keeps the DINO centre out of its checkpoints: a converted model starts with a zero centre, as a resumed
reference run does.
"""

import os
import pickle
import re
import warnings

import torch

from .configuration_pera import PERA_PRESETS, PeraConfig
from .image_processing_pera import PeraImageProcessor
from .modeling_pera import PeraForPreTraining


# Attention heads of the widths of the preset sizes (768 -> 12 for ViT-B/16, 1024 -> 16 for ViT-G/16-1024): the
# checkpoint's tensors do not tell the head count.
NUM_HEADS_FOR_WIDTH = {preset["hidden_size"]: preset["num_attention_heads"] for preset in PERA_PRESETS.values()}

REFERENCE_SIDES = {"student": "student", "teacher": "pera"}
REFERENCE_HEADS = {"student.cls_head": "student_dino_head", "teacher.cls_head": "teacher_dino_head"}
REFERENCE_PIXEL_HEAD = "pred_head"
REFERENCE_MASK_TOKEN = "s_mask_token"

# Backbone tensors outside the blocks: reference name -> name in `PeraModel`.
_EMBEDDING_KEYS = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
# Block tensors other than the fused qkv projection: reference name -> name in `PeraLayer`.
_BLOCK_KEYS = {
    f"{module}.{parameter}": f"{target}.{parameter}"
    for module, target in (
        ("norm1", "norm1"),
        ("norm2", "norm2"),
        ("attn.proj", "attention.o_proj"),
        ("mlp.fc1", "mlp.fc1"),
        ("mlp.fc2", "mlp.fc2"),
    )
    for parameter in ("weight", "bias")
}
_HEAD_MLP_KEYS = [f"{index}.{parameter}" for index in (0, 2, 4) for parameter in ("weight", "bias")]
_WEIGHT_NORM_KEYS = ("weight_g", "weight_v")

_BLOCK_INDEX = re.compile(r"^(?:student|teacher)\.backbone\.blocks\.(\d+)\.")
# How many names of a key list an error message shows.
_MAX_KEYS_IN_MESSAGE = 50


def load_reference_state_dict(
    checkpoint_path: str | os.PathLike, trust_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """
    Reads the model tensors of a reference PerA checkpoint.

    The file is first read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers. A
    checkpoint that also pickles other objects (training arguments, a config object) cannot be read that way; fully
    unpickling it can execute arbitrary code, so it is only done with `trust_pickle=True`, with a warning.

    Args:
        checkpoint_path (`str` or `os.PathLike`):
            The reference checkpoint: a dict with the state dict under `model` (as the reference saves it, next to the
            optimizer state), or the state dict itself.
        trust_pickle (`bool`, *optional*, defaults to `False`):
            Allow full unpickling when the safe loader refuses the file. Only for files from a source you trust.

    Returns:
        `dict[str, torch.Tensor]`: the reference state dict, on the CPU.

    Raises:
        `ValueError`: if the file needs full unpickling and `trust_pickle` is not set, or holds no state dict.
    """
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise ValueError(
                f"{checkpoint_path} holds Python objects other than tensors, so it can only be read by full "
                "unpickling, which runs whatever code the file contains. If you trust where the file comes from, "
                "convert it with --trust-pickle (`trust_pickle=True`).\nThe safe loader said: "
                f"{str(error).splitlines()[0]}"
            ) from error
        warnings.warn(
            f"Fully unpickling {checkpoint_path} (--trust-pickle): this executes any code the file contains. Only do "
            "this with checkpoints from a source you trust.",
            UserWarning,
            stacklevel=2,
        )
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)

    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(
            f"{checkpoint_path} is not a reference PerA checkpoint: expected a dict with the model's tensors under "
            "'model' (or the tensors themselves)."
        )
    return state_dict


def expected_reference_keys(num_hidden_layers: int) -> set[str]:
    """The keys of a reference PerA state dict whose backbones have `num_hidden_layers` blocks."""
    keys = {REFERENCE_MASK_TOKEN}
    for side in REFERENCE_SIDES:
        backbone = f"{side}.backbone"
        keys.update(f"{backbone}.{name}" for name in _EMBEDDING_KEYS)
        for index in range(num_hidden_layers):
            block = f"{backbone}.blocks.{index}"
            keys.update(f"{block}.{name}" for name in _BLOCK_KEYS)
            keys.update((f"{block}.attn.qkv.weight", f"{block}.attn.qkv.bias"))
    for head in REFERENCE_HEADS:
        keys.update(f"{head}.mlp.{name}" for name in _HEAD_MLP_KEYS)
        keys.update(f"{head}.last_layer.{name}" for name in _WEIGHT_NORM_KEYS)
    keys.update(f"{REFERENCE_PIXEL_HEAD}.mlp0.mlp.{name}" for name in _HEAD_MLP_KEYS)
    keys.update(f"{REFERENCE_PIXEL_HEAD}.last_layer.{name}" for name in _WEIGHT_NORM_KEYS)
    return keys


def _format_keys(keys: set[str]) -> str:
    shown = sorted(keys)[:_MAX_KEYS_IN_MESSAGE]
    more = f"\n  ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return "".join(f"\n  {key}" for key in shown) + more


def check_reference_keys(state_dict: dict[str, torch.Tensor]) -> int:
    """
    Checks that `state_dict` has exactly the keys of a reference PerA checkpoint.

    Returns:
        `int`: the number of blocks of the backbones.

    Raises:
        `ValueError`: listing the unknown and the missing keys, if there are any.
    """
    block_indices = {int(match.group(1)) for key in state_dict if (match := _BLOCK_INDEX.match(key))}
    num_hidden_layers = max(block_indices) + 1 if block_indices else 0
    expected = expected_reference_keys(num_hidden_layers)
    unknown, missing = set(state_dict) - expected, expected - set(state_dict)
    if unknown or missing or num_hidden_layers == 0:
        problems = []
        if unknown:
            problems.append(f"{len(unknown)} unknown key(s):{_format_keys(unknown)}")
        if missing:
            problems.append(f"{len(missing)} missing key(s):{_format_keys(missing)}")
        if num_hidden_layers == 0:
            problems.append("no transformer block (`{student,teacher}.backbone.blocks.<i>.*`)")
        raise ValueError(
            "The state dict does not have the layout of a reference PerA checkpoint (keys `student.*`, `teacher.*`, "
            "`pred_head.*`, `s_mask_token`; see docs/conversion.md):\n" + "\n".join(problems)
        )
    return num_hidden_layers


def pera_config_from_reference(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None, **config_kwargs
) -> PeraConfig:
    """
    The [`PeraConfig`] of a reference PerA checkpoint, read from its tensor shapes.

    Width, depth, MLP size, patch size, band count, image size (from the length of the position table) and the head
    sizes come from the tensors. The number of attention heads cannot be read from them: it is `num_attention_heads`
    when given, else the head count of a preset of the same width (768 -> 12 for ViT-B/16, 1024 -> 16 for
    ViT-G/16-1024). Position embeddings are resized with the reference rule (`position_embedding_interpolation=
    "reference"`), so the converted encoder reproduces the reference outputs at every image size.

    Args:
        state_dict (`dict[str, torch.Tensor]`):
            A reference state dict (see [`load_reference_state_dict`]).
        num_attention_heads (`int`, *optional*):
            Attention heads per block.
        config_kwargs:
            Other [`PeraConfig`] fields (e.g. `drop_path_rate`, `band_names`), which override the defaults.

    Raises:
        `ValueError`: if the keys are not those of a reference checkpoint, the head count is unknown, or the shapes do
        not fit together.
    """
    num_hidden_layers = check_reference_keys(state_dict)
    backbone = "teacher.backbone"
    hidden_size = state_dict[f"{backbone}.cls_token"].shape[-1]
    if num_attention_heads is None:
        if hidden_size not in NUM_HEADS_FOR_WIDTH:
            raise ValueError(
                f"The checkpoint is {hidden_size} wide, which is not the width of a known size "
                f"({NUM_HEADS_FOR_WIDTH}): pass the number of attention heads (--num_attention_heads)."
            )
        num_attention_heads = NUM_HEADS_FOR_WIDTH[hidden_size]

    _, num_channels, patch_size, patch_width = state_dict[f"{backbone}.patch_embed.proj.weight"].shape
    num_positions = state_dict[f"{backbone}.pos_embed"].shape[1] - 1
    grid_size = round(num_positions**0.5)
    if patch_width != patch_size or grid_size**2 != num_positions:
        raise ValueError(
            f"Expected square patches and a square position table, got a {patch_size}x{patch_width} patch embedding "
            f"and {num_positions} patch positions."
        )
    head = "teacher.cls_head"
    pixel_outputs = state_dict[f"{REFERENCE_PIXEL_HEAD}.last_layer.weight_v"].shape[0]
    if pixel_outputs != patch_size**2 * num_channels:
        raise ValueError(
            f"The pixel head predicts {pixel_outputs} values per patch, but {patch_size}x{patch_size} patches of "
            f"{num_channels} bands have {patch_size**2 * num_channels}."
        )
    settings = {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": state_dict[f"{backbone}.blocks.0.mlp.fc1.weight"].shape[0],
        "image_size": grid_size * patch_size,
        "patch_size": patch_size,
        "num_channels": num_channels,
        "qkv_bias": True,
        "position_embedding_interpolation": "reference",
        "head_hidden_size": state_dict[f"{head}.mlp.0.weight"].shape[0],
        "head_bottleneck_size": state_dict[f"{head}.mlp.4.weight"].shape[0],
        "num_prototypes": state_dict[f"{head}.last_layer.weight_v"].shape[0],
    }
    return PeraConfig(**{**settings, **config_kwargs})


def convert_reference_state_dict(state_dict: dict[str, torch.Tensor], config: PeraConfig) -> dict[str, torch.Tensor]:
    """
    Renames a reference state dict to the state dict of [`PeraForPreTraining`].

    The fused `attn.qkv` projections (rows: query, key, value) become `q_proj`, `k_proj` and `v_proj`; `s_mask_token`
    becomes the student's mask token and is copied to the teacher (as `update_teacher` does); the weight-norm
    `weight_g`/`weight_v` pairs are kept; the DINO centre, which reference checkpoints do not hold, starts at zero.

    Raises:
        `ValueError`: if the keys are not those of a reference checkpoint of `config.num_hidden_layers` blocks.
    """
    num_hidden_layers = check_reference_keys(state_dict)
    if num_hidden_layers != config.num_hidden_layers:
        raise ValueError(f"The checkpoint has {num_hidden_layers} blocks but the config {config.num_hidden_layers}.")
    converted = {}
    for side, target in REFERENCE_SIDES.items():
        backbone = f"{side}.backbone"
        for name, new_name in _EMBEDDING_KEYS.items():
            converted[f"{target}.{new_name}"] = state_dict[f"{backbone}.{name}"]
        for index in range(num_hidden_layers):
            block, layer = f"{backbone}.blocks.{index}", f"{target}.layers.{index}"
            for name, new_name in _BLOCK_KEYS.items():
                converted[f"{layer}.{new_name}"] = state_dict[f"{block}.{name}"]
            for parameter in ("weight", "bias"):
                # clones: views of one storage could not be saved as separate safetensors entries
                query, key, value = (
                    tensor.clone() for tensor in state_dict[f"{block}.attn.qkv.{parameter}"].chunk(3, dim=0)
                )
                converted[f"{layer}.attention.q_proj.{parameter}"] = query
                converted[f"{layer}.attention.k_proj.{parameter}"] = key
                converted[f"{layer}.attention.v_proj.{parameter}"] = value

    mask_token = state_dict[REFERENCE_MASK_TOKEN]
    converted["student.embeddings.mask_token"] = mask_token
    converted["pera.embeddings.mask_token"] = mask_token.clone()

    heads = {**REFERENCE_HEADS, f"{REFERENCE_PIXEL_HEAD}.mlp0": "pixel_head"}
    for head, target in heads.items():
        for name in _HEAD_MLP_KEYS:
            converted[f"{target}.mlp.{name}"] = state_dict[f"{head}.mlp.{name}"]
    for head, target in {**REFERENCE_HEADS, REFERENCE_PIXEL_HEAD: "pixel_head"}.items():
        for name in _WEIGHT_NORM_KEYS:
            converted[f"{target}.last_layer.{name}"] = state_dict[f"{head}.last_layer.{name}"]

    converted["center"] = torch.zeros(1, config.num_prototypes, device=mask_token.device)
    return converted


def reference_to_pera(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None, **config_kwargs
) -> PeraForPreTraining:
    """
    Builds a [`PeraForPreTraining`] holding the tensors of a reference PerA state dict.

    The model is built on the meta device and takes the converted tensors as its parameters, so the weights are in
    memory once, in the checkpoint's dtype and on its device.

    Args:
        state_dict (`dict[str, torch.Tensor]`):
            A reference state dict (see [`load_reference_state_dict`]).
        num_attention_heads (`int`, *optional*):
            Attention heads per block (see [`pera_config_from_reference`]).
        config_kwargs:
            Other [`PeraConfig`] fields.

    Returns:
        [`PeraForPreTraining`]: the model, in eval mode; its teacher (`model.pera`) is the encoder to use downstream.
    """
    config = pera_config_from_reference(state_dict, num_attention_heads, **config_kwargs)
    converted = convert_reference_state_dict(state_dict, config)
    with torch.device("meta"):
        model = PeraForPreTraining(config)
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(
            f"The checkpoint's tensors do not fit the PerA model read from it ({config.hidden_size} wide, "
            f"{config.num_hidden_layers} blocks, {config.num_attention_heads} heads): {error}"
        ) from error
    return model.eval()


def convert_pera_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_attention_heads: int | None = None,
    trust_pickle: bool = False,
    processor_preset: str = "pera-rgb",
    **config_kwargs,
) -> PeraForPreTraining:
    """
    Converts a reference PerA checkpoint to a folder of this package.

    `output_dir` receives the full [`PeraForPreTraining`] checkpoint (student, teacher, heads; the DINO centre at
    zero) and `output_dir/encoder` the teacher as a stand-alone [`PeraModel`], each with the image processor and the
    Hub code files, as pretraining exports them. The processor is the `processor_preset` preset (by default the
    statistics the released RGB weights were used with) at the checkpoint's image size (448 px for the released
    weights).

    Args:
        checkpoint_path (`str` or `os.PathLike`):
            The reference checkpoint (see [`load_reference_state_dict`]).
        output_dir (`str` or `os.PathLike`):
            Where to write the converted model.
        num_attention_heads (`int`, *optional*):
            Attention heads per block (see [`pera_config_from_reference`]).
        trust_pickle (`bool`, *optional*, defaults to `False`):
            Allow full unpickling of the checkpoint (see [`load_reference_state_dict`]).
        processor_preset (`str`, *optional*, defaults to `"pera-rgb"`):
            The [`PeraImageProcessor`] preset holding the input statistics; its bands must match the checkpoint's.
        config_kwargs:
            Other [`PeraConfig`] fields.

    Returns:
        [`PeraForPreTraining`]: the converted model.
    """
    # imported here: the training module pulls in accelerate and the data pipeline, which conversion does not need
    from .pretraining import export_pretrained

    state_dict = load_reference_state_dict(checkpoint_path, trust_pickle=trust_pickle)
    check_reference_keys(state_dict)
    num_channels = state_dict["teacher.backbone.patch_embed.proj.weight"].shape[1]
    bands = PeraImageProcessor.from_preset(processor_preset)
    if bands.num_channels != num_channels:
        raise ValueError(
            f"The checkpoint takes {num_channels} bands but the {processor_preset!r} preset has {bands.num_channels}: "
            "choose a preset with the checkpoint's bands (--processor_preset)."
        )
    band_metadata = {"band_names": bands.band_names, "wavelengths": bands.wavelengths}
    model = reference_to_pera(state_dict, num_attention_heads, **{**band_metadata, **config_kwargs})
    image_size = model.config.image_size
    processor = PeraImageProcessor.from_preset(processor_preset, size={"height": image_size, "width": image_size})
    export_pretrained(model, processor, output_dir)
    return model


__all__ = [
    "NUM_HEADS_FOR_WIDTH",
    "check_reference_keys",
    "convert_pera_checkpoint",
    "convert_reference_state_dict",
    "expected_reference_keys",
    "load_reference_state_dict",
    "pera_config_from_reference",
    "reference_to_pera",
]
