"""The fast paths compute the same step as the plain one: sdpa and eager attention, activation checkpointing and
not, torch.compile and eager (where a compiler is available). Speed is measured by benchmarks/step.py, not here."""

import copy
import shutil

import pytest
import torch

from modeling_pera import PeraForPreTraining
from modeling_pera.losses_pera import soft_target_cross_entropy
from modeling_pera.pretraining import enable_activation_checkpointing
from pera_testing import tiny_config
from test_modeling_pera import crops


def loss_and_gradients(
    model: PeraForPreTraining, inputs: dict, seed: int = 0, bf16: bool = False
) -> tuple[dict, dict]:
    """The losses of one training forward (under bf16 autocast with `bf16`) and the gradients of the trainable
    parameters."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # drop path draws from the global generator
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs = model(**inputs, teacher_temperature=0.04)
    outputs.loss.backward()
    losses = {name: outputs[name].detach() for name in ("loss", "dino_loss", "koleo_loss", "pixel_loss")}
    gradients = {
        name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None
    }
    return losses, gradients


def assert_same_step(
    expected: tuple[dict, dict], got: tuple[dict, dict], atol: float, relative_to_largest: bool = False
) -> None:
    """Same losses and gradients, within `atol` (times each tensor's largest magnitude with `relative_to_largest`)."""
    for part in (0, 1):
        assert expected[part].keys() == got[part].keys()
        for name in expected[part]:
            tolerance = atol * expected[part][name].abs().max().item() if relative_to_largest else atol
            torch.testing.assert_close(got[part][name], expected[part][name], rtol=1e-4, atol=tolerance, msg=name)
    assert len(expected[1]) > 10  # student backbone, both heads and the mask token received gradients


def twin_models(**overrides) -> tuple[PeraForPreTraining, PeraForPreTraining]:
    config = tiny_config(**{"num_hidden_layers": 4, "num_local_crops": 2, "drop_path_rate": 0.0, **overrides})
    torch.manual_seed(0)
    first = PeraForPreTraining(config).train()
    second = PeraForPreTraining(copy.deepcopy(config)).train()  # its own config: attention is chosen per config
    second.load_state_dict(first.state_dict())
    return first, second


def test_sdpa_and_eager_attention_give_the_same_losses_and_gradients():
    sdpa, eager = twin_models()
    eager.set_attn_implementation("eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    inputs = crops(sdpa.config)
    assert_same_step(loss_and_gradients(eager, inputs), loss_and_gradients(sdpa, inputs), atol=1e-5)


def test_bf16_autocast_gives_the_float32_losses_within_bf16_rounding():
    # What `--mixed_precision bf16` changes: matrix products and attention in bf16; the DINO targets, the centre, the
    # softmaxes and the losses stay float32. The losses agree to bf16's precision (8 bits of mantissa).
    float32, bf16 = twin_models(drop_path_rate=0.1)
    inputs = crops(float32.config)
    expected, _ = loss_and_gradients(float32, inputs)
    got, gradients = loss_and_gradients(bf16, inputs, bf16=True)
    for name in expected:
        torch.testing.assert_close(got[name].float(), expected[name], rtol=2e-2, atol=1e-3, msg=name)
        assert got[name].dtype == torch.float32, name
    assert all(gradient.dtype == torch.float32 and torch.isfinite(gradient).all() for gradient in gradients.values())


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_gives_the_same_losses_and_gradients(mode, bf16):
    # With drop path on: the recomputed blocks must draw the same drop-path masks as the first pass. Under autocast
    # the student runs twice per step (global, then local crops), which selective checkpointing must survive. It casts
    # the block weights once per run, so their two bf16 gradients add up in float32 rather than in bf16 through
    # autocast's shared cast: differences of bf16 rounding.
    plain, checkpointed = twin_models(drop_path_rate=0.3)
    enable_activation_checkpointing(checkpointed, mode)
    assert checkpointed.student.is_activation_checkpointing
    inputs = crops(plain.config)
    expected = loss_and_gradients(plain, inputs, seed=5, bf16=bf16)
    got = loss_and_gradients(checkpointed, inputs, seed=5, bf16=bf16)
    assert_same_step(expected, got, atol=1e-2 if bf16 else 1e-6, relative_to_largest=bf16)


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile needs a C++ compiler"
)
def test_compiled_model_gives_the_same_losses_and_gradients():
    plain, compiled = twin_models()
    inputs = crops(plain.config)
    expected = loss_and_gradients(plain, inputs)
    compiled.forward = torch.compile(compiled.forward)
    assert_same_step(expected, loss_and_gradients(compiled, inputs), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_dino_cross_entropy_matches_the_plain_expression(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(37, 300, generator=generator)).to(dtype).requires_grad_()
    targets = torch.softmax(torch.randn(37, 300, generator=generator) / 0.04, dim=-1)
    plain = -(targets * torch.log_softmax(logits.float() / 0.1, dim=-1)).sum(dim=-1).mean()
    (plain_gradient,) = torch.autograd.grad(2.5 * plain, logits)
    # 1000 values per chunk: 3 rows each, so 13 chunks, the last one partial
    chunked = soft_target_cross_entropy(logits, targets, 0.1, chunk_elements=1000)
    (chunked_gradient,) = torch.autograd.grad(2.5 * chunked, logits)
    assert chunked_gradient.dtype == dtype
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        chunked_gradient.float(), plain_gradient.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6
    )


def test_attention_saves_one_low_precision_copy_of_its_input_under_autocast():
    # The q, k and v projections share one bf16 copy of the normalised input for backward; with a copy each, the
    # attention input would be saved three times (a tenth of a ViT-B step's activations).
    from modeling_pera.modeling_pera import PeraAttention

    config = tiny_config()
    attention = PeraAttention(config)
    leaf = torch.randn(2, 7, config.hidden_size, requires_grad=True)
    hidden_states = leaf * 1.0  # not a leaf: autocast caches the casts of leaves (weights) only
    input_copies = set()

    def pack(tensor):
        if tensor.dtype == torch.bfloat16 and tensor.numel() == hidden_states.numel():
            if torch.equal(tensor.reshape(hidden_states.shape), hidden_states.detach().bfloat16()):
                input_copies.add(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attention(hidden_states)[0].sum().backward()
    assert len(input_copies) == 1
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_training_step_reads_nothing_back_to_the_host():
    # On the meta device, reading a value back to the host (.item(), bool(tensor), a shape that depends on the data)
    # raises. The device-side view making, the step and the EMA update run there: on a GPU they never wait for it.
    from modeling_pera import PeraImageProcessor
    from modeling_pera.views import AlignedPairViews, pop_sample_counts, pretraining_collate

    config = tiny_config(num_local_crops=2)
    views = AlignedPairViews(config, PeraImageProcessor(), defer_photometry=True)
    images = [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8) for _ in range(3)]
    batch = pretraining_collate(
        [views(image, torch.Generator().manual_seed(seed)) for seed, image in enumerate(images)]
    )
    pop_sample_counts(batch)
    batch = views.finish_batch({name: tensor.to("meta") for name, tensor in batch.items()})
    model = PeraForPreTraining(config).train().to("meta")

    outputs = model(**batch, teacher_temperature=torch.tensor(0.04, device="meta"))
    outputs.loss.backward()
    model.update_teacher(0.99)
    assert outputs.loss.device.type == "meta" and model.student.embeddings.cls_token.grad is not None
