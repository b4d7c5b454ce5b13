# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""
PerA encoders as TerraTorch backbones: importing this module registers `pera` in TerraTorch's backbone registry, so a
TerraTorch model factory (e.g. `EncoderDecoderFactory`) or a `terratorch fit` config can name a PerA checkpoint:

    model_args:
      backbone: pera
      backbone_model_name_or_path: outputs/pera-ucmerced/encoder   # a folder or a Hub id
      decoder: UperNetDecoder

`terratorch` runs the modules of a `custom_modules/` folder in its working directory at start: a
`custom_modules/__init__.py` holding `import modeling_pera.terratorch_backbone` makes `pera` known to the CLI.
TerraTorch is an optional extra: `pip install 'modeling_pera[terratorch]'`.
"""

import os

import torch

from .configuration_pera import PeraConfig
from .finetuning.jobs import pyramid_out_indices
from .modeling_pera import PeraBackbone


try:
    from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
except ImportError as error:
    raise ImportError(
        "modeling_pera.terratorch_backbone needs TerraTorch: pip install 'modeling_pera[terratorch]'."
    ) from error


class PeraTerraTorchBackbone(torch.nn.Module):
    """
    A [`PeraBackbone`] behind TerraTorch's backbone contract: `out_channels` (the width of each output) and
    `forward(images)` returning a list of feature maps `(batch_size, hidden_size, height // patch_size,
    width // patch_size)`, the encoder's final LayerNorm applied, as TerraTorch's decoders take them without a neck.
    `patch_size` tells TerraTorch's models how to pad images whose sides are not multiples of it.

    Args:
        backbone ([`PeraBackbone`]):
            The encoder, its `config.out_indices` set to the stages to return.
    """

    def __init__(self, backbone: PeraBackbone):
        super().__init__()
        self.backbone = backbone
        self.patch_size = backbone.config.patch_size
        self.out_channels = [backbone.config.hidden_size] * len(backbone.out_features)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(pixel_values).feature_maps)


@TERRATORCH_BACKBONE_REGISTRY.register
def pera(
    model_name_or_path: str | os.PathLike,
    pretrained: bool = True,
    out_indices: list[int] | None = None,
    **config_overrides,
) -> PeraTerraTorchBackbone:
    """
    TerraTorch's `pera` backbone: the encoder of a PerA checkpoint (encoder, pretraining or classification folder,
    or Hub id), with the stages `out_indices` (0 is the embeddings; by default 4 evenly spaced blocks ending with the
    last, as for UperNet in [`~finetuning.upernet_for_pera`]). `pretrained=False` (TerraTorch's
    `backbone_pretrained`) keeps the checkpoint's architecture with random weights, a baseline. `config_overrides`
    go to the encoder's config (e.g. `drop_path_rate=0.1`). The images must be normalised as the checkpoint's
    processor does (its `image_mean` and `image_std`, in `preprocessor_config.json`).
    """
    config = PeraConfig.from_pretrained(model_name_or_path, **config_overrides)
    config.out_indices = list(out_indices or pyramid_out_indices(config.num_hidden_layers))
    if pretrained:
        backbone = PeraBackbone.from_pretrained(model_name_or_path, config=config, dtype=torch.float32)
    else:
        backbone = PeraBackbone(config)
    return PeraTerraTorchBackbone(backbone)


__all__ = ["PeraTerraTorchBackbone", "pera"]
