"""PerA semantics: masks, what each network sees, losses against a per-sample reference written from the spec, EMA,
the DINO centre, save/load, and bad input."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from modeling_pera import PeraConfig, PeraForPreTraining, PeraModel, pera_mask_counts, pera_mask_indices
from modeling_pera.losses_pera import patchify
from pera_testing import tiny_config as shared_tiny_config


BATCH = 3


def tiny_config(**overrides) -> PeraConfig:
    # deeper than the shared tiny model, so the mask tokens join after two blocks; no drop path, for exact comparisons
    return shared_tiny_config(
        **{"num_hidden_layers": 4, "num_local_crops": 3, "head_hidden_size": 48, "drop_path_rate": 0.0, **overrides}
    )


def crops(config: PeraConfig, batch_size: int = BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    channels, global_size, local_size = config.num_channels, config.image_size, config.local_crop_size

    def draw(*shape):
        return torch.randn(*shape, generator=generator)

    global_patches = (global_size // config.patch_size) ** 2
    local_patches = (local_size // config.patch_size) ** 2
    return {
        "student_global_pixel_values": draw(config.num_global_crops, batch_size, channels, global_size, global_size),
        "teacher_global_pixel_values": draw(config.num_global_crops, batch_size, channels, global_size, global_size),
        "student_local_pixel_values": draw(config.num_local_crops, batch_size, channels, local_size, local_size),
        "teacher_local_pixel_values": draw(config.num_local_crops, batch_size, channels, local_size, local_size),
        "global_noise": torch.rand(config.num_global_crops, batch_size, global_patches, generator=generator),
        "local_noise": torch.rand(config.num_local_crops, batch_size, local_patches, generator=generator),
    }


def set_patch(pixel_values: torch.Tensor, patch: int, patch_size: int, value: float) -> torch.Tensor:
    """A copy of a `(batch, C, H, W)` image with one patch (the same for every image) set to `value`."""
    pixel_values = pixel_values.clone()
    grid_width = pixel_values.shape[-1] // patch_size
    row, column = divmod(patch, grid_width)
    pixel_values[..., row * patch_size : (row + 1) * patch_size, column * patch_size : (column + 1) * patch_size] = (
        value
    )
    return pixel_values


# ---------------------------------------------------------------------------------------------------------- masks


def test_mask_counts_match_the_reference():
    config = PeraConfig()
    assert config.mask_counts(448) == (157, 157, 470)
    assert config.mask_counts(96) == (7, 7, 22)
    assert pera_mask_counts(784, 0.2, 0.6) == (157, 157, 470)


@pytest.mark.parametrize("num_patches", [784, 36])
def test_mask_sets_are_disjoint_cover_the_crop_and_differ(num_patches):
    noise = torch.rand(10, 4, num_patches, generator=torch.Generator().manual_seed(0))
    student, predicted, teacher = pera_mask_indices(noise, 0.2, 0.6)
    assert (student.shape[-1], predicted.shape[-1], teacher.shape[-1]) == pera_mask_counts(num_patches, 0.2, 0.6)
    union = torch.cat((student, predicted, teacher), dim=-1).sort(dim=-1).values
    assert torch.equal(union, torch.arange(num_patches).expand_as(union))  # disjoint and covering
    for index in (student, predicted, teacher):
        assert torch.equal(index, index.sort(dim=-1).values)  # raster order
    flat_teacher = teacher.flatten(0, 1)
    assert len({tuple(row.tolist()) for row in flat_teacher}) == flat_teacher.shape[0]  # every crop/image differs


def test_masks_are_reproducible_from_noise():
    noise = torch.rand(2, 3, 16)
    first = pera_mask_indices(noise, 0.2, 0.6)
    second = pera_mask_indices(noise.clone(), 0.2, 0.6)
    other = pera_mask_indices(torch.rand(2, 3, 16), 0.2, 0.6)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_pretraining_uses_the_sets_drawn_from_its_noise():
    config = tiny_config()
    model = PeraForPreTraining(config).eval()
    inputs = crops(config)
    outputs = model(**inputs)
    student, predicted, teacher = pera_mask_indices(inputs["global_noise"], config.student_ratio, config.teacher_ratio)
    assert torch.equal(outputs.student_patch_index, student)
    assert torch.equal(outputs.predicted_patch_index, predicted)
    assert torch.equal(outputs.teacher_patch_index, teacher)
    again = model(**inputs)
    assert torch.equal(outputs.loss, again.loss)


# ------------------------------------------------------------------------------------------ what each network sees


def test_student_ignores_r_and_t_pixels_and_mask_tokens_join_halfway():
    config = tiny_config()
    model = PeraForPreTraining(config).eval()
    pixel_values = torch.randn(BATCH, 3, 32, 32)
    noise = torch.rand(BATCH, 16)
    student, predicted, teacher = pera_mask_indices(noise, config.student_ratio, config.teacher_ratio)
    # the same patch set for every image, so one edit hits the same set everywhere
    student, predicted, teacher = (
        student[:1].expand(BATCH, -1),
        predicted[:1].expand(BATCH, -1),
        teacher[:1].expand(BATCH, -1),
    )

    def run(images):
        return model.student(
            images, visible_patch_index=student, masked_patch_index=predicted, output_hidden_states=True
        )

    reference = run(pixel_values)
    first_half = config.mask_token_layer + 1  # embeddings + the outputs of the first mask_token_layer blocks
    assert [h.shape[1] for h in reference.hidden_states[:first_half]] == [1 + student.shape[1]] * first_half
    assert reference.hidden_states[first_half].shape[1] == 1 + student.shape[1] + predicted.shape[1]
    for patch in (int(predicted[0, 0]), int(teacher[0, 0])):
        edited = run(set_patch(pixel_values, patch, config.patch_size, 100.0))
        for before, after in zip(reference.hidden_states, edited.hidden_states):
            torch.testing.assert_close(before, after, rtol=0, atol=0)
        torch.testing.assert_close(reference.last_hidden_state, edited.last_hidden_state, rtol=0, atol=0)
    edited = run(set_patch(pixel_values, int(student[0, 0]), config.patch_size, 100.0))
    assert not torch.allclose(reference.pooler_output, edited.pooler_output)


def test_teacher_output_depends_only_on_its_patches():
    config = tiny_config()
    model = PeraForPreTraining(config).eval()
    inputs = crops(config, seed=1)
    # one noise row for all crops and images, so that a patch edit hits the same set everywhere
    inputs["global_noise"] = inputs["global_noise"][:1, :1].expand_as(inputs["global_noise"]).contiguous()
    student, predicted, teacher = pera_mask_indices(
        inputs["global_noise"][0, 0], config.student_ratio, config.teacher_ratio
    )

    def teacher_entropy(teacher_view):
        return model(**{**inputs, "teacher_global_pixel_values": teacher_view}).teacher_entropy

    reference = teacher_entropy(inputs["teacher_global_pixel_values"])
    views = inputs["teacher_global_pixel_values"]
    for patch in (int(student[0]), int(predicted[0])):
        edited = set_patch(views.flatten(0, 1), patch, config.patch_size, 100.0).view_as(views)
        assert torch.equal(teacher_entropy(edited), reference)
    edited = set_patch(views.flatten(0, 1), int(teacher[0]), config.patch_size, 100.0).view_as(views)
    assert not torch.equal(teacher_entropy(edited), reference)


def test_teacher_never_gets_gradients_and_student_does():
    config = tiny_config()
    model = PeraForPreTraining(config).train()
    model(**crops(config)).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("pera.", "teacher_dino_head.")):
            assert not parameter.requires_grad and parameter.grad is None, name
    assert model.student.embeddings.mask_token.grad is not None
    assert model.pixel_head.last_layer.weight_v.grad is not None
    assert model.student_dino_head.last_layer.weight_g.grad is not None
    assert model.pera.training is False and model.student.training is True


# -------------------------------------------------------------------------- losses against a per-sample reference


def reference_encoder(encoder: PeraModel, image, visible, masked=None):
    """The spec's forward for one image, written token by token: sequences in raster order over S (+ R)."""
    config = encoder.config
    embeddings = encoder.embeddings
    positions = embeddings.interpolate_pos_encoding(*image.shape[-2:])[0]
    patches = embeddings.patch_embeddings.projection(image[None]).flatten(2)[0].T
    tokens = {int(p): patches[p] + positions[1 + p] for p in visible}
    cls = embeddings.cls_token[0, 0] + positions[0]
    order = sorted(tokens)
    sequence = torch.stack([cls] + [tokens[p] for p in order])
    for layer_index, layer in enumerate(encoder.layers):
        if masked is not None and layer_index == config.mask_token_layer:
            processed = dict(zip(order, sequence[1:]))
            for p in masked:
                processed[int(p)] = embeddings.mask_token[0, 0] + positions[1 + p]
            order = sorted(processed)
            sequence = torch.cat((sequence[:1], torch.stack([processed[p] for p in order])))
        sequence = reference_block(layer, sequence, config)
    sequence = F.layer_norm(
        sequence, (config.hidden_size,), encoder.layernorm.weight, encoder.layernorm.bias, config.layer_norm_eps
    )
    return sequence[0], dict(zip(order, sequence[1:]))


def reference_block(layer, x, config):
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    eps = config.layer_norm_eps
    h = F.layer_norm(x, (x.shape[-1],), layer.norm1.weight, layer.norm1.bias, eps)
    attention = layer.attention
    q = attention.q_proj(h).view(-1, heads, head_dim).transpose(0, 1)
    k = attention.k_proj(h).view(-1, heads, head_dim).transpose(0, 1)
    v = attention.v_proj(h).view(-1, heads, head_dim).transpose(0, 1)
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(head_dim), dim=-1)
    x = x + attention.o_proj((weights @ v).transpose(0, 1).reshape(-1, config.hidden_size))
    h = F.layer_norm(x, (x.shape[-1],), layer.norm2.weight, layer.norm2.bias, eps)
    return x + layer.mlp.fc2(F.gelu(layer.mlp.fc1(h)))


def reference_head(head, x):
    x = F.normalize(head.mlp(x), dim=-1)
    weight = head.last_layer.weight_g * head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    return x @ weight.T


@torch.no_grad()
def test_losses_match_a_per_sample_reference():
    config = tiny_config()
    model = PeraForPreTraining(config).eval()
    model.center.normal_()
    model.student.embeddings.mask_token.normal_()
    with torch.no_grad():  # a teacher different from the student
        for parameter in list(model.pera.parameters()) + list(model.teacher_dino_head.parameters()):
            parameter.add_(0.01 * torch.randn_like(parameter))
    inputs = crops(config)
    temperature = 0.07
    outputs = model(**inputs, teacher_temperature=temperature)

    global_sets = pera_mask_indices(inputs["global_noise"], config.student_ratio, config.teacher_ratio)
    local_sets = pera_mask_indices(inputs["local_noise"], config.student_ratio, config.teacher_ratio)
    pairs, pixel_errors, global_student_logits = [], [], [[] for _ in range(config.num_global_crops)]
    for kind, (student_index, predicted_index, teacher_index) in (("global", global_sets), ("local", local_sets)):
        student_views, teacher_views = inputs[f"student_{kind}_pixel_values"], inputs[f"teacher_{kind}_pixel_values"]
        for crop in range(student_views.shape[0]):
            for image in range(BATCH):
                teacher_cls, _ = reference_encoder(model.pera, teacher_views[crop, image], teacher_index[crop, image])
                masked = predicted_index[crop, image] if kind == "global" else None
                student_cls, predicted = reference_encoder(
                    model.student, student_views[crop, image], student_index[crop, image], masked
                )
                teacher_logits = reference_head(model.teacher_dino_head, teacher_cls)
                student_logits = reference_head(model.student_dino_head, student_cls)
                pairs.append((teacher_logits, student_logits))
                if kind == "global":
                    global_student_logits[crop].append(student_logits)
                    targets = patchify(student_views[crop, image][None], config.patch_size)[0]
                    for p in masked.tolist():
                        prediction = reference_head(model.pixel_head, predicted[p])
                        pixel_errors.append(((prediction - targets[p]) ** 2).sum())

    dino = torch.stack(
        [
            -(torch.softmax((t - model.center[0]) / temperature, -1) * torch.log_softmax(s / 0.1, -1)).sum()
            for t, s in pairs
        ]
    ).mean()
    koleo = 0.0
    for logits in global_student_logits:
        features = F.normalize(torch.stack(logits), dim=-1)
        distances = []
        for i in range(BATCH):
            others = [j for j in range(BATCH) if j != i]
            nearest = max(others, key=lambda j: float(features[i] @ features[j]))
            distances.append((features[i] - features[nearest]).norm())
        koleo = koleo - torch.log(torch.stack(distances)).mean()
    pixel = torch.stack(pixel_errors).mean()

    torch.testing.assert_close(outputs.dino_loss, dino, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs.koleo_loss, koleo, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs.pixel_loss, pixel, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs.loss, dino + 0.1 * koleo + 0.01 * pixel, rtol=1e-4, atol=1e-5)
    assert all(torch.isfinite(outputs[name]) for name in ("loss", "dino_loss", "koleo_loss", "pixel_loss"))


def test_reference_position_interpolation_rule():
    config = tiny_config(image_size=64, local_crop_size=16)
    model = PeraModel(config)
    table = model.embeddings.position_embeddings
    grid = table[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(2.1 / 8, 3.1 / 8), mode="bicubic", align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 6, -1)
    got = model.embeddings.interpolate_pos_encoding(16, 24)
    torch.testing.assert_close(got[:, 1:], expected)
    torch.testing.assert_close(got[:, :1], table[:, :1])
    size_rule = PeraModel(tiny_config(image_size=64, local_crop_size=16, position_embedding_interpolation="size"))
    size_rule.load_state_dict(model.state_dict())
    assert not torch.allclose(size_rule.embeddings.interpolate_pos_encoding(16, 24), got)


# --------------------------------------------------------------------------------------------- EMA and the centre


@torch.no_grad()
def test_update_teacher_is_an_exact_ema():
    config = tiny_config()
    model = PeraForPreTraining(config)
    for parameter in list(model.student.parameters()) + list(model.student_dino_head.parameters()):
        parameter.add_(torch.randn_like(parameter))
    teacher_before = {
        name: p.clone() for name, p in model.named_parameters() if name.startswith(("pera.", "teacher_"))
    }
    pixel_head_before = {name: p.clone() for name, p in model.pixel_head.named_parameters()}
    momentum = 0.9
    model.update_teacher(momentum)
    for name, before in teacher_before.items():
        student_name = name.replace("pera.", "student.", 1).replace("teacher_dino_head.", "student_dino_head.", 1)
        student = model.get_parameter(student_name)
        expected = student if name.endswith("mask_token") else momentum * before + (1 - momentum) * student
        torch.testing.assert_close(model.get_parameter(name), expected, rtol=1e-6, atol=1e-7)
    for name, before in pixel_head_before.items():
        assert torch.equal(model.pixel_head.get_parameter(name), before)


def test_center_moves_in_training_only_and_is_saved(tmp_path):
    config = tiny_config()
    model = PeraForPreTraining(config)
    inputs = crops(config)
    model.eval()(**inputs)
    assert torch.count_nonzero(model.center) == 0
    model.train()
    outputs = model(**inputs)
    assert outputs.center_norm == 0  # this step's targets used the centre from before the step
    with torch.no_grad():
        teacher_cls = [
            model.pera(
                inputs[f"teacher_{kind}_pixel_values"].flatten(0, 1), visible_patch_index=index.flatten(0, 1)
            ).pooler_output
            for kind, index in (
                ("global", pera_mask_indices(inputs["global_noise"], 0.2, 0.6)[2]),
                ("local", pera_mask_indices(inputs["local_noise"], 0.2, 0.6)[2]),
            )
        ]
        expected = (1 - config.center_momentum) * model.teacher_dino_head(torch.cat(teacher_cls)).mean(0, keepdim=True)
    torch.testing.assert_close(model.center, expected)
    model.save_pretrained(tmp_path)
    reloaded = PeraForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(reloaded.center, model.center)


# ------------------------------------------------------------------------------------------------ save and load


def test_save_load_round_trip(tmp_path):
    config = tiny_config()
    model = PeraForPreTraining(config).eval()
    model.update_teacher(0.5)
    inputs = crops(config)
    expected = model(**inputs)
    model.save_pretrained(tmp_path)
    reloaded = PeraForPreTraining.from_pretrained(tmp_path).eval()
    got = reloaded(**inputs)
    for name in ("loss", "dino_loss", "koleo_loss", "pixel_loss", "predicted_pixels"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    assert not any(p.requires_grad for p in reloaded.pera.parameters())
    assert all(p.requires_grad for p in reloaded.student.parameters())

    encoder_dir = tmp_path / "encoder"
    model.pera.save_pretrained(encoder_dir)
    encoder = PeraModel.from_pretrained(encoder_dir).eval()
    images = torch.randn(2, 3, 48, 32)
    torch.testing.assert_close(encoder(images).last_hidden_state, model.pera(images).last_hidden_state, rtol=0, atol=0)


LEGACY_CHECKPOINT = Path(__file__).parent / "fixtures" / "pera_tiny_d92a3ed"


def test_a_checkpoint_saved_before_the_losses_moved_loads_and_computes_the_same():
    """The fixture was saved by main at d92a3ed (the losses still in modeling_pera.py; see fixtures/README.md), with
    the outputs of one training-mode forward: today's code finds every tensor under its key, computes the same losses
    and the same centre, and `AutoModel` gives the same teacher."""
    model, loading_info = PeraForPreTraining.from_pretrained(LEGACY_CHECKPOINT, output_loading_info=True)
    assert not any(loading_info.values()), loading_info  # no missing, unexpected or mismatched key
    expected = torch.load(LEGACY_CHECKPOINT / "expected.pt")
    outputs = model.train()(**expected["inputs"])
    for name, value in expected["outputs"].items():
        torch.testing.assert_close(outputs[name], value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.center, expected["center_after"], rtol=1e-6, atol=1e-6)
    encoder = AutoModel.from_pretrained(LEGACY_CHECKPOINT)
    with torch.no_grad():
        encoder_output = encoder(expected["inputs"]["teacher_global_pixel_values"][0]).last_hidden_state
    torch.testing.assert_close(encoder_output, expected["encoder_output"], rtol=1e-6, atol=1e-6)


def test_automodel_on_a_pretraining_checkpoint_is_the_teacher(tmp_path, caplog):
    from transformers import AutoModel, AutoModelForImageClassification

    model = PeraForPreTraining(tiny_config()).eval()
    with torch.no_grad():
        for parameter in model.student.parameters():
            parameter.add_(1.0)  # the student differs from the teacher
    model.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="transformers"):
        encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder) is PeraModel
    assert not [
        record
        for record in caplog.records
        if "not used" in record.getMessage() or "unexpected" in record.getMessage().lower()
    ]
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, model.pera.state_dict()[name]), name
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=5)
    assert torch.equal(classifier.pera.embeddings.position_embeddings, model.pera.embeddings.position_embeddings)


def test_pretraining_from_an_encoder_starts_both_sides_from_it(tmp_path):
    encoder = PeraModel(tiny_config())
    encoder.save_pretrained(tmp_path)
    model = PeraForPreTraining.from_pretrained(tmp_path)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(model.pera.state_dict()[name], tensor), name
        assert torch.equal(model.student.state_dict()[name], tensor), name


def test_no_random_tensor_is_left_constant(tmp_path):
    model = PeraForPreTraining(tiny_config())
    model.save_pretrained(tmp_path)
    for candidate in (model, PeraForPreTraining.from_pretrained(tmp_path)):
        for name, tensor in candidate.named_parameters():
            if name.endswith(("weight", "weight_v", "token", "position_embeddings")) and "norm" not in name:
                assert tensor.std() > 0, f"{name} is constant"


# ----------------------------------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    config = tiny_config()
    model = PeraModel(config)
    with pytest.raises(ValueError, match=r"4 bands but the model expects 3 \(red, green, blue\)"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.randn(1, 3, 36, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="same number of patches"):
        model(torch.randn(2, 3, 32, 32), bool_masked_pos=torch.tensor([[True] + [False] * 15, [False] * 16]))
    pretraining = PeraForPreTraining(config)
    inputs = crops(config)
    with pytest.raises(ValueError, match="noise must have shape"):
        pretraining(**{**inputs, "global_noise": torch.rand(2, BATCH, 5)})
    with pytest.raises(ValueError, match="global_pixel_values must both have shape"):
        pretraining(**{**inputs, "teacher_global_pixel_values": inputs["teacher_global_pixel_values"][:1]})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_channels": 4, "band_names": ["red"]}, "band_names has 1 entries"),
        ({"num_channels": 2, "wavelengths": [0.49]}, "wavelengths has 1 entries"),
        ({"student_ratio": 0.5, "teacher_ratio": 0.6}, "disjoint"),
        ({"student_ratio": 0.01}, "disjoint"),
        ({"image_size": 30}, "multiple of patch_size"),
        ({"hidden_size": 30}, "multiple of num_attention_heads"),
        ({"mask_token_layer": 4}, "mask_token_layer"),
        ({"position_embedding_interpolation": "nearest"}, "position_embedding_interpolation"),
    ],
)
def test_config_rejects_inconsistent_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**settings)


def test_bool_masked_pos_matches_index_inputs_and_keeps_raster_order():
    config = tiny_config()
    model = PeraModel(config).eval()
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    bool_masked_pos = noise > noise.median(dim=1, keepdim=True).values  # 8 masked per image
    outputs = model(images, bool_masked_pos=bool_masked_pos)
    order = torch.argsort(bool_masked_pos.to(torch.int8), dim=1, stable=True)
    by_index = model(images, visible_patch_index=order[:, :8], masked_patch_index=order[:, 8:])
    for image in range(2):
        for position, patch in enumerate(order[image].tolist()):
            torch.testing.assert_close(
                outputs.last_hidden_state[image, 1 + patch], by_index.last_hidden_state[image, 1 + position]
            )


def test_classifier_mask_token_stays_frozen_after_loading(tmp_path):
    from modeling_pera import PeraForImageClassification

    classifier = PeraForImageClassification(tiny_config(num_labels=4))
    classifier.save_pretrained(tmp_path)
    for model in (classifier, PeraForImageClassification.from_pretrained(tmp_path)):
        assert not model.pera.embeddings.mask_token.requires_grad
        assert model.pera.embeddings.patch_embeddings.projection.weight.requires_grad


def test_full_view_baseline_shows_every_patch_to_both_networks():
    config = tiny_config(full_views=True)
    model = PeraForPreTraining(config).eval()
    inputs = crops(config)
    outputs = model(**inputs)
    num_patches = (config.image_size // config.patch_size) ** 2
    assert outputs.student_patch_index.shape[-1] == outputs.teacher_patch_index.shape[-1] == num_patches
    assert outputs.predicted_pixels.shape[2] == 0 and outputs.pixel_loss == 0
    # no patch is hidden from the teacher any more: editing any one changes its targets
    views = inputs["teacher_global_pixel_values"]
    for patch in (0, num_patches - 1):
        edited = set_patch(views.flatten(0, 1), patch, config.patch_size, 100.0).view_as(views)
        assert not torch.equal(
            model(**{**inputs, "teacher_global_pixel_values": edited}).teacher_entropy, outputs.teacher_entropy
        )


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    from modeling_pera.modeling_pera import PeraDropPath

    drop_path = PeraDropPath(0.25).train()
    hidden_states = torch.ones(4000, 3, 5)
    torch.manual_seed(0)
    output = drop_path(hidden_states)
    per_sample = output.flatten(1)
    # each sample is either dropped (all zeros) or kept and scaled by 1 / keep probability
    assert torch.all((per_sample == 0).all(dim=1) | torch.isclose(per_sample, torch.tensor(1 / 0.75)).all(dim=1))
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert abs(output.mean().item() - 1.0) < 0.05
    assert torch.equal(drop_path.eval()(hidden_states), hidden_states)  # identity at inference
