"""Conversion of reference PerA checkpoints: every tensor lands in its place, bad key sets and unsafe pickles are
refused, and the converted encoder reproduces a forward pass written here from the reference layout (docs of the
method: plain pre-norm ViT, fused qkv, old DINO position-embedding interpolation)."""

import argparse
import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modeling_pera import PeraForPreTraining, PeraModel
from modeling_pera.conversion import convert_pera_checkpoint, load_reference_state_dict, reference_to_pera
from modeling_pera.image_processing_pera import PERA_RGB_MEAN, PERA_RGB_STD
from pera_testing import HUB_FILES


REPO_ROOT = Path(__file__).resolve().parents[1]
# A tiny reference model with the real patch size and position table (448 px / 16 = 28 x 28 patches + CLS).
TINY = {
    "hidden_size": 32,
    "depth": 2,
    "num_heads": 4,
    "num_channels": 3,
    "patch_size": 16,
    "grid_size": 28,
    "head_hidden_size": 48,
    "bottleneck_size": 16,
    "num_prototypes": 64,
}


def reference_state_dict(
    hidden_size, depth, num_channels, patch_size, grid_size, head_hidden_size, bottleneck_size, num_prototypes,
    mlp_size=None, device="cpu", seed=0, **_,
):  # fmt: skip
    """A state dict in the layout of the reference implementation, with random values (shapes only on "meta")."""
    generator = torch.Generator().manual_seed(seed)
    mlp_size = mlp_size or 4 * hidden_size

    def tensor(*shape, mean=0.0, std=0.1):
        if device == "meta":
            return torch.empty(shape, device="meta")
        return mean + std * torch.randn(shape, generator=generator)

    def linear(prefix, out_features, in_features, bias=True):
        weights = {f"{prefix}.weight": tensor(out_features, in_features, std=in_features**-0.5)}
        if bias:
            weights[f"{prefix}.bias"] = tensor(out_features)
        return weights

    def norm(prefix):
        return {f"{prefix}.weight": tensor(hidden_size, mean=1.0), f"{prefix}.bias": tensor(hidden_size)}

    def head(prefix, mlp_prefix, num_outputs):
        weights = {}
        weights.update(linear(f"{mlp_prefix}.0", head_hidden_size, hidden_size))
        weights.update(linear(f"{mlp_prefix}.2", head_hidden_size, head_hidden_size))
        weights.update(linear(f"{mlp_prefix}.4", bottleneck_size, head_hidden_size))
        weights[f"{prefix}.last_layer.weight_v"] = tensor(num_outputs, bottleneck_size)
        weights[f"{prefix}.last_layer.weight_g"] = tensor(num_outputs, 1, mean=1.0)
        return weights

    state_dict = {"s_mask_token": tensor(1, 1, hidden_size)}
    for side in ("student", "teacher"):
        backbone = f"{side}.backbone"
        state_dict[f"{backbone}.cls_token"] = tensor(1, 1, hidden_size)
        # large position embeddings, so that the interpolation rule visibly matters
        state_dict[f"{backbone}.pos_embed"] = tensor(1, grid_size**2 + 1, hidden_size, std=1.0)
        state_dict[f"{backbone}.patch_embed.proj.weight"] = tensor(
            hidden_size, num_channels, patch_size, patch_size, std=(num_channels * patch_size**2) ** -0.5
        )
        state_dict[f"{backbone}.patch_embed.proj.bias"] = tensor(hidden_size)
        for index in range(depth):
            block = f"{backbone}.blocks.{index}"
            state_dict.update(norm(f"{block}.norm1"))
            state_dict.update(linear(f"{block}.attn.qkv", 3 * hidden_size, hidden_size))
            state_dict.update(linear(f"{block}.attn.proj", hidden_size, hidden_size))
            state_dict.update(norm(f"{block}.norm2"))
            state_dict.update(linear(f"{block}.mlp.fc1", mlp_size, hidden_size))
            state_dict.update(linear(f"{block}.mlp.fc2", hidden_size, mlp_size))
        state_dict.update(norm(f"{backbone}.norm"))
        state_dict.update(head(f"{side}.cls_head", f"{side}.cls_head.mlp", num_prototypes))
    state_dict.update(head("pred_head", "pred_head.mlp0.mlp", patch_size**2 * num_channels))
    return state_dict


def reference_position_embeddings(pos_embed, grid_size):
    """The old DINO rule: bicubic resampling of the patch positions with scale factor (g + 0.1) / native grid."""
    native_grid = math.isqrt(pos_embed.shape[1] - 1)
    if grid_size == native_grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    patch_pos = pos_embed[:, 1:].reshape(1, native_grid, native_grid, dim).permute(0, 3, 1, 2)
    scale = (grid_size + 0.1) / native_grid
    patch_pos = F.interpolate(patch_pos, scale_factor=(scale, scale), mode="bicubic")
    assert patch_pos.shape[-2:] == (grid_size, grid_size)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, dim)
    return torch.cat((pos_embed[:, :1], patch_pos), dim=1)


def reference_backbone_forward(state_dict, prefix, pixel_values, num_heads, eps=1e-6):
    """The reference ViT on its own key names: patch conv, CLS + positions, pre-norm blocks with fused qkv, norm."""

    def weights(name):
        return state_dict[f"{prefix}.{name}.weight"], state_dict[f"{prefix}.{name}.bias"]

    patch_size = state_dict[f"{prefix}.patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(pixel_values, *weights("patch_embed.proj"), stride=patch_size).flatten(2).transpose(1, 2)
    batch_size, _, dim = tokens.shape
    cls_token = state_dict[f"{prefix}.cls_token"].expand(batch_size, -1, -1)
    tokens = torch.cat((cls_token, tokens), dim=1)
    grid_size = pixel_values.shape[-1] // patch_size
    tokens = tokens + reference_position_embeddings(state_dict[f"{prefix}.pos_embed"], grid_size)
    head_dim = dim // num_heads
    depth = len({key.split(".")[3] for key in state_dict if key.startswith(f"{prefix}.blocks.")})
    for index in range(depth):
        block = f"blocks.{index}"
        hidden = F.layer_norm(tokens, (dim,), *weights(f"{block}.norm1"), eps=eps)
        qkv = F.linear(hidden, *weights(f"{block}.attn.qkv"))
        query, key, value = qkv.reshape(batch_size, -1, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(query @ key.transpose(-2, -1) * head_dim**-0.5, dim=-1)
        attended = (attention @ value).transpose(1, 2).reshape(batch_size, -1, dim)
        tokens = tokens + F.linear(attended, *weights(f"{block}.attn.proj"))
        hidden = F.layer_norm(tokens, (dim,), *weights(f"{block}.norm2"), eps=eps)
        hidden = F.gelu(F.linear(hidden, *weights(f"{block}.mlp.fc1")))
        tokens = tokens + F.linear(hidden, *weights(f"{block}.mlp.fc2"))
    return F.layer_norm(tokens, (dim,), *weights("norm"), eps=eps)


def reference_head_forward(state_dict, prefix, mlp_prefix, features):
    """MLP with GELU, L2 normalisation, weight-normalised linear layer (row i = g_i * v_i / ||v_i||)."""
    hidden = features
    for index in (0, 2, 4):
        hidden = F.linear(hidden, state_dict[f"{mlp_prefix}.{index}.weight"], state_dict[f"{mlp_prefix}.{index}.bias"])
        if index != 4:
            hidden = F.gelu(hidden)
    hidden = F.normalize(hidden, dim=-1)
    weight_v = state_dict[f"{prefix}.last_layer.weight_v"]
    weight = state_dict[f"{prefix}.last_layer.weight_g"] * weight_v / weight_v.norm(dim=1, keepdim=True)
    return F.linear(hidden, weight)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny reference checkpoint (with optimizer state, as the reference saves it) and its conversion."""
    directory = tmp_path_factory.mktemp("conversion")
    state_dict = reference_state_dict(**TINY)
    checkpoint_path = directory / "reference.pth"
    optimizer_state = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
    torch.save({"model": state_dict, "optimizer": optimizer_state, "iteration": 1250}, checkpoint_path)
    output_dir = directory / "converted"
    convert_pera_checkpoint(checkpoint_path, output_dir, num_attention_heads=TINY["num_heads"])
    return state_dict, checkpoint_path, output_dir


def test_every_tensor_lands_where_it_should(converted):
    reference, _, output_dir = converted
    model = PeraForPreTraining.from_pretrained(output_dir)
    encoder = PeraModel.from_pretrained(output_dir / "encoder")
    ours = model.state_dict()
    dim = TINY["hidden_size"]
    expected = {}
    for side, target in (("student", "student"), ("teacher", "pera")):
        backbone = f"{side}.backbone"
        expected[f"{target}.embeddings.cls_token"] = reference[f"{backbone}.cls_token"]
        expected[f"{target}.embeddings.position_embeddings"] = reference[f"{backbone}.pos_embed"]
        for parameter in ("weight", "bias"):
            expected[f"{target}.embeddings.patch_embeddings.projection.{parameter}"] = reference[
                f"{backbone}.patch_embed.proj.{parameter}"
            ]
            expected[f"{target}.layernorm.{parameter}"] = reference[f"{backbone}.norm.{parameter}"]
            for index in range(TINY["depth"]):
                block, layer = f"{backbone}.blocks.{index}", f"{target}.layers.{index}"
                qkv = reference[f"{block}.attn.qkv.{parameter}"]
                expected[f"{layer}.attention.q_proj.{parameter}"] = qkv[:dim]
                expected[f"{layer}.attention.k_proj.{parameter}"] = qkv[dim : 2 * dim]
                expected[f"{layer}.attention.v_proj.{parameter}"] = qkv[2 * dim :]
                expected[f"{layer}.attention.o_proj.{parameter}"] = reference[f"{block}.attn.proj.{parameter}"]
                for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                    expected[f"{layer}.{name}.{parameter}"] = reference[f"{block}.{name}.{parameter}"]
        expected[f"{target}.embeddings.mask_token"] = reference["s_mask_token"]
    for source, mlp_source, target in (
        ("student.cls_head", "student.cls_head.mlp", "student_dino_head"),
        ("teacher.cls_head", "teacher.cls_head.mlp", "teacher_dino_head"),
        ("pred_head", "pred_head.mlp0.mlp", "pixel_head"),
    ):
        for index in (0, 2, 4):
            for parameter in ("weight", "bias"):
                expected[f"{target}.mlp.{index}.{parameter}"] = reference[f"{mlp_source}.{index}.{parameter}"]
        for parameter in ("weight_g", "weight_v"):
            expected[f"{target}.last_layer.{parameter}"] = reference[f"{source}.last_layer.{parameter}"]
    expected["center"] = torch.zeros(1, TINY["num_prototypes"])

    assert set(ours) == set(expected)  # no tensor of the model is left at its random initialisation
    for name, value in expected.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(value, ours[f"pera.{name}"], rtol=0, atol=0, msg=name)


def test_config_and_processor_of_the_converted_folder(converted):
    _, _, output_dir = converted
    for folder in (output_dir, output_dir / "encoder"):
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "pera"
        assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 2 and config["num_attention_heads"] == 4
        assert config["intermediate_size"] == 128 and config["patch_size"] == 16 and config["num_channels"] == 3
        assert config["image_size"] == 448 and config["num_prototypes"] == 64
        assert config["head_hidden_size"] == 48 and config["head_bottleneck_size"] == 16
        assert config["position_embedding_interpolation"] == "reference"
        assert config["band_names"] == ["red", "green", "blue"]
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        assert processor["image_mean"] == pytest.approx(PERA_RGB_MEAN)
        assert processor["image_std"] == pytest.approx(PERA_RGB_STD)
        assert processor["size"] == {"height": 448, "width": 448}
        for name in (*HUB_FILES, "model.safetensors"):
            assert (folder / name).is_file(), name


@pytest.mark.parametrize("image_size", [448, 96])
def test_converted_encoders_reproduce_the_reference_forward(converted, image_size):
    reference, _, output_dir = converted
    pixel_values = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(image_size))
    encoder = PeraModel.from_pretrained(output_dir / "encoder").eval()
    model = PeraForPreTraining.from_pretrained(output_dir).eval()
    with torch.no_grad():
        for prefix, ours in (("teacher.backbone", encoder), ("student.backbone", model.student)):
            expected = reference_backbone_forward(reference, prefix, pixel_values, TINY["num_heads"])
            output = ours(pixel_values).last_hidden_state
            torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4, msg=prefix)

        if image_size != 448:
            # the test can tell the reference rule from transformers' size-based rule at other sizes
            encoder.config.position_embedding_interpolation = "size"
            other_rule = encoder(pixel_values).last_hidden_state
            expected = reference_backbone_forward(reference, "teacher.backbone", pixel_values, TINY["num_heads"])
            assert (other_rule - expected).abs().max() > 1e-2


def test_converted_heads_reproduce_the_reference_heads(converted):
    reference, _, output_dir = converted
    model = PeraForPreTraining.from_pretrained(output_dir).eval()
    features = torch.randn(5, TINY["hidden_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for prefix, mlp_prefix, head in (
            ("student.cls_head", "student.cls_head.mlp", model.student_dino_head),
            ("teacher.cls_head", "teacher.cls_head.mlp", model.teacher_dino_head),
            ("pred_head", "pred_head.mlp0.mlp", model.pixel_head),
        ):
            expected = reference_head_forward(reference, prefix, mlp_prefix, features)
            torch.testing.assert_close(head(features), expected, rtol=1e-4, atol=1e-5, msg=prefix)


def test_unknown_and_missing_keys_are_listed(tmp_path):
    state_dict = reference_state_dict(**TINY)
    del state_dict["teacher.backbone.blocks.1.attn.qkv.bias"]
    del state_dict["pred_head.last_layer.weight_g"]
    state_dict["student.backbone.register_tokens"] = torch.zeros(1, 4, TINY["hidden_size"])
    torch.save({"model": state_dict}, tmp_path / "reference.pth")
    with pytest.raises(ValueError) as error:
        convert_pera_checkpoint(tmp_path / "reference.pth", tmp_path / "out", num_attention_heads=TINY["num_heads"])
    message = str(error.value)
    assert "1 unknown key(s):\n  student.backbone.register_tokens" in message
    assert "2 missing key(s):\n  pred_head.last_layer.weight_g\n  teacher.backbone.blocks.1.attn.qkv.bias" in message
    assert not (tmp_path / "out").exists()


def test_a_missing_block_is_reported():
    state_dict = reference_state_dict(**{**TINY, "depth": 3})
    for key in [key for key in state_dict if key.startswith("student.backbone.blocks.1.")]:
        del state_dict[key]
    with pytest.raises(ValueError, match=r"missing key\(s\):(\n  student\.backbone\.blocks\.1\.\S+){10}\n"):
        reference_to_pera(state_dict, num_attention_heads=TINY["num_heads"])


def test_unknown_width_asks_for_the_head_count():
    with pytest.raises(ValueError, match="--num_attention_heads"):
        reference_to_pera(reference_state_dict(**TINY))


def test_a_pickle_with_other_objects_needs_trust_pickle(tmp_path, monkeypatch, capsys):
    checkpoint_path = tmp_path / "reference.pth"
    torch.save({"model": reference_state_dict(**TINY), "args": argparse.Namespace(lr=1e-3)}, checkpoint_path)
    with pytest.raises(ValueError, match="--trust-pickle"):
        load_reference_state_dict(checkpoint_path)

    script = REPO_ROOT / "examples" / "convert_pera_checkpoint.py"
    arguments = ["--checkpoint_path", str(checkpoint_path), "--output_dir", str(tmp_path / "out")]
    arguments += ["--num_attention_heads", "4"]
    monkeypatch.setattr(sys, "argv", [str(script), *arguments])
    with pytest.raises(SystemExit) as exit_info:  # the script prints the user error as one line
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 1 and "--trust-pickle" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", [str(script), *arguments, "--trust-pickle"])
    with pytest.warns(UserWarning, match="executes any code"):
        runpy.run_path(str(script), run_name="__main__")
    assert (tmp_path / "out" / "encoder" / "model.safetensors").is_file()


def test_a_checkpoint_that_is_no_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a reference PerA checkpoint"):
        load_reference_state_dict(tmp_path / "list.pth")


@pytest.mark.parametrize(
    "size, depth, num_heads, mlp_size, backbone_parameters",
    [("vit-b16", 12, 12, 3072, (85e6, 87e6)), ("vit-g16-1024", 40, 16, 4096, (500e6, 510e6))],
)
def test_released_sizes_convert_with_the_right_shapes(size, depth, num_heads, mlp_size, backbone_parameters):
    """The reference shapes of ViT-B/16 and ViT-G/16-1024 (131072 prototypes), on the meta device: no memory used."""
    hidden_size = {"vit-b16": 768, "vit-g16-1024": 1024}[size]
    state_dict = reference_state_dict(
        hidden_size=hidden_size, depth=depth, num_channels=3, patch_size=16, grid_size=28, head_hidden_size=2048,
        bottleneck_size=384, num_prototypes=131072, mlp_size=mlp_size, device="meta",
    )  # fmt: skip
    model = reference_to_pera(state_dict)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers) == (hidden_size, depth)
    assert config.num_attention_heads == num_heads
    assert (config.intermediate_size, config.image_size, config.patch_size) == (mlp_size, 448, 16)
    assert config.num_prototypes == 131072 and config.mask_token_layer == depth // 2
    assert model.pera.layers[depth - 1].attention.q_proj.weight.shape == (hidden_size, hidden_size)
    assert model.teacher_dino_head.last_layer.weight_v.shape == (131072, 384)
    assert model.pixel_head.last_layer.weight_g.shape == (768, 1)
    low, high = backbone_parameters
    assert low < sum(parameter.numel() for parameter in model.pera.parameters()) < high
