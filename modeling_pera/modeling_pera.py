# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""PyTorch PerA model: a plain ViT encoder pretrained by self-distillation on perfectly aligned sample pairs.

PerA (Shen et al., "A Contrastive Learning Foundation Model Based on Perfectly Aligned Sample Pairs for Remote
Sensing Images", arXiv 2505.19447) builds each student/teacher pair from ONE crop with two photometric views, and
splits the crop's patches into disjoint random sets: the student sees S, the teacher sees T, and the student
predicts the pixels of the rest (R), which it receives as mask tokens halfway through the network.

This file holds the models (encoder, pretraining, classification, backbone); their building blocks live in
`layers_pera.py` and the losses in `losses_pera.py`, Hub files it imports relatively.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_pera import PeraConfig
from .layers_pera import (
    PeraAttention,
    PeraDropPath,
    PeraEmbeddings,
    PeraHead,
    PeraLayer,
    PeraPatchEmbeddings,
    PeraWeightNormLinear,
    gather_tokens,
    pera_mask_indices,
)
from .losses_pera import (
    dino_teacher_targets,
    koleo_loss,
    patchify,
    pixel_loss,
    soft_target_cross_entropy,
    updated_dino_center,
)


class PeraPreTrainedModel(PreTrainedModel):
    config: PeraConfig
    # The pretraining model keeps its TEACHER encoder under this name: downstream code loading a pretraining
    # checkpoint with `AutoModel` gets the teacher.
    base_model_prefix = "pera"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["PeraEmbeddings", "PeraLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": PeraLayer,
        "attentions": PeraAttention,
    }
    _input_embed_layer = "patch_embeddings"
    # Loading an encoder from a pretraining checkpoint silently leaves out the student and the heads.
    _keys_to_ignore_on_load_unexpected = [
        r"^student\.",
        r"^(student|teacher)_dino_head\.",
        r"^pixel_head\.",
        r"^center$",
    ]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        # loading replaces the parameters, and the new ones require gradients
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_untrained_parameters()  # tuple: with loading info
        return loaded

    def _freeze_untrained_parameters(self) -> None:
        """Sets `requires_grad=False` on the parameters this model never trains (called at construction and load)."""

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, PeraEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.normal_(module.cls_token, mean=0.0, std=1e-6)
            init.normal_(module.mask_token, mean=0.0, std=std)
        elif isinstance(module, PeraWeightNormLinear):
            init.trunc_normal_(module.weight_v, mean=0.0, std=std)
            init.ones_(module.weight_g)
        elif isinstance(module, PeraForPreTraining):
            init.zeros_(module.center)
            # The teacher starts as a copy of the student. Children are initialised before their parent, so the copy
            # happens here; a tensor loaded from a checkpoint is never overwritten, and a checkpoint holding only one
            # side (an exported encoder, converted weights) initialises the other side.
            for teacher_tensor, student_tensor in zip(*module._paired_parameters(with_mask_token=True)):
                if getattr(teacher_tensor, "_is_hf_initialized", False):
                    init.copy_(student_tensor, teacher_tensor)
                else:
                    init.copy_(teacher_tensor, student_tensor)


class PeraModel(PeraPreTrainedModel):
    """
    The PerA encoder, a plain pre-norm ViT: patch embedding, learned position embeddings (interpolated for other
    image sizes), `num_hidden_layers` blocks and a final LayerNorm. The pooled output is the normalised CLS token.
    """

    def __init__(self, config: PeraConfig):
        super().__init__(config)
        self.embeddings = PeraEmbeddings(config)
        self.layers = nn.ModuleList([PeraLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> PeraPatchEmbeddings:
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.BoolTensor | None = None,
        visible_patch_index: torch.LongTensor | None = None,
        masked_patch_index: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images of any size divisible by the patch size (position embeddings are interpolated).
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patches to mask, PerA style: they are left out of the first `config.mask_token_layer` blocks and join the
            sequence there as mask token + position embedding. Every image must mask the same number of patches.
            The output keeps raster order.
        visible_patch_index (`torch.LongTensor` of shape `(batch_size, num_visible)`, *optional*):
            Sparse input, as in pretraining: only these patches enter the first block (all patches when not given).
        masked_patch_index (`torch.LongTensor` of shape `(batch_size, num_masked)`, *optional*):
            Patches that join as mask tokens before block `config.mask_token_layer`. With patch indices the output
            sequence is CLS, the visible patches, then the masked patches, in the order of the indices.

        Example:

        ```python
        >>> import torch
        >>> from modeling_pera import PeraConfig, PeraModel

        >>> model = PeraModel(PeraConfig.from_preset("vit-tiny", image_size=224))
        >>> outputs = model(torch.randn(2, 3, 224, 224))
        >>> outputs.last_hidden_state.shape
        torch.Size([2, 197, 192])
        ```"""
        restore_order = None
        if bool_masked_pos is not None:
            if visible_patch_index is not None or masked_patch_index is not None:
                raise ValueError("Pass either bool_masked_pos or patch indices, not both.")
            visible_patch_index, masked_patch_index = self._masked_pos_to_indices(bool_masked_pos, pixel_values)
            restore_order = torch.argsort(torch.cat((visible_patch_index, masked_patch_index), dim=1), dim=1)

        hidden_states, mask_embeddings = self.embeddings(pixel_values, visible_patch_index, masked_patch_index)
        for layer_index, layer in enumerate(self.layers):
            if mask_embeddings is not None and layer_index == self.config.mask_token_layer:
                hidden_states = torch.cat((hidden_states, mask_embeddings), dim=1)
            hidden_states = layer(hidden_states, **kwargs)
        sequence_output = self.layernorm(hidden_states)

        if restore_order is not None:
            patch_output = gather_tokens(sequence_output[:, 1:], restore_order)
            sequence_output = torch.cat((sequence_output[:, :1], patch_output), dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=sequence_output[:, 0])

    def _masked_pos_to_indices(
        self, bool_masked_pos: torch.Tensor, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, _, height, width = pixel_values.shape
        num_patches = (height // self.config.patch_size) * (width // self.config.patch_size)
        if bool_masked_pos.shape != (batch_size, num_patches):
            raise ValueError(
                f"bool_masked_pos must have shape (batch_size, num_patches) = ({batch_size}, {num_patches}), got "
                f"{tuple(bool_masked_pos.shape)}."
            )
        num_masked = bool_masked_pos.sum(dim=1)
        if bool(torch.any(num_masked != num_masked[0])):
            raise ValueError("bool_masked_pos must mask the same number of patches in every image of the batch.")
        # a stable sort puts the visible patches first, each group in raster order
        order = torch.argsort(bool_masked_pos.to(torch.int8), dim=1, stable=True)
        num_visible = num_patches - int(num_masked[0])
        return order[:, :num_visible], order[:, num_visible:]


@dataclass
class PeraForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        `dino_loss_weight * dino_loss + koleo_loss_weight * koleo_loss + pixel_loss_weight * pixel_loss`.
    dino_loss (`torch.FloatTensor` of shape `()`):
        Cross-entropy between the teacher's centred, sharpened prototype distribution and the student's, over the
        aligned pairs only (global crop i against global crop i, local crop j against local crop j).
    koleo_loss (`torch.FloatTensor` of shape `()`):
        KoLeo regulariser on the student's DINO-head outputs, per global crop, summed over global crops.
    pixel_loss (`torch.FloatTensor` of shape `()`):
        Squared error summed over a patch's values, averaged over the predicted (R) patches of the global crops.
    teacher_entropy (`torch.FloatTensor` of shape `()`):
        Mean entropy of the teacher's target distributions (nats); collapse shows as 0 or `log(num_prototypes)`.
    center_norm (`torch.FloatTensor` of shape `()`):
        L2 norm of the DINO centre used for this step's targets.
    predicted_pixels (`torch.FloatTensor` of shape `(num_global_crops, batch_size, num_predicted, patch_size**2 * num_channels)`):
        The student's pixel predictions for the R patches of the global crops, in the layout of [`patchify`].
    student_patch_index (`torch.LongTensor` of shape `(num_global_crops, batch_size, num_student)`):
        Patches of each global crop the student saw (S).
    predicted_patch_index (`torch.LongTensor` of shape `(num_global_crops, batch_size, num_predicted)`):
        Patches of each global crop the student predicted (R), in the order of `predicted_pixels`.
    teacher_patch_index (`torch.LongTensor` of shape `(num_global_crops, batch_size, num_teacher)`):
        Patches of each global crop the teacher saw (T).
    """

    loss: torch.FloatTensor | None = None
    dino_loss: torch.FloatTensor | None = None
    koleo_loss: torch.FloatTensor | None = None
    pixel_loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    center_norm: torch.FloatTensor | None = None
    predicted_pixels: torch.FloatTensor | None = None
    student_patch_index: torch.LongTensor | None = None
    predicted_patch_index: torch.LongTensor | None = None
    teacher_patch_index: torch.LongTensor | None = None


class PeraForPreTraining(PeraPreTrainedModel):
    """
    PerA pretraining: a student encoder and DINO head trained by gradient, their EMA copies (the teacher, stored as
    the base model `pera`), the student's pixel head and mask token, and the DINO centre (a buffer, saved with the
    weights so that a resumed run continues with it).
    """

    def __init__(self, config: PeraConfig):
        super().__init__(config)
        self.student = PeraModel(config)
        self.student_dino_head = PeraHead(config, config.num_prototypes)
        self.pixel_head = PeraHead(config, config.patch_size**2 * config.num_channels)
        # The teacher, under the base_model_prefix: what `AutoModel.from_pretrained` loads from a pretraining checkpoint
        self.pera = PeraModel(config)
        self.teacher_dino_head = PeraHead(config, config.num_prototypes)
        self.register_buffer("center", torch.zeros(1, config.num_prototypes))
        self._freeze_untrained_parameters()
        self.post_init()

    def _freeze_untrained_parameters(self) -> None:
        """The teacher only ever changes by `update_teacher`."""
        self.teacher.requires_grad_(False)
        self.teacher_dino_head.requires_grad_(False)

    @property
    def teacher(self) -> PeraModel:
        """The teacher encoder: the EMA of the student, and the network downstream code uses."""
        return self.pera

    def train(self, mode: bool = True) -> "PeraForPreTraining":
        super().train(mode)
        # The teacher never drops paths or units.
        self.teacher.eval()
        self.teacher_dino_head.eval()
        return self

    def _paired_parameters(self, with_mask_token: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Matching lists of teacher and student parameters: backbone and DINO head."""
        teacher, student = [], []
        for teacher_module, student_module in (
            (self.teacher, self.student),
            (self.teacher_dino_head, self.student_dino_head),
        ):
            student_parameters = dict(student_module.named_parameters())
            for name, parameter in teacher_module.named_parameters():
                if with_mask_token or name != "embeddings.mask_token":
                    teacher.append(parameter)
                    student.append(student_parameters[name])
        return teacher, student

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """
        EMA step `teacher = momentum * teacher + (1 - momentum) * student` over the backbone and the DINO head; call it
        after each optimizer step. The teacher also takes the student's mask token verbatim (it never uses it in
        pretraining), so that the exported encoder supports `bool_masked_pos`.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"The teacher's EMA momentum must lie in [0, 1], got {momentum}.")
        teacher, student = self._paired_parameters(with_mask_token=False)
        torch._foreach_lerp_(teacher, student, 1.0 - momentum)
        self.teacher.embeddings.mask_token.copy_(self.student.embeddings.mask_token)

    def _draw_masks(
        self, noise: torch.Tensor | None, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num_crops, batch_size, _, height, width = pixel_values.shape
        num_patches = (height // self.config.patch_size) * (width // self.config.patch_size)
        if self.config.full_views:
            every_patch = torch.arange(num_patches, device=pixel_values.device).expand(num_crops, batch_size, -1)
            return every_patch, every_patch[..., :0], every_patch
        if noise is None:
            noise = torch.rand(num_crops, batch_size, num_patches, device=pixel_values.device)
        elif noise.shape != (num_crops, batch_size, num_patches):
            raise ValueError(
                f"noise must have shape (num_crops, batch_size, num_patches) = ({num_crops}, {batch_size}, "
                f"{num_patches}), got {tuple(noise.shape)}."
            )
        return pera_mask_indices(noise, self.config.student_ratio, self.config.teacher_ratio)

    @staticmethod
    def _check_views(
        student_global_pixel_values: torch.Tensor,
        teacher_global_pixel_values: torch.Tensor,
        student_local_pixel_values: torch.Tensor | None,
        teacher_local_pixel_values: torch.Tensor | None,
    ) -> None:
        if (
            student_global_pixel_values.ndim != 5
            or student_global_pixel_values.shape != teacher_global_pixel_values.shape
        ):
            raise ValueError(
                "student_global_pixel_values and teacher_global_pixel_values must both have shape (num_global_crops, "
                f"batch_size, channels, height, width); got {tuple(student_global_pixel_values.shape)} and "
                f"{tuple(teacher_global_pixel_values.shape)}."
            )
        if student_local_pixel_values is not None and (
            teacher_local_pixel_values is None
            or student_local_pixel_values.ndim != 5
            or student_local_pixel_values.shape != teacher_local_pixel_values.shape
            or student_local_pixel_values.shape[1] != student_global_pixel_values.shape[1]
        ):
            raise ValueError(
                "student_local_pixel_values and teacher_local_pixel_values must both be given, with shape "
                "(num_local_crops, batch_size, channels, height, width) and the batch size of the global crops."
            )

    def _crops_with_masks(
        self,
        student_global_pixel_values: torch.Tensor,
        teacher_global_pixel_values: torch.Tensor,
        student_local_pixel_values: torch.Tensor | None,
        teacher_local_pixel_values: torch.Tensor | None,
        global_noise: torch.Tensor | None,
        local_noise: torch.Tensor | None,
    ) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor]:
        """`(student view, teacher view, S, T)` of the global crops and, when given, of the local ones (whose R is
        dropped), and R of the global crops."""
        global_student_index, global_predicted_index, global_teacher_index = self._draw_masks(
            global_noise, student_global_pixel_values
        )
        crops = [
            (student_global_pixel_values, teacher_global_pixel_values, global_student_index, global_teacher_index)
        ]
        if student_local_pixel_values is not None:
            local_student_index, _, local_teacher_index = self._draw_masks(local_noise, student_local_pixel_values)
            crops.append(
                (student_local_pixel_values, teacher_local_pixel_values, local_student_index, local_teacher_index)
            )
        return crops, global_predicted_index

    @torch.no_grad()
    def _teacher_targets(
        self, crops: list[tuple[torch.Tensor, ...]], teacher_temperature: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's DINO logits, target distributions and their mean entropy, from CLS + T of every crop (crop
        sizes differ, so global and local crops are separate sequences)."""
        teacher_cls = [
            self.teacher(teacher_view.flatten(0, 1), visible_patch_index=teacher_index.flatten(0, 1)).pooler_output
            for _, teacher_view, _, teacher_index in crops
        ]
        teacher_logits = self.teacher_dino_head(torch.cat(teacher_cls))
        teacher_probs, teacher_entropy = dino_teacher_targets(
            teacher_logits,
            self.center,
            teacher_temperature,
            self.config.teacher_centering,
            self.config.sinkhorn_iterations,
        )
        return teacher_logits, teacher_probs, teacher_entropy

    def _student_outputs(
        self, crops: list[tuple[torch.Tensor, ...]], global_predicted_index: torch.Tensor
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """The student's output on the global crops and its DINO logits for every crop: CLS + S, and for global crops
        the mask tokens of R joining before `mask_token_layer` (they come last in the output sequence)."""
        (global_view, _, global_student_index, _), *local_crops = crops
        global_output = self.student(
            global_view.flatten(0, 1),
            visible_patch_index=global_student_index.flatten(0, 1),
            masked_patch_index=global_predicted_index.flatten(0, 1),
        )
        student_cls = [global_output.pooler_output]
        for local_view, _, local_student_index, _ in local_crops:
            local_output = self.student(
                local_view.flatten(0, 1), visible_patch_index=local_student_index.flatten(0, 1)
            )
            student_cls.append(local_output.pooler_output)
        return global_output, self.student_dino_head(torch.cat(student_cls))

    def _pixel_predictions(
        self, hidden_states: torch.Tensor, student_views: torch.Tensor, predicted_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pixel head's predictions for the R patches of the global crops (the last tokens of `hidden_states`) and
        their loss against the student's views."""
        num_predicted = predicted_index.shape[-1]
        predicted_pixels = self.pixel_head(hidden_states[:, hidden_states.shape[1] - num_predicted :])
        if num_predicted == 0:  # the full-view baseline predicts nothing
            return predicted_pixels, predicted_pixels.sum() * 0.0
        target_pixels = gather_tokens(
            patchify(student_views.flatten(0, 1), self.config.patch_size), predicted_index.flatten(0, 1)
        )
        return predicted_pixels, pixel_loss(predicted_pixels, target_pixels, self.config.normalize_pixel_targets)

    @can_return_tuple
    def _weighted_loss(self, dino_loss: torch.Tensor, koleo: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
        return (
            self.config.dino_loss_weight * dino_loss
            + self.config.koleo_loss_weight * koleo
            + self.config.pixel_loss_weight * pixel
        )

    def forward(
        self,
        student_global_pixel_values: torch.Tensor,
        teacher_global_pixel_values: torch.Tensor,
        student_local_pixel_values: torch.Tensor | None = None,
        teacher_local_pixel_values: torch.Tensor | None = None,
        global_noise: torch.Tensor | None = None,
        local_noise: torch.Tensor | None = None,
        teacher_temperature: float | torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> PeraForPreTrainingOutput:
        r"""
        student_global_pixel_values (`torch.FloatTensor` of shape `(num_global_crops, batch_size, num_channels, height, width)`):
            The student's (strongly augmented) view of each global crop, crop-major.
        teacher_global_pixel_values (`torch.FloatTensor` of the same shape):
            The teacher's (weakly augmented) view of the same crops: same pixels and geometry, other photometry.
        student_local_pixel_values (`torch.FloatTensor` of shape `(num_local_crops, batch_size, num_channels, local_height, local_width)`, *optional*):
            The student's view of each local crop.
        teacher_local_pixel_values (`torch.FloatTensor` of the same shape, *optional*):
            The teacher's view of the same local crops.
        global_noise (`torch.FloatTensor` of shape `(num_global_crops, batch_size, num_patches)`, *optional*):
            Noise the S/R/T sets of the global crops are drawn from (see [`pera_mask_indices`]); drawn uniformly when
            not given. Pass it for reproducible steps.
        local_noise (`torch.FloatTensor` of shape `(num_local_crops, batch_size, num_local_patches)`, *optional*):
            The same for the local crops (whose R is dropped).
        teacher_temperature (`float` or `torch.Tensor`, *optional*):
            Sharpening temperature of the teacher targets (scheduled in pretraining); `config.teacher_temperature` when
            not given.

        In training mode (with the reference's `teacher_centering="center"`), the call also moves the DINO centre with
        this step's teacher outputs (the targets of this step use the centre of the previous steps).
        """
        self._check_views(
            student_global_pixel_values,
            teacher_global_pixel_values,
            student_local_pixel_values,
            teacher_local_pixel_values,
        )
        teacher_temperature = self.config.teacher_temperature if teacher_temperature is None else teacher_temperature
        num_global_crops, batch_size = student_global_pixel_values.shape[:2]

        crops, global_predicted_index = self._crops_with_masks(
            student_global_pixel_values,
            teacher_global_pixel_values,
            student_local_pixel_values,
            teacher_local_pixel_values,
            global_noise,
            local_noise,
        )
        _, _, global_student_index, global_teacher_index = crops[0]
        teacher_logits, teacher_probs, teacher_entropy = self._teacher_targets(crops, teacher_temperature)

        global_output, student_logits = self._student_outputs(crops, global_predicted_index)

        # Rows of student and teacher logits are the same (crop, image) pairs: the loss only compares aligned pairs.
        dino_loss = soft_target_cross_entropy(student_logits, teacher_probs, self.config.student_temperature)

        global_logits = student_logits[: num_global_crops * batch_size]
        koleo = koleo_loss(global_logits.view(num_global_crops, batch_size, -1))

        predicted_pixels, pixel = self._pixel_predictions(
            global_output.last_hidden_state, student_global_pixel_values, global_predicted_index
        )
        center_norm = torch.linalg.vector_norm(self.center)
        loss = self._weighted_loss(dino_loss, koleo, pixel)
        if self.training and self.config.teacher_centering == "center":
            self.center.copy_(updated_dino_center(self.center, teacher_logits, self.config.center_momentum))

        return PeraForPreTrainingOutput(
            loss=loss,
            dino_loss=dino_loss,
            koleo_loss=koleo,
            pixel_loss=pixel,
            teacher_entropy=teacher_entropy,
            center_norm=center_norm,
            predicted_pixels=predicted_pixels.view(*global_predicted_index.shape, predicted_pixels.shape[-1]),
            student_patch_index=global_student_index,
            predicted_patch_index=global_predicted_index,
            teacher_patch_index=global_teacher_index,
        )


class PeraForImageClassification(PeraPreTrainedModel):
    """PerA encoder with a linear classifier on the final CLS token concatenated with the mean patch token."""

    def __init__(self, config: PeraConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pera = PeraModel(config)
        self.classifier = (
            nn.Linear(2 * config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self._freeze_untrained_parameters()
        self.post_init()

    def _freeze_untrained_parameters(self) -> None:
        # Only `bool_masked_pos` uses the mask token; a trainable parameter without gradient breaks DDP fine-tuning.
        self.pera.embeddings.mask_token.requires_grad_(False)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the classification loss (cross-entropy; mean-squared error when `num_labels == 1`).
        """
        outputs: BaseModelOutputWithPooling = self.pera(pixel_values, **kwargs)
        sequence_output = outputs.last_hidden_state
        features = torch.cat((sequence_output[:, 0], sequence_output[:, 1:].mean(dim=1)), dim=-1)
        logits = self.classifier(features)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class PeraBackbone(BackboneMixin, PeraPreTrainedModel):
    """
    The PerA encoder as a backbone for dense heads (e.g. transformers' `UperNetForSemanticSegmentation`): returns the
    feature maps of the stages in `config.out_features` (`"stem"`, `"stage1"` ... `"stage{num_hidden_layers}"`), each
    passed through the encoder's final LayerNorm, without the CLS token, and reshaped to
    `(batch_size, hidden_size, height // patch_size, width // patch_size)`.

    The encoder is kept under `pera`, as in [`PeraForImageClassification`], so that encoder, pretraining (teacher) and
    classification checkpoints all load into it.

    Example:

    ```python
    >>> import torch
    >>> from modeling_pera import PeraBackbone, PeraConfig

    >>> config = PeraConfig.from_preset("vit-tiny", image_size=224, out_indices=[3, 6, 9, 12])
    >>> backbone = PeraBackbone(config)
    >>> [tuple(feature_map.shape) for feature_map in backbone(torch.randn(1, 3, 224, 224)).feature_maps]
    [(1, 192, 14, 14), (1, 192, 14, 14), (1, 192, 14, 14), (1, 192, 14, 14)]
    ```"""

    def __init__(self, config: PeraConfig):
        super().__init__(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.pera = PeraModel(config)
        self._freeze_untrained_parameters()
        self.post_init()

    def _freeze_untrained_parameters(self) -> None:
        # As in the classifier: the mask token is unused here and would break DDP fine-tuning.
        self.pera.embeddings.mask_token.requires_grad_(False)

    def get_input_embeddings(self) -> PeraPatchEmbeddings:
        return self.pera.get_input_embeddings()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images of any size divisible by the patch size.
        """
        # `filter_output_hidden_states` asks for every hidden state: the embeddings ("stem") and each block's output.
        outputs: BaseModelOutputWithPooling = self.pera(pixel_values, **kwargs)
        batch_size, _, height, width = pixel_values.shape
        grid_height, grid_width = height // self.config.patch_size, width // self.config.patch_size
        feature_maps = ()
        for stage, hidden_state in zip(self.stage_names, outputs.hidden_states):
            if stage in self.out_features:
                patch_tokens = self.pera.layernorm(hidden_state)[:, 1:]
                feature_map = patch_tokens.reshape(batch_size, grid_height, grid_width, -1).permute(0, 3, 1, 2)
                feature_maps += (feature_map.contiguous(),)
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "PeraBackbone",
    "PeraDropPath",
    "PeraForImageClassification",
    "PeraForPreTraining",
    "PeraForPreTrainingOutput",
    "PeraModel",
    "PeraPreTrainedModel",
    "pera_mask_indices",
]
