"""
The baseline PerA is measured against: transformers' own `ViTMAEForPreTraining` with PerA's backbone size, initialised
as MAE intends. The pretraining loop trains it with `--method mae` (`pretraining/methods.py`) on the same images and
crops as PerA; `benchmarks/step.py` and `benchmarks/representation.py` compare them.
"""

import torch
from torch import nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from .configuration_pera import PeraConfig


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


__all__ = ["build_mae", "mae_config_from_pera"]
