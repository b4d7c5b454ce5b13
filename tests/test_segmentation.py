"""Dense evaluation and fine-tuning: mIoU metrics, the linear segmentation probe, patch features, `PeraBackbone`, and
transformers' UperNet on it."""

import json
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoBackbone, UperNetConfig, UperNetForSemanticSegmentation

from modeling_pera import PeraBackbone, PeraForPreTraining, PeraImageProcessor, PeraModel
from modeling_pera.evaluation import (
    GID_MTL5_CLASS_NAMES,
    EvaluationArguments,
    SegmentationFolder,
    evaluate_segmentation,
    extract_features,
    load_encoder,
    patch_feature_map,
    read_mask,
    segmentation_confusion_matrix,
    segmentation_probe,
    segmentation_report,
    stratified_split,
)
from modeling_pera.finetuning import upernet_for_pera
from pera_testing import tiny_config


REPO_ROOT = Path(__file__).resolve().parents[1]
PATCH = 8  # pixels per patch side of the tiny PerA


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_iou_and_miou_match_hand_counts():
    labels = torch.tensor([[1, 1, 2], [2, 0, 3]])
    predictions = torch.tensor([[1, 2, 2], [2, 1, 0]])
    confusion = segmentation_confusion_matrix(predictions, labels, num_classes=4, ignore_index=0)
    # labelled pixels (true -> predicted): 1->1, 1->2, 2->2, 2->2, 3->0; the pixel labelled 0 is left out
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[1, 1], expected[1, 2], expected[2, 2], expected[3, 0] = 1, 1, 2, 1
    assert torch.equal(confusion, expected)

    report = segmentation_report(confusion, ["undefined", "a", "b", "c"], ignore_index=0)
    # a: TP 1, FN 1, FP 0 -> 1/2; b: TP 2, FP 1 -> 2/3; c: its only pixel predicted as the ignored class -> 0
    assert report["per_class_iou"] == pytest.approx({"a": 1 / 2, "b": 2 / 3, "c": 0.0})
    assert report["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert report["pixel_accuracy"] == pytest.approx(3 / 5)
    assert report["num_pixels"] == 5
    json.dumps(report)


def test_ignored_pixels_do_not_count_whatever_is_predicted_there():
    labels = torch.tensor([0, 0, 1, 2, 2])
    confusion = segmentation_confusion_matrix(torch.tensor([0, 0, 1, 2, 1]), labels, 3, ignore_index=0)
    assert torch.equal(confusion, segmentation_confusion_matrix(torch.tensor([2, 1, 1, 2, 1]), labels, 3, 0))
    # without an ignored label, the 0 pixels are a class like the others
    counted = segmentation_confusion_matrix(torch.tensor([2, 1, 1, 2, 1]), labels, 3)
    assert counted[0].tolist() == [0, 1, 1] and counted.sum() == 5
    report = segmentation_report(counted, ["zero", "one", "two"])
    assert report["per_class_iou"]["zero"] == 0.0 and report["num_pixels"] == 5


def test_absent_classes_have_no_iou_and_bad_ids_raise():
    confusion = segmentation_confusion_matrix(torch.tensor([1, 1, 2]), torch.tensor([1, 1, 2]), 4, ignore_index=0)
    report = segmentation_report(confusion, ["undefined", "a", "b", "never"], ignore_index=0)
    assert report["per_class_iou"] == {"a": 1.0, "b": 1.0, "never": None}
    assert report["mean_iou"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        segmentation_confusion_matrix(torch.tensor([1, 6]), torch.tensor([1, 2]), 4)
    with pytest.raises(ValueError, match="differ"):
        segmentation_confusion_matrix(torch.tensor([1]), torch.tensor([1, 2]), 4)


# ---------------------------------------------------------------------------------------------------------------------
# Linear segmentation probe
# ---------------------------------------------------------------------------------------------------------------------


def patch_masks(num_images: int, grid: int, seed: int) -> torch.Tensor:
    """Masks of classes 1-3 constant over blocks of 2x2 patches of `PATCH` pixels, with 10 % of the blocks at 0."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(1, 4, (num_images, grid // 2, grid // 2), generator=generator)
    blocks[torch.rand(blocks.shape, generator=generator) < 0.1] = 0
    return blocks.repeat_interleave(2 * PATCH, dim=1).repeat_interleave(2 * PATCH, dim=2).to(torch.uint8)


def features_of(masks: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Patch features `(num_images, dim, grid, grid)`: a random direction per class of the patch, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    class_directions = torch.randn(4, dim, generator=generator)
    patch_classes = masks[:, PATCH // 2 :: PATCH, PATCH // 2 :: PATCH].long()
    features = class_directions[patch_classes].permute(0, 3, 1, 2)
    return features + 0.3 * torch.randn(features.shape, generator=generator)


def test_probe_learns_patch_features_that_encode_the_class():
    masks = patch_masks(num_images=48, grid=4, seed=0)
    features = features_of(masks, dim=16, seed=1)
    predictions = segmentation_probe(features[:32], masks[:32], features[32:], num_classes=4, epochs=30, seed=0)
    assert predictions.shape == masks[32:].shape and predictions.dtype == torch.uint8
    assert not (predictions == 0).any()  # the ignored class is never predicted
    report = segmentation_report(segmentation_confusion_matrix(predictions, masks[32:], 4, 0), "0123", 0)
    assert report["mean_iou"] > 0.9


def test_probe_is_near_chance_on_features_of_other_images():
    masks = patch_masks(num_images=48, grid=4, seed=0)
    features = features_of(masks, dim=16, seed=1)
    shuffled = features[torch.randperm(48, generator=torch.Generator().manual_seed(2))]
    predictions = segmentation_probe(shuffled[:32], masks[:32], shuffled[32:], num_classes=4, epochs=30, seed=0)
    report = segmentation_report(segmentation_confusion_matrix(predictions, masks[32:], 4, 0), "0123", 0)
    # 3 balanced classes: a guess gives an IoU of about 1/5 per class
    assert report["mean_iou"] < 0.35


def test_probe_is_deterministic():
    masks = patch_masks(num_images=12, grid=4, seed=3)
    features = features_of(masks, dim=8, seed=4)
    first = segmentation_probe(features[:8], masks[:8], features[8:], num_classes=4, epochs=3, seed=5)
    assert torch.equal(first, segmentation_probe(features[:8], masks[:8], features[8:], 4, epochs=3, seed=5))


# ---------------------------------------------------------------------------------------------------------------------
# Patch features and data
# ---------------------------------------------------------------------------------------------------------------------


def test_patch_feature_map_drops_prefix_tokens_and_keeps_raster_order():
    rows, columns, dim = 2, 3, 4
    patch_tokens = torch.arange(rows * columns).float()[None, :, None].expand(1, -1, dim)
    outputs = SimpleNamespace(last_hidden_state=torch.cat((torch.full((1, 2, dim), -1.0), patch_tokens), dim=1))
    feature_map = patch_feature_map(outputs, (rows, columns))
    assert feature_map.shape == (1, dim, rows, columns)
    assert feature_map[0, 0].tolist() == [[0, 1, 2], [3, 4, 5]]
    convolutional = SimpleNamespace(last_hidden_state=torch.randn(1, dim, 5, 5))
    assert patch_feature_map(convolutional, None) is convolutional.last_hidden_state
    with pytest.raises(ValueError, match="patch grid"):
        patch_feature_map(outputs, (3, 3))


def write_segmentation_folder(root: Path, per_scene: int = 4, size: int = 32) -> Path:
    """Images whose colour follows their mask (classes 0-3 in 8x8 blocks), in two scene folders; masks in PNG."""
    rng = np.random.default_rng(0)
    colours = np.array([(0, 0, 0), (220, 40, 40), (40, 220, 40), (40, 40, 220)])
    for scene in ("fields", "town"):
        (root / "image" / scene).mkdir(parents=True)
        (root / "mask" / scene).mkdir(parents=True)
        for index in range(per_scene):
            mask = rng.integers(0, 4, (size // PATCH, size // PATCH)).repeat(PATCH, 0).repeat(PATCH, 1)
            pixels = np.clip(colours[mask] + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "image" / scene / f"{index}.jpg")
            Image.fromarray(mask.astype(np.uint8)).save(root / "mask" / scene / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def segmentation_folder(tmp_path_factory) -> Path:
    return write_segmentation_folder(tmp_path_factory.mktemp("segmentation"))


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A saved tiny PerA encoder (4 blocks, 32 px) and its processor."""
    directory = tmp_path_factory.mktemp("tiny_encoder")
    torch.manual_seed(0)
    PeraModel(tiny_config(num_hidden_layers=4)).save_pretrained(directory)
    PeraImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_segmentation_folder_pairs_images_and_masks(segmentation_folder, tmp_path):
    dataset = SegmentationFolder.from_directory(segmentation_folder)
    assert len(dataset) == 8 and dataset.scene_names == ["fields", "town"]
    assert all(
        image.stem == mask.stem and image.parent.name == mask.parent.name
        for image, mask in zip(dataset.image_paths, dataset.mask_paths)
    )
    (segmentation_folder / "mask" / "town" / "0.png").rename(tmp_path / "0.png")
    try:
        with pytest.raises(ValueError, match="no mask"):
            SegmentationFolder.from_directory(segmentation_folder)
    finally:
        (tmp_path / "0.png").rename(segmentation_folder / "mask" / "town" / "0.png")


def test_read_mask_keeps_palette_indices(tmp_path):
    values = np.array([[0, 1], [2, 5]], dtype=np.uint8)
    palette_image = Image.fromarray(values, mode="P")
    palette_image.putpalette([255, 255, 255, 200, 0, 0, 0, 200, 0, 0, 0, 200, 9, 9, 9, 7, 7, 7])
    palette_image.save(tmp_path / "palette.png")
    Image.fromarray(values).save(tmp_path / "gray.png")
    assert read_mask(tmp_path / "palette.png").tolist() == values.tolist()
    assert read_mask(tmp_path / "gray.png").tolist() == values.tolist()
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="one band"):
        read_mask(tmp_path / "rgb.png")


def test_extract_patch_features_are_the_normalised_patch_tokens(tiny_encoder, segmentation_folder):
    paths = SegmentationFolder.from_directory(segmentation_folder).image_paths[:3]
    model, processor = load_encoder(tiny_encoder)
    features = extract_features(model, processor, paths, batch_size=2, pooling="patches", progress_bar=False)
    assert features.shape == (3, 32, 4, 4)
    pixel_values = processor([np.asarray(Image.open(path)) for path in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        patch_tokens = model(pixel_values).last_hidden_state[:, 1:]
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), patch_tokens, rtol=1e-4, atol=1e-4)


def test_evaluate_segmentation_end_to_end(tiny_encoder, segmentation_folder):
    arguments = EvaluationArguments(
        str(tiny_encoder),
        segmentation_dir=str(segmentation_folder),
        segmentation_class_names=["none", "red", "green", "blue"],
        segmentation_epochs=2,
        progress_bar=False,
    )
    results = evaluate_segmentation(arguments)
    assert results["num_train"] == 4 and results["num_test"] == 4
    assert results["feature_map_size"] == [32, 4, 4] and results["mask_size"] == [32, 32]
    assert set(results["per_class_iou"]) == {"red", "green", "blue"}
    assert 0 <= results["mean_iou"] <= 1
    # every test pixel not labelled 0 is counted
    dataset = SegmentationFolder.from_directory(segmentation_folder)
    _, test_index = stratified_split(dataset.scene_labels, seed=0)
    test_masks = [read_mask(dataset.mask_paths[index]) for index in test_index]
    assert results["num_pixels"] == sum(int((mask != 0).sum()) for mask in test_masks)
    json.dumps(results)


def test_run_eval_segmentation_only(tiny_encoder, segmentation_folder, tmp_path, monkeypatch, capsys):
    output_json = tmp_path / "results.json"
    # without --data_dir, only the segmentation probe runs (UC Merced beside the repository is not used)
    arguments = ["--model_name_or_path", str(tiny_encoder), "--device", "cpu"]
    arguments += ["--segmentation_dir", str(segmentation_folder), "--segmentation_class_names", "none", "r", "g", "b"]
    monkeypatch.setattr(sys, "argv", ["run_eval.py", *arguments, "--output_json", str(output_json)])
    runpy.run_path(str(REPO_ROOT / "examples" / "run_eval.py"), run_name="__main__")
    assert "mIoU" in capsys.readouterr().out
    results = json.loads(output_json.read_text())
    assert set(results) == {"segmentation_probe"} and results["segmentation_probe"]["num_test"] == 4


def test_segmentation_probe_on_real_gid_masks(shared_data, tiny_encoder, tmp_path):
    # 3 images of each GID-MTL5 scene class, linked into a small folder of the same layout
    source = shared_data / "gid_mtl" / "GID-MTL5"
    for scene_folder in sorted((source / "image").iterdir()):
        for image_path in sorted(scene_folder.glob("*.jpg"))[:3]:
            mask_path = source / "mask" / scene_folder.name / f"{image_path.stem}.png"
            for kind, path in (("image", image_path), ("mask", mask_path)):
                (tmp_path / kind / scene_folder.name).mkdir(parents=True, exist_ok=True)
                (tmp_path / kind / scene_folder.name / path.name).symlink_to(path)
    arguments = EvaluationArguments(
        str(tiny_encoder), segmentation_dir=str(tmp_path), image_size=64, segmentation_epochs=2, progress_bar=False
    )
    results = evaluate_segmentation(arguments)
    assert results["num_images"] == 15 and results["mask_size"] == [224, 224]
    assert results["feature_map_size"] == [32, 8, 8]
    assert set(results["per_class_iou"]) == set(GID_MTL5_CLASS_NAMES[1:])
    assert 0 < results["num_pixels"] <= results["num_test"] * 224 * 224


# ---------------------------------------------------------------------------------------------------------------------
# PeraBackbone and UperNet
# ---------------------------------------------------------------------------------------------------------------------


def test_backbone_feature_maps_are_the_normalised_patch_tokens_of_each_stage():
    config = tiny_config(num_hidden_layers=3, out_features=["stem", "stage2", "stage3"])
    backbone = PeraBackbone(config).eval()
    assert backbone.channels == [32, 32, 32] and backbone.out_indices == [0, 2, 3]
    pixel_values = torch.randn(2, 3, 24, 40)  # 3 x 5 patches
    with torch.no_grad():
        outputs = backbone(pixel_values, output_hidden_states=True)
        encoder_outputs = backbone.pera(pixel_values, output_hidden_states=True)
    assert len(outputs.feature_maps) == 3 and len(outputs.hidden_states) == 4
    for feature_map, stage in zip(outputs.feature_maps, (0, 2, 3)):
        assert feature_map.shape == (2, 32, 3, 5)
        patch_tokens = backbone.pera.layernorm(encoder_outputs.hidden_states[stage])[:, 1:]
        torch.testing.assert_close(feature_map.flatten(2).transpose(1, 2), patch_tokens)
    # the last stage is the encoder's output
    torch.testing.assert_close(
        outputs.feature_maps[-1].flatten(2).transpose(1, 2), encoder_outputs.last_hidden_state[:, 1:]
    )
    assert backbone(pixel_values).hidden_states is None


def test_backbone_loads_the_teacher_of_a_pretraining_checkpoint(tmp_path):
    pretraining = PeraForPreTraining(tiny_config())
    with torch.no_grad():
        for parameter in pretraining.student.parameters():
            parameter.add_(1.0)  # the student differs from the teacher
    pretraining.save_pretrained(tmp_path)
    backbone = PeraBackbone.from_pretrained(tmp_path, out_indices=[1, 2])
    assert backbone.out_features == ["stage1", "stage2"]
    for name, tensor in pretraining.pera.state_dict().items():
        assert torch.equal(backbone.pera.state_dict()[name], tensor), name
    assert not backbone.pera.embeddings.mask_token.requires_grad
    assert type(AutoBackbone.from_config(tiny_config())) is PeraBackbone


def test_upernet_trains_on_a_pera_backbone_and_round_trips(tmp_path):
    torch.manual_seed(0)
    config = UperNetConfig(
        backbone_config=tiny_config(num_hidden_layers=4, out_indices=[1, 2, 3, 4]),
        num_labels=4,
        loss_ignore_index=0,
        hidden_size=32,
        auxiliary_channels=16,
    )
    model = UperNetForSemanticSegmentation(config)
    assert type(model.backbone) is PeraBackbone
    masks = patch_masks(num_images=8, grid=4, seed=0).long()
    colours = torch.tensor([[0.0, 0.0, 0.0], [2.0, -1.0, -1.0], [-1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])
    pixel_values = colours[masks].permute(0, 3, 1, 2) + 0.1 * torch.randn(8, 3, 32, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        outputs = model(pixel_values, labels=masks)
        optimizer.zero_grad()
        outputs.loss.backward()
        optimizer.step()
        losses.append(outputs.loss.item())
    assert outputs.logits.shape == (8, 4, 32, 32)
    assert losses[-1] < 0.5 * losses[0]

    model.eval().save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).logits, model(pixel_values).logits)


def test_upernet_for_pera_takes_the_encoder_weights(tiny_encoder):
    model = upernet_for_pera(tiny_encoder, ["none", "a", "b", "c"], ignore_index=0, decoder_hidden_size=32)
    encoder = PeraModel.from_pretrained(tiny_encoder)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(model.backbone.pera.state_dict()[name], tensor), name
    assert model.backbone.out_indices == [1, 2, 3, 4] and model.auxiliary_head is not None
    assert model.config.id2label[1] == "a" and model.config.loss_ignore_index == 0


def test_run_segmentation_script(tiny_encoder, segmentation_folder, tmp_path, monkeypatch):
    arguments = ["--model_name_or_path", str(tiny_encoder), "--train_dir", str(segmentation_folder)]
    arguments += ["--class_names", "none", "r", "g", "b", "--decoder_hidden_size", "32", "--layer_decay", "0.75"]
    arguments += ["--output_dir", str(tmp_path), "--max_steps", "4", "--per_device_train_batch_size", "2"]
    arguments += ["--train_val_split", "0.5", "--save_strategy", "no", "--report_to", "none", "--use_cpu"]
    monkeypatch.setattr(sys, "argv", ["run_segmentation.py", *arguments])
    runpy.run_path(str(REPO_ROOT / "examples" / "run_segmentation.py"), run_name="__main__")
    metrics = json.loads((tmp_path / "all_results.json").read_text())
    assert {"eval_mean_iou", "eval_pixel_accuracy", "eval_loss", "train_loss"} <= set(metrics)
    assert 0 <= metrics["eval_mean_iou"] <= 1
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path)
    assert reloaded.config.id2label[3] == "b"
