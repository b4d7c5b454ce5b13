# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The building blocks of the PerA networks: the sparse sequences of pretraining (the disjoint patch sets drawn from
noise, gathering tokens by index), patch and position embeddings (with the mask token), attention, MLP, stochastic
depth, the pre-norm transformer block, and the projection heads (DINO and pixel) with their weight-normalised last
layer.

[`PeraModel`] and [`PeraForPreTraining`] (`modeling_pera.py`) assemble them; the module attribute names here are the
checkpoint keys. This file is part of the Hub code: `modeling_pera.py` imports it relatively, and transformers copies
it with the model's code.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .configuration_pera import PeraConfig, pera_mask_counts


def pera_mask_indices(
    noise: torch.Tensor, student_ratio: float, teacher_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    PerA's disjoint patch sets, drawn from `noise` of shape `(..., num_patches)` (uniform noise gives uniformly random
    sets; the same noise gives the same sets).

    The patches sorted by noise form one random permutation: its first `num_student` entries are the student's
    visible set S, its last `num_teacher` the teacher's set T and the entries in between the predicted set R (see
    [`pera_mask_counts`]). Every crop gets the same counts, so all shapes are static.

    Returns:
        `(student_index, predicted_index, teacher_index)`: patch indices of shape `(..., count)`, each sorted in
        raster order.
    """
    counts = pera_mask_counts(noise.shape[-1], student_ratio, teacher_ratio)
    permutation = torch.argsort(noise, dim=-1)
    return tuple(index.sort(dim=-1).values for index in permutation.split(counts, dim=-1))


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`tokens[b, index[b, j]]` for tokens `(batch, length, dim)` and index `(batch, count)`."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class PeraPatchEmbeddings(nn.Module):
    """Turns `pixel_values` `(batch, num_channels, height, width)` into patch embeddings `(batch, num_patches, dim)`."""

    def __init__(self, config: PeraConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.band_names = config.band_names
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape (batch, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        batch_size, num_channels, height, width = pixel_values.shape
        if batch_size == 0:
            raise ValueError("pixel_values holds no image (batch size 0); pass at least one image.")
        if num_channels != self.num_channels:
            names = f" ({', '.join(self.band_names)})" if self.band_names else ""
            raise ValueError(
                f"pixel_values has {num_channels} bands but the model expects {self.num_channels}{names}; preprocess "
                "the images with this model's image processor (its `input_band_names` picks and orders named bands), "
                f"or use a model configured with num_channels={num_channels}."
            )
        if height < self.patch_size or width < self.patch_size or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"pixel_values of size {height}x{width} cannot be cut into {self.patch_size}x{self.patch_size} "
                f"patches; resize or crop the images to a multiple of {self.patch_size} pixels."
            )
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class PeraEmbeddings(nn.Module):
    """CLS token, mask token, learned absolute position embeddings and patch embeddings."""

    def __init__(self, config: PeraConfig):
        super().__init__()
        self.config = config
        self.patch_embeddings = PeraPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(
            torch.empty(1, self.patch_embeddings.num_patches + 1, config.hidden_size)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings `(1, 1 + num_patches, dim)` for an image of `height` x `width` pixels."""
        grid_height, grid_width = height // self.config.patch_size, width // self.config.patch_size
        native_grid = int(self.patch_embeddings.num_patches**0.5)
        if grid_height == native_grid and grid_width == native_grid:
            return self.position_embeddings
        class_position = self.position_embeddings[:, :1]
        patch_positions = self.position_embeddings[:, 1:]
        dim = patch_positions.shape[-1]
        patch_positions = patch_positions.reshape(1, native_grid, native_grid, dim).permute(0, 3, 1, 2)
        if self.config.position_embedding_interpolation == "reference":
            # The reference code passes a scale factor with a +0.1 offset (the old DINO rule). PyTorch then samples
            # the source grid at that scale, which differs slightly from resampling to `size`.
            resize = {"scale_factor": ((grid_height + 0.1) / native_grid, (grid_width + 0.1) / native_grid)}
        else:
            resize = {"size": (grid_height, grid_width)}
        # bicubic resampling in half precision shifts the embeddings: interpolate in float32
        patch_positions = F.interpolate(
            patch_positions.to(torch.float32), mode="bicubic", align_corners=False, **resize
        ).to(self.position_embeddings.dtype)
        patch_positions = patch_positions.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, dim)
        return torch.cat((class_position, patch_positions), dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        visible_patch_index: torch.Tensor | None = None,
        masked_patch_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Returns the input sequence `(batch, 1 + num_visible, dim)` (CLS, then the visible patches, all with their
        position embeddings) and, when `masked_patch_index` is given, the mask-token embeddings
        `(batch, num_masked, dim)` (mask token + the position embedding of each masked patch).
        """
        batch_size, _, height, width = pixel_values.shape
        patch_embeddings = self.patch_embeddings(pixel_values)  # validates the input first
        position_embeddings = self.interpolate_pos_encoding(height, width)
        patch_positions = position_embeddings[:, 1:].expand(batch_size, -1, -1)
        patch_embeddings = patch_embeddings + patch_positions
        if visible_patch_index is not None:
            patch_embeddings = gather_tokens(patch_embeddings, visible_patch_index)
        cls_embeddings = (self.cls_token + position_embeddings[:, :1]).expand(batch_size, -1, -1)
        embeddings = self.dropout(torch.cat((cls_embeddings, patch_embeddings), dim=1))
        mask_embeddings = None
        if masked_patch_index is not None:
            mask_embeddings = self.mask_token + gather_tokens(patch_positions, masked_patch_index)
        return embeddings, mask_embeddings


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class PeraAttention(nn.Module):
    """Multi-head self-attention over one sequence per crop (crops never attend to each other)."""

    def __init__(self, config: PeraConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device_type = hidden_states.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            # one low-precision copy of the input, saved once for backward, instead of one per projection
            hidden_states = hidden_states.to(torch.get_autocast_dtype(device_type))
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*hidden_states.shape[:-1], -1).contiguous())
        return attn_output, attn_weights


class PeraMLP(nn.Module):
    def __init__(self, config: PeraConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_fn(self.fc1(hidden_states))))


class PeraDropPath(nn.Module):
    """Stochastic depth per sample: drops the whole residual branch of a sample with probability `drop_prob`."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        keep = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
        return hidden_states * keep.div_(keep_prob)  # scaling the per-sample mask: one pass over the activations

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class PeraLayer(GradientCheckpointingLayer):
    """A pre-norm transformer block (the reference's `Block`): no LayerScale, no registers."""

    def __init__(self, config: PeraConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = PeraAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = PeraMLP(config)
        self.drop_path = PeraDropPath(config.drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attention_output, _ = self.attention(self.norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + self.drop_path(attention_output)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


class PeraWeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation: row i of the weight is `g_i * v_i / ||v_i||`."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.empty(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Scaling the outputs avoids materialising the normalised weight (131072 x 384 for the DINO head).
        scale = self.weight_g.squeeze(-1) / torch.linalg.vector_norm(self.weight_v, dim=1)
        return F.linear(hidden_states, self.weight_v) * scale.to(hidden_states.dtype)


class PeraHead(nn.Module):
    """
    The reference's projection head: MLP (dim -> hidden -> hidden -> bottleneck, GELU), L2 normalisation, then a
    weight-normalised linear layer. With `num_prototypes` outputs it is the DINO head; with `patch_size**2 *
    num_channels` outputs it is the pixel head.
    """

    def __init__(self, config: PeraConfig, output_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_size, config.head_hidden_size),
            nn.GELU(),
            nn.Linear(config.head_hidden_size, config.head_hidden_size),
            nn.GELU(),
            nn.Linear(config.head_hidden_size, config.head_bottleneck_size),
        )
        self.last_layer = PeraWeightNormLinear(config.head_bottleneck_size, output_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.mlp(hidden_states)
        # eps large enough to be safe in half precision, as in DINOv2
        hidden_states = F.normalize(hidden_states, dim=-1, eps=1e-6)
        return self.last_layer(hidden_states)


__all__ = [
    "PeraAttention",
    "PeraDropPath",
    "PeraEmbeddings",
    "PeraHead",
    "PeraLayer",
    "PeraMLP",
    "PeraPatchEmbeddings",
    "PeraWeightNormLinear",
    "eager_attention_forward",
    "gather_tokens",
    "pera_mask_indices",
]
