"""Shared test settings: the tiny PerA used wherever a test needs a real but fast model."""

from modeling_pera import PeraConfig


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
