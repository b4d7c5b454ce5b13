"""The teacher-target options besides the reference's centre: Sinkhorn-Knopp centering (DINOv2's option) and
per-patch normalised pixel targets (MAE's norm_pix_loss)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_pera import PeraForPreTraining
from modeling_pera.losses_pera import patchify, sinkhorn_knopp
from pera_testing import tiny_config
from test_modeling_pera import crops


def scaled_logits(rows: int = 12, prototypes: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, prototypes, generator=torch.Generator().manual_seed(seed)) / 0.04


def test_sinkhorn_knopp_gives_distributions_that_use_every_prototype_equally():
    logits = scaled_logits()
    targets = sinkhorn_knopp(logits, iterations=200)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(12))
    # converged: each prototype carries 1/prototypes of the batch's mass
    torch.testing.assert_close(targets.sum(dim=0), torch.full((20,), 12 / 20), rtol=1e-4, atol=1e-5)
    # few iterations already move far towards equipartition from the plain softmax
    softmax_spread = torch.softmax(logits, dim=1).sum(dim=0).std()
    assert sinkhorn_knopp(logits, iterations=3).sum(dim=0).std() < 0.5 * softmax_spread
    # a constant added to every logit changes nothing (it is how overflow is avoided)
    torch.testing.assert_close(sinkhorn_knopp(logits + 1e3, iterations=3), sinkhorn_knopp(logits, iterations=3))


def _sinkhorn_on_half_of_the_rows(rank: int, port: int, logits: torch.Tensor, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        half = logits.shape[0] // 2
        results[rank] = sinkhorn_knopp(logits[rank * half : (rank + 1) * half].clone(), iterations=3)
    finally:
        dist.destroy_process_group()


def test_sinkhorn_knopp_over_two_processes_equals_it_over_the_whole_batch():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logits = scaled_logits()
    results = mp.Manager().dict()
    mp.spawn(_sinkhorn_on_half_of_the_rows, args=(port, logits, results), nprocs=2)
    torch.testing.assert_close(torch.cat([results[0], results[1]]), sinkhorn_knopp(logits, iterations=3))


def test_sinkhorn_knopp_centering_trains_without_the_centre():
    config = tiny_config(teacher_centering="sinkhorn_knopp")
    model = PeraForPreTraining(config).train()
    outputs = model(**crops(config))
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss) and torch.count_nonzero(model.center) == 0
    assert 0 < outputs.teacher_entropy <= torch.log(torch.tensor(float(config.num_prototypes))) + 1e-4
    assert model.student_dino_head.mlp[0].weight.grad.abs().sum() > 0


def test_reference_centering_is_the_default_and_bad_values_are_refused():
    assert tiny_config().teacher_centering == "center"
    with pytest.raises(ValueError, match="teacher_centering must be one of"):
        tiny_config(teacher_centering="sinkhorn")
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        tiny_config(teacher_centering="sinkhorn_knopp", sinkhorn_iterations=0)


def test_normalized_pixel_targets_are_each_patch_standardised():
    config = tiny_config(normalize_pixel_targets=True, drop_path_rate=0.0)
    model = PeraForPreTraining(config).train()
    inputs = crops(config)
    outputs = model(**inputs)
    # the loss against standardised patches, recomputed by hand
    predicted_index = outputs.predicted_patch_index.flatten(0, 1)
    patches = patchify(inputs["student_global_pixel_values"].flatten(0, 1), config.patch_size)
    targets = torch.stack([patches[row, predicted_index[row]] for row in range(patches.shape[0])])
    targets = (targets - targets.mean(-1, keepdim=True)) / (targets.var(-1, keepdim=True) + 1e-6).sqrt()
    predicted = outputs.predicted_pixels.flatten(0, 1)
    expected = (predicted - targets).pow(2).sum(-1).mean()
    torch.testing.assert_close(outputs.pixel_loss, expected)
    reference = PeraForPreTraining(tiny_config(drop_path_rate=0.0)).train()
    reference.load_state_dict(model.state_dict())
    assert not torch.allclose(reference(**inputs).pixel_loss, outputs.pixel_loss)
