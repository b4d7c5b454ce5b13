# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The losses of PerA pretraining: the DINO cross-entropy against the teacher's targets (centred with an EMA centre, or
balanced by Sinkhorn-Knopp), the update of that centre over all processes, the KoLeo regulariser and the pixel loss.

[`PeraForPreTraining`] owns the networks and the centre (a buffer, so that it is saved and resumes); it calls these
functions. This file is part of the Hub code: `modeling_pera.py` imports it relatively, and transformers copies it
with the model's code.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(batch, channels, height, width)` -> `(batch, num_patches, patch_size**2 * channels)`, patches in raster order
    and each patch's values ordered (row, column, channel) as in transformers' ViTMAE."""
    batch_size, num_channels, height, width = pixel_values.shape
    grid_height, grid_width = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch_size, num_channels, grid_height, patch_size, grid_width, patch_size)
    patches = torch.einsum("bchpwq->bhwpqc", patches)
    return patches.reshape(batch_size, grid_height * grid_width, patch_size**2 * num_channels)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class _SoftTargetCrossEntropy(torch.autograd.Function):
    """The autograd of [`soft_target_cross_entropy`]: saves its inputs and one log-normaliser per row, and recomputes
    the softmax chunk by chunk in backward instead of keeping a float32 copy of the logits."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target_probs: torch.Tensor, temperature: float, chunk_rows: int):
        row_losses = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        log_normalizers = torch.empty_like(row_losses)
        for start in range(0, logits.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            scaled = logits[rows].float() / temperature
            targets = target_probs[rows]
            log_normalizers[rows] = torch.logsumexp(scaled, dim=-1)
            row_losses[rows] = log_normalizers[rows] * targets.sum(dim=-1) - torch.einsum("rk,rk->r", targets, scaled)
        ctx.save_for_backward(logits, target_probs, log_normalizers)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return row_losses.mean()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, target_probs, log_normalizers = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        scale = grad_output / (logits.shape[0] * ctx.temperature)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            targets = target_probs[rows]
            probs = torch.exp(logits[rows].float() / ctx.temperature - log_normalizers[rows, None])
            grad_logits[rows] = ((probs * targets.sum(dim=-1, keepdim=True) - targets) * scale).to(logits.dtype)
        return grad_logits, None, None, None


def soft_target_cross_entropy(
    logits: torch.Tensor, target_probs: torch.Tensor, temperature: float, chunk_elements: int = 2**24
) -> torch.Tensor:
    """
    `-(target_probs * log_softmax(logits / temperature)).sum(-1).mean()`, computed in float32 over chunks of rows.

    With 131072 prototypes the logits of one step are hundreds of MB; the plain expression keeps float32 copies of
    them for backward (the cast, the scaled logits, the log-probabilities). Here only the inputs (in their own dtype,
    e.g. bf16) and one number per row are kept, and no temporary exceeds `chunk_elements` float32 values.

    Args:
        logits (`torch.Tensor` of shape `(rows, classes)`):
            The student's logits, any float dtype; receives the gradient.
        target_probs (`torch.Tensor` of shape `(rows, classes)`):
            The teacher's target distributions (no gradient).
        temperature (`float`):
            Divides the logits before the softmax.
    """
    chunk_rows = max(1, chunk_elements // logits.shape[-1])
    return _SoftTargetCrossEntropy.apply(logits, target_probs.detach(), temperature, chunk_rows)


@torch.no_grad()
def sinkhorn_knopp(scaled_logits: torch.Tensor, iterations: int) -> torch.Tensor:
    """
    Teacher targets by Sinkhorn-Knopp normalisation (DINOv2's alternative to the centre): starting from
    `exp(scaled_logits)`, alternately rescales every prototype to carry an equal share of the batch's mass (over the
    rows of all processes) and every row to sum to one, `iterations` times.

    Args:
        scaled_logits (`torch.Tensor` of shape `(rows, prototypes)`):
            The teacher's logits divided by the teacher temperature, float32.

    Returns:
        `torch.Tensor` of the same shape: one target distribution per row.
    """
    distributed = _distributed()
    largest = scaled_logits.max()  # a constant factor of exp(): cancels in the first normalisation, avoids overflow
    if distributed:
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    targets = torch.exp(scaled_logits - largest)
    num_rows = targets.shape[0] * (dist.get_world_size() if distributed else 1)
    total = targets.sum()
    if distributed:
        dist.all_reduce(total)
    targets /= total
    tiny = torch.finfo(targets.dtype).tiny
    for _ in range(iterations):
        per_prototype = targets.sum(dim=0, keepdim=True)
        if distributed:
            dist.all_reduce(per_prototype)
        targets /= per_prototype.clamp_min(tiny) * targets.shape[1]
        targets /= targets.sum(dim=1, keepdim=True).clamp_min(tiny) * num_rows
    return targets * num_rows


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """
    KoLeo regulariser `-mean(log(distance to nearest neighbour))` of L2-normalised `features` `(groups, batch, dim)`,
    computed within each group and summed over groups; 0 for a batch of one (no neighbour to keep away from).
    """
    if features.shape[1] < 2:
        return features.float().sum() * 0.0
    features = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarities = features @ features.transpose(1, 2)
        similarities.diagonal(dim1=1, dim2=2).fill_(-2.0)
        nearest = similarities.argmax(dim=-1)
    distances = torch.linalg.vector_norm(
        features - torch.take_along_dim(features, nearest.unsqueeze(-1), dim=1) + eps, dim=-1
    )
    return -torch.log(distances + eps).mean(dim=1).sum()


@torch.no_grad()
def dino_teacher_targets(
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    temperature: float | torch.Tensor,
    centering: str,
    iterations: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The teacher's target distributions and their mean entropy (nats).

    `centering="center"` (the reference) subtracts the EMA `center` and sharpens with `temperature`, in float32;
    `"sinkhorn_knopp"` balances the sharpened logits over the prototypes with [`sinkhorn_knopp`] (`iterations`).
    """
    if centering == "sinkhorn_knopp":
        targets = sinkhorn_knopp(teacher_logits.float() / temperature, iterations)
        return targets, torch.special.entr(targets).sum(dim=-1).mean()
    # float32 from here (the centre is float32), in place where possible: the logits are large
    scaled_logits = (teacher_logits - center).div_(temperature)
    targets = torch.softmax(scaled_logits, dim=-1)
    entropy = (torch.logsumexp(scaled_logits, dim=-1) - torch.einsum("rk,rk->r", targets, scaled_logits)).mean()
    return targets, entropy


@torch.no_grad()
def updated_dino_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """
    The next DINO centre: the EMA (`momentum`) of the mean teacher logits over all views of all processes (an
    all-reduce when torch.distributed is initialised). A non-finite batch (NaN pixels, a diverged step) leaves the
    centre as it was instead of poisoning every later step; that step's loss is non-finite, which stops pretraining
    (checked on the device, without a host sync).
    """
    batch_center = teacher_logits.float().mean(dim=0, keepdim=True)
    if _distributed():
        dist.all_reduce(batch_center)
        batch_center /= dist.get_world_size()
    updated = torch.lerp(center, batch_center, 1.0 - momentum)
    return torch.where(torch.isfinite(batch_center).all(), updated, center)


def pixel_loss(predicted_pixels: torch.Tensor, target_pixels: torch.Tensor, normalize_targets: bool) -> torch.Tensor:
    """
    Squared error summed over each patch's values, averaged over patches and images; `normalize_targets` normalises
    each target patch to zero mean and unit variance first (MAE's `norm_pix_loss`).

    Args:
        predicted_pixels (`torch.Tensor` of shape `(batch, num_predicted, patch_size**2 * channels)`):
            The pixel head's outputs.
        target_pixels (`torch.Tensor` of the same shape):
            The same patches of the student's view, in the layout of [`patchify`].
    """
    if normalize_targets:
        mean = target_pixels.mean(dim=-1, keepdim=True)
        variance = target_pixels.var(dim=-1, keepdim=True)
        target_pixels = (target_pixels - mean) / (variance + 1e-6).sqrt()
    return (predicted_pixels.float() - target_pixels.float()).pow(2).sum(dim=-1).mean()


__all__ = [
    "dino_teacher_targets",
    "koleo_loss",
    "patchify",
    "pixel_loss",
    "sinkhorn_knopp",
    "soft_target_cross_entropy",
    "updated_dino_center",
]
