# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""PerA model configuration."""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin


# Backbone sizes. "vit-g16-1024" is the reference's released size (1024 wide, 40 layers), not DINOv2's ViT-g.
PERA_PRESETS: dict[str, dict] = {
    "vit-tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3},
    "vit-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "vit-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "vit-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "vit-g16-1024": {"hidden_size": 1024, "num_hidden_layers": 40, "num_attention_heads": 16},
}

POSITION_EMBEDDING_INTERPOLATIONS = ("reference", "size")
TEACHER_CENTERINGS = ("center", "sinkhorn_knopp")

# Written into every saved config so that each Auto class finds its PerA class in the Hub code files
# (`register_for_auto_class` records only one Auto class per class).
PERA_AUTO_MAP = {
    "AutoConfig": "configuration_pera.PeraConfig",
    "AutoModel": "modeling_pera.PeraModel",
    "AutoModelForPreTraining": "modeling_pera.PeraForPreTraining",
    "AutoModelForImageClassification": "modeling_pera.PeraForImageClassification",
    "AutoBackbone": "modeling_pera.PeraBackbone",
}


def pera_mask_counts(num_patches: int, student_ratio: float, teacher_ratio: float) -> tuple[int, int, int]:
    """
    The sizes of PerA's disjoint patch sets for a crop of `num_patches` patches.

    One random permutation of the patches is split into the student's visible set S (its first
    `round(L * student_ratio)` entries), the teacher's set T (entries from `round(L * (1 - teacher_ratio))` on) and
    the set R in between, which the student receives as mask tokens and reconstructs.

    Returns:
        `(num_student, num_predicted, num_teacher)`: 157/157/470 for 784 patches, 7/7/22 for 36 with the defaults.
    """
    num_student = round(num_patches * student_ratio)
    teacher_start = round(num_patches * (1 - teacher_ratio))
    return num_student, teacher_start - num_student, num_patches - teacher_start


@strict
class PeraConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of a PerA model: a plain pre-norm ViT encoder ([`PeraModel`]) and the PerA pretraining setup
    ([`PeraForPreTraining`]: disjoint student/teacher/predicted patch sets, DINO and pixel heads, loss weights).
    The defaults are the reference implementation's ViT-B/16 at 448 px on RGB images.

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the encoder.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads per block.
        intermediate_size (`int`, *optional*):
            Hidden size of the MLPs; defaults to `4 * hidden_size`.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            MLP activation.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after the embeddings, the attention projection and the MLP.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            LayerNorm epsilon.
        image_size (`int`, *optional*, defaults to 448):
            Size of the global crops; the learned position embeddings cover this grid and are interpolated for
            other sizes.
        patch_size (`int`, *optional*, defaults to 16):
            Patch size of the convolutional patch embedding.
        num_channels (`int`, *optional*, defaults to 3):
            Number of input bands.
        band_names (`list[str]`, *optional*):
            Name of each band, in input order; defaults to `["red", "green", "blue"]` for 3 bands and
            `["band_1", ...]` otherwise.
        wavelengths (`list[float]`, *optional*):
            Central wavelength of each band in micrometres.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query, key and value projections have biases.
        drop_path_rate (`float`, *optional*, defaults to 0.3):
            Stochastic depth rate of every block (uniform over depth, as in the reference). The pretraining teacher
            never drops paths.
        position_embedding_interpolation (`str`, *optional*, defaults to `"reference"`):
            How position embeddings are resized for other grids: `"reference"` uses the reference implementation's
            bicubic rule with `scale_factor = (grid + 0.1) / native_grid` (needed to reproduce its outputs),
            `"size"` interpolates bicubically to the target size as transformers' DINOv2 does.
        student_ratio (`float`, *optional*, defaults to 0.2):
            Fraction of each crop's patches the student sees (set S).
        teacher_ratio (`float`, *optional*, defaults to 0.6):
            Fraction of each crop's patches the teacher sees (set T, disjoint from S). The rest (R) is given to the
            student as mask tokens and reconstructed for global crops.
        mask_token_layer (`int`, *optional*):
            Index of the block before which the mask tokens of R join the student's sequence; defaults to
            `num_hidden_layers // 2`.
        full_views (`bool`, *optional*, defaults to `False`):
            A baseline, not PerA: student and teacher both see every patch of their crop (DINO-style aligned pairs
            without PerA's masks), so there are no mask tokens and no pixel loss. For measuring what the masks save.
        num_global_crops (`int`, *optional*, defaults to 2):
            Global crops per image in pretraining.
        num_local_crops (`int`, *optional*, defaults to 8):
            Local crops per image in pretraining.
        local_crop_size (`int`, *optional*, defaults to 96):
            Size of the local crops.
        head_hidden_size (`int`, *optional*, defaults to 2048):
            Hidden size of the MLP of the DINO and pixel heads.
        head_bottleneck_size (`int`, *optional*, defaults to 384):
            Output size of the heads' MLP (L2-normalised before the last layer).
        num_prototypes (`int`, *optional*, defaults to 131072):
            Number of prototypes of the DINO heads.
        dino_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the aligned-pair DINO cross-entropy.
        koleo_loss_weight (`float`, *optional*, defaults to 0.1):
            Weight of the KoLeo regulariser.
        pixel_loss_weight (`float`, *optional*, defaults to 0.01):
            Weight of the masked-patch pixel regression.
        normalize_pixel_targets (`bool`, *optional*, defaults to `False`):
            Regress each predicted patch's pixels normalised by that patch's own mean and variance (MAE's
            `norm_pix_loss`) instead of the student view's pixels (the reference).
        student_temperature (`float`, *optional*, defaults to 0.1):
            Softmax temperature of the student.
        teacher_temperature (`float`, *optional*, defaults to 0.05):
            Teacher temperature used when `forward` is not given one (pretraining warms it up from 0.03).
        center_momentum (`float`, *optional*, defaults to 0.9):
            EMA momentum of the DINO centre.
        teacher_centering (`str`, *optional*, defaults to `"center"`):
            How the teacher's targets avoid collapse: `"center"` (the reference: subtract the EMA centre, then a
            softmax) or `"sinkhorn_knopp"` (DINOv2's option: Sinkhorn-Knopp normalisation of the batch's teacher
            logits, every prototype used equally over the batch of all processes; the centre is then not used).
        sinkhorn_iterations (`int`, *optional*, defaults to 3):
            Normalisation rounds of `"sinkhorn_knopp"` centering.
        out_features (`list[str]`, *optional*):
            When the model is used as a backbone ([`PeraBackbone`]), the stages whose feature maps it returns, among
            `"stem"` (the embeddings) and `"stage1"` ... `"stage{num_hidden_layers}"` (the blocks' outputs). Defaults
            to the last stage, or to the stages of `out_indices`.
        out_indices (`list[int]`, *optional*):
            The same stages by index in `stage_names` (0 is `"stem"`); negative indices count from the end.

    Example:

    ```python
    >>> from modeling_pera import PeraConfig, PeraModel

    >>> config = PeraConfig.from_preset("vit-small", num_channels=12)
    >>> model = PeraModel(config)
    ```"""

    model_type = "pera"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int = 448
    patch_size: int = 16
    num_channels: int = 3
    band_names: list[str] | None = None
    wavelengths: list[float] | None = None
    qkv_bias: bool = True
    drop_path_rate: float | int = 0.3
    position_embedding_interpolation: str = "reference"
    student_ratio: float = 0.2
    teacher_ratio: float = 0.6
    mask_token_layer: int | None = None
    full_views: bool = False
    num_global_crops: int = 2
    num_local_crops: int = 8
    local_crop_size: int = 96
    head_hidden_size: int = 2048
    head_bottleneck_size: int = 384
    num_prototypes: int = 131072
    dino_loss_weight: float | int = 1.0
    koleo_loss_weight: float | int = 0.1
    pixel_loss_weight: float | int = 0.01
    normalize_pixel_targets: bool = False
    student_temperature: float = 0.1
    teacher_temperature: float = 0.05
    center_momentum: float = 0.9
    teacher_centering: str = "center"
    sinkhorn_iterations: int = 3
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.mask_token_layer is None:
            self.mask_token_layer = self.num_hidden_layers // 2
        if self.band_names is None:
            self.band_names = (
                ["red", "green", "blue"]
                if self.num_channels == 3
                else [f"band_{index + 1}" for index in range(self.num_channels)]
            )
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(PERA_AUTO_MAP)
        # Checked here rather than in `validate_*` hooks so that bad settings raise a plain `ValueError`.
        self._check_ranges()
        self._check_architecture()
        self._check_bands()
        self._check_masking()

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "PeraConfig":
        """A config with the backbone size `name` (one of `PERA_PRESETS`); `kwargs` override any field."""
        if name not in PERA_PRESETS:
            raise ValueError(f"Unknown PerA preset {name!r}; choose one of {sorted(PERA_PRESETS)}.")
        return cls(**{**PERA_PRESETS[name], **kwargs})

    def mask_counts(self, crop_size: int) -> tuple[int, int, int]:
        """`(num_student, num_predicted, num_teacher)` patches of a square crop of `crop_size` pixels."""
        return pera_mask_counts((crop_size // self.patch_size) ** 2, self.student_ratio, self.teacher_ratio)

    def _check_ranges(self):
        """Each value in the range where the model computes something (not NaN, not a late ZeroDivisionError)."""
        positive_integers = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "image_size",
            "patch_size",
            "local_crop_size",
            "head_hidden_size",
            "head_bottleneck_size",
            "num_prototypes",
        )
        for name in positive_integers:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("student_temperature", "teacher_temperature", "layer_norm_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}.")
        unit_intervals = {
            "center_momentum": (0, 1, "]"),
            "drop_path_rate": (0, 1, ")"),
            "hidden_dropout_prob": (0, 1, ")"),
            "attention_probs_dropout_prob": (0, 1, ")"),
        }
        for name, (low, high, closing) in unit_intervals.items():
            value = getattr(self, name)
            if not (low <= value <= high) or (closing == ")" and value == high):
                raise ValueError(f"{name} must lie in [{low}, {high}{closing}, got {value}.")
        for name in ("dino_loss_weight", "koleo_loss_weight", "pixel_loss_weight", "initializer_range"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not an activation of transformers' ACT2FN (e.g. 'gelu')."
            )

    def _check_architecture(self):
        """Sizes that fit together."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        for name in ("image_size", "local_crop_size"):
            size = getattr(self, name)
            if self.patch_size <= 0 or size < self.patch_size or size % self.patch_size != 0:
                raise ValueError(
                    f"{name} ({size}) must be a positive multiple of patch_size ({self.patch_size}); choose a crop "
                    "size divisible by the patch size."
                )
        if not 0 <= self.mask_token_layer < self.num_hidden_layers:
            raise ValueError(
                f"mask_token_layer ({self.mask_token_layer}) must be a block index in [0, num_hidden_layers="
                f"{self.num_hidden_layers})."
            )
        if self.teacher_centering not in TEACHER_CENTERINGS:
            raise ValueError(f"teacher_centering must be one of {TEACHER_CENTERINGS}, got {self.teacher_centering!r}.")
        if self.sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be at least 1, got {self.sinkhorn_iterations}.")
        if self.position_embedding_interpolation not in POSITION_EMBEDDING_INTERPOLATIONS:
            raise ValueError(
                f"position_embedding_interpolation must be one of {POSITION_EMBEDDING_INTERPOLATIONS}, got "
                f"{self.position_embedding_interpolation!r}."
            )

    def _check_bands(self):
        """Band metadata that matches `num_channels`."""
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be at least 1, got {self.num_channels}.")
        if len(self.band_names) != self.num_channels:
            raise ValueError(
                f"band_names has {len(self.band_names)} entries but num_channels is {self.num_channels}; give one "
                "name per input band."
            )
        if self.wavelengths is not None and len(self.wavelengths) != self.num_channels:
            raise ValueError(
                f"wavelengths has {len(self.wavelengths)} entries but num_channels is {self.num_channels}; give one "
                "wavelength (micrometres) per input band, or none."
            )

    def _check_masking(self):
        """Ratios that leave non-empty, disjoint S and T sets on every crop."""
        if not (0 < self.student_ratio < 1 and 0 < self.teacher_ratio < 1):
            raise ValueError(
                f"student_ratio ({self.student_ratio}) and teacher_ratio ({self.teacher_ratio}) must lie in (0, 1)."
            )
        for name in ("image_size", "local_crop_size"):
            num_student, num_predicted, num_teacher = self.mask_counts(getattr(self, name))
            if num_student < 1 or num_teacher < 1 or num_predicted < 0:
                raise ValueError(
                    f"student_ratio={self.student_ratio} and teacher_ratio={self.teacher_ratio} do not split the "
                    f"{(getattr(self, name) // self.patch_size) ** 2} patches of a {name} crop into non-empty "
                    f"disjoint sets (student {num_student}, teacher {num_teacher}, predicted {num_predicted}); keep "
                    "student_ratio + teacher_ratio <= 1 and each large enough to select at least one patch."
                )
        if self.num_global_crops < 1 or self.num_local_crops < 0:
            raise ValueError(
                f"PerA needs at least one global crop and a non-negative number of local crops, got "
                f"num_global_crops={self.num_global_crops}, num_local_crops={self.num_local_crops}."
            )


__all__ = ["PERA_AUTO_MAP", "PERA_PRESETS", "PeraConfig", "pera_mask_counts"]
