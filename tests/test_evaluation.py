"""Frozen-encoder evaluation: weighted kNN, linear probe, stratified split, metrics, feature extraction and caching."""

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTImageProcessor,
    ViTMAEConfig,
    ViTMAEModel,
    ViTModel,
)

from modeling_pera import PeraImageProcessor, PeraModel
from modeling_pera.evaluation import (
    EvaluationArguments,
    ImageFolder,
    classification_report,
    evaluate_encoder,
    extract_features,
    format_comparison,
    knn_classify,
    linear_probe,
    load_encoder,
    preprocess_image_file,
    stratified_split,
)
from pera_testing import tiny_config


REPO_ROOT = Path(__file__).resolve().parents[1]
# Real images per UC Merced class used in the feature-extraction tests: enough to batch, few enough to stay fast.
UCMERCED_IMAGES_PER_CLASS = 2
UCMERCED_CLASSES = ("agricultural", "beach", "forest")


def clusters(
    num_classes: int, per_class: int, dim: int, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around random unit-norm centres; `spread` is the noise standard deviation per coordinate."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def shuffled(labels: torch.Tensor, seed: int) -> torch.Tensor:
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item()


# ---------------------------------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------------------------------


def test_knn_is_perfect_on_separable_clusters():
    train_features, train_labels = clusters(num_classes=5, per_class=30, dim=16, spread=0.05, seed=0)
    test_features, test_labels = clusters(num_classes=5, per_class=30, dim=16, spread=0.05, seed=0)
    test_features = test_features + 0.05 * torch.randn(test_features.shape, generator=torch.Generator().manual_seed(1))
    predictions = knn_classify(train_features, train_labels, test_features, num_classes=5, k=20)
    assert predictions.dtype == torch.long and predictions.shape == test_labels.shape
    assert accuracy(predictions, test_labels) == 1.0


def test_knn_is_at_chance_on_shuffled_labels():
    # 10 classes: chance is 10 %; the standard deviation of the accuracy over 1000 test samples is about 1 %.
    features, labels = clusters(num_classes=10, per_class=200, dim=32, spread=0.05, seed=0)
    train_index, test_index = stratified_split(labels, seed=0)
    labels = shuffled(labels, seed=0)
    predictions = knn_classify(features[train_index], labels[train_index], features[test_index], num_classes=10)
    assert abs(accuracy(predictions, labels[test_index]) - 0.1) < 0.05


def test_knn_temperature_weights_the_votes():
    # One training sample of class 0 points exactly at the test sample (cosine 1); two of class 1 are at cosine 0.6.
    # A majority vote of the 3 neighbours picks class 1; DINO's exp(similarity / 0.07) weights pick class 0.
    train_features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    train_labels = torch.tensor([0, 1, 1, 2])
    test_features = torch.tensor([[2.0, 0.0]])  # the norm does not matter
    weighted = knn_classify(train_features, train_labels, test_features, num_classes=3, k=3, temperature=0.07)
    majority = knn_classify(train_features, train_labels, test_features, num_classes=3, k=3, temperature=math.inf)
    assert weighted.tolist() == [0]
    assert majority.tolist() == [1]
    # Very low temperatures would overflow exp() without the per-row shift.
    assert knn_classify(train_features, train_labels, test_features, 3, k=3, temperature=1e-4).tolist() == [0]


def test_knn_chunking_and_large_k_do_not_change_predictions():
    train_features, train_labels = clusters(num_classes=4, per_class=25, dim=8, spread=0.5, seed=2)
    test_features, _ = clusters(num_classes=4, per_class=25, dim=8, spread=0.5, seed=3)
    whole = knn_classify(train_features, train_labels, test_features, num_classes=4, k=10)
    chunked = knn_classify(train_features, train_labels, test_features, num_classes=4, k=10, chunk_size=7)
    assert torch.equal(whole, chunked)
    # k larger than the training set uses every training sample
    everything = knn_classify(train_features, train_labels, test_features, num_classes=4, k=1000)
    assert torch.equal(everything, knn_classify(train_features, train_labels, test_features, 4, k=100))


# ---------------------------------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------------------------------


def test_linear_probe_is_perfect_on_separable_data():
    train_features, train_labels = clusters(num_classes=4, per_class=40, dim=12, spread=0.1, seed=0)
    test_features, test_labels = clusters(num_classes=4, per_class=40, dim=12, spread=0.1, seed=0)
    test_features = test_features + 0.05 * torch.randn(test_features.shape, generator=torch.Generator().manual_seed(1))
    predictions, hyperparameters = linear_probe(train_features, train_labels, test_features, num_classes=4)
    assert accuracy(predictions, test_labels) == 1.0
    assert hyperparameters["weight_decay"] in hyperparameters["validation_accuracy"]
    assert hyperparameters["validation_accuracy"][hyperparameters["weight_decay"]] == 1.0


def test_linear_probe_is_at_chance_on_shuffled_labels():
    # 6 classes: chance is 16.7 %; the standard deviation of the accuracy over 600 test samples is about 1.5 %.
    features, labels = clusters(num_classes=6, per_class=200, dim=16, spread=0.3, seed=0)
    train_index, test_index = stratified_split(labels, seed=0)
    labels = shuffled(labels, seed=0)
    predictions, _ = linear_probe(features[train_index], labels[train_index], features[test_index], num_classes=6)
    assert abs(accuracy(predictions, labels[test_index]) - 1 / 6) < 0.07


def test_linear_probe_is_deterministic():
    features, labels = clusters(num_classes=3, per_class=30, dim=8, spread=0.8, seed=4)
    first = linear_probe(features[:60], labels[:60], features[60:], num_classes=3, seed=1)
    second = linear_probe(features[:60], labels[:60], features[60:], num_classes=3, seed=1)
    assert torch.equal(first[0], second[0]) and first[1] == second[1]


# ---------------------------------------------------------------------------------------------------------------------
# Split and metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_stratified_split_is_deterministic_disjoint_and_keeps_every_class():
    labels = [0] * 10 + [1] * 7 + [2] * 3 + [3] * 2
    train, test = stratified_split(labels, train_fraction=0.5, seed=0)
    assert (train, test) == stratified_split(labels, train_fraction=0.5, seed=0)
    assert (train, test) != stratified_split(labels, train_fraction=0.5, seed=1)
    assert not set(train) & set(test) and sorted(train + test) == list(range(len(labels)))
    assert train == sorted(train) and test == sorted(test)
    labels = np.array(labels)
    for part in (train, test):
        assert set(labels[part]) == {0, 1, 2, 3}
    # round(0.5 * size), clipped to leave at least one sample on each side
    assert np.bincount(labels[train]).tolist() == [5, 4, 2, 1]


def test_stratified_split_per_class_count_and_bad_input():
    labels = torch.arange(5).repeat_interleave(10)
    train, test = stratified_split(labels, train_per_class=3, seed=0)
    assert np.bincount(labels[train].numpy()).tolist() == [3] * 5
    assert len(test) == 35
    with pytest.raises(ValueError, match="either"):
        stratified_split(labels, train_fraction=0.5, train_per_class=3)
    with pytest.raises(ValueError, match="fewer than 2"):
        stratified_split([0, 0, 1], seed=0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        stratified_split(labels, train_fraction=1.0)


def test_classification_report_matches_hand_counts():
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    predictions = [0, 0, 1, 2, 1, 1, 2, 0, 0, 0]
    report = classification_report(predictions, labels, ["a", "b", "c", "d"])
    # correct: 2 of 4 for a, 2 of 2 for b, 1 of 4 for c; d has no samples
    assert report["num_samples"] == 10 and report["num_correct"] == 5
    assert report["top1_accuracy"] == pytest.approx(0.5)
    assert report["per_class_accuracy"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.25, "d": None})
    assert report["mean_per_class_accuracy"] == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    json.dumps(report)


# ---------------------------------------------------------------------------------------------------------------------
# Image folders and feature extraction
# ---------------------------------------------------------------------------------------------------------------------


def write_synthetic_folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """Class `c` images are noisy squares of one colour per class, in PNG, JPEG or 3-band TIFF, of varying sizes."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(classes, 3))
    for class_index in range(classes):
        folder = root / f"class_{class_index}"
        folder.mkdir(parents=True)
        for image_index in range(per_class):
            side = 40 + 4 * image_index
            pixels = np.clip(colours[class_index] + rng.normal(0, 10, size=(side, side, 3)), 0, 255).astype(np.uint8)
            suffix = (".png", ".jpg", ".tif")[image_index % 3]
            Image.fromarray(pixels).save(folder / f"image_{image_index}{suffix}")
        (folder / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def save_tiny_pera(directory: Path) -> Path:
    config = tiny_config()
    # A seed that the random-init encoders of these tests (seeds 0 and 1) do not use.
    torch.manual_seed(1234)
    PeraModel(config).save_pretrained(directory)
    PeraImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_pera(tmp_path_factory) -> Path:
    return save_tiny_pera(tmp_path_factory.mktemp("tiny_pera"))


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory) -> Path:
    return write_synthetic_folder(tmp_path_factory.mktemp("images"))


def test_image_folder_lists_images_by_class(synthetic_folder):
    dataset = ImageFolder.from_directory(synthetic_folder)
    assert dataset.class_names == ["class_0", "class_1", "class_2"]
    assert len(dataset) == 12 and dataset.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert {path.suffix for path in dataset.paths} == {".png", ".jpg", ".tif"}
    assert all(path.parent.name == f"class_{label}" for path, label in zip(dataset.paths, dataset.labels))
    with pytest.raises(ValueError, match="No images"):
        ImageFolder.from_directory(synthetic_folder / "class_0")


def ucmerced_paths(shared_data: Path) -> list[Path]:
    root = shared_data / "ucmerced"
    if not root.is_dir():
        pytest.skip(f"UC Merced not found at {root}")
    return [
        path for name in UCMERCED_CLASSES for path in sorted((root / name).glob("*.jpg"))[:UCMERCED_IMAGES_PER_CLASS]
    ]


@pytest.mark.parametrize("source", ["synthetic", "ucmerced"])
def test_extract_features_of_tiny_pera(source, tiny_pera, synthetic_folder, request):
    if source == "ucmerced":
        paths = ucmerced_paths(request.getfixturevalue("shared_data"))
    else:
        paths = ImageFolder.from_directory(synthetic_folder).paths
    model, processor = load_encoder(tiny_pera)
    model.train()  # extract_features evaluates in eval mode and restores the flag

    features = extract_features(model, processor, paths, batch_size=4, progress_bar=False)
    assert features.dtype == torch.float32 and features.shape == (len(paths), 32)
    assert torch.isfinite(features).all() and model.training

    # Batching does not change the features, and they are the model's normalised CLS tokens.
    one_by_one = extract_features(model, processor, paths, batch_size=1, progress_bar=False)
    torch.testing.assert_close(features, one_by_one, rtol=1e-4, atol=1e-5)
    pixel_values = processor([np.asarray(Image.open(path)) for path in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.eval()(pixel_values).pooler_output
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)

    both = extract_features(model, processor, paths, batch_size=4, pooling="cls+mean", progress_bar=False)
    assert both.shape == (len(paths), 64)
    torch.testing.assert_close(both[:, :32], features)


def test_extract_features_cache_skips_the_model(tiny_pera, synthetic_folder, tmp_path):
    paths = ImageFolder.from_directory(synthetic_folder).paths
    model, processor = load_encoder(tiny_pera)
    forward_calls = []
    model.register_forward_hook(lambda module, inputs, outputs: forward_calls.append(1))
    cache_path = tmp_path / "cache" / "features.pt"

    first = extract_features(model, processor, paths, batch_size=5, cache_path=cache_path, progress_bar=False)
    assert len(forward_calls) == 3 and cache_path.is_file()
    second = extract_features(model, processor, paths, batch_size=5, cache_path=cache_path, progress_bar=False)
    assert len(forward_calls) == 3 and torch.equal(first, second)

    # Anything the features depend on invalidates the cache: the image size, the files and the weights.
    extract_features(
        model,
        processor,
        paths,
        cache_path=cache_path,
        processor_kwargs={"size": {"height": 48, "width": 48}},
        progress_bar=False,
    )
    assert len(forward_calls) == 4
    extract_features(model, processor, paths[:-1], cache_path=cache_path, progress_bar=False)
    assert len(forward_calls) == 5
    random_model, _ = load_encoder(tiny_pera, random_init=True)
    random_model.register_forward_hook(lambda module, inputs, outputs: forward_calls.append(1))
    extract_features(random_model, processor, paths[:-1], cache_path=cache_path, progress_bar=False)
    assert len(forward_calls) == 6


def test_load_encoder_random_init_is_seeded_and_differs_from_the_weights(tiny_pera):
    trained, _ = load_encoder(tiny_pera)
    random_a, _ = load_encoder(tiny_pera, random_init=True, seed=0)
    random_b, _ = load_encoder(tiny_pera, random_init=True, seed=0)
    random_c, _ = load_encoder(tiny_pera, random_init=True, seed=1)
    weight = "embeddings.patch_embeddings.projection.weight"

    def parameter(model):
        return model.state_dict()[weight]

    assert torch.equal(parameter(random_a), parameter(random_b))
    assert not torch.equal(parameter(random_a), parameter(random_c))
    assert not torch.equal(parameter(random_a), parameter(trained))


def test_vit_mae_is_evaluated_without_masking(synthetic_folder, tmp_path):
    config = ViTMAEConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    model = ViTMAEModel(config)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    paths = ImageFolder.from_directory(synthetic_folder).paths
    tokens_seen = []
    model.register_forward_hook(lambda module, inputs, outputs: tokens_seen.append(outputs.last_hidden_state.shape[1]))

    features = extract_features(model, processor, paths, batch_size=12, pooling="mean", progress_bar=False)
    again = extract_features(model, processor, paths, batch_size=12, pooling="mean", progress_bar=False)
    assert tokens_seen == [1 + 16, 1 + 16]  # CLS and all 16 patches, not a random quarter
    torch.testing.assert_close(features, again, rtol=0, atol=0)
    assert model.config.mask_ratio == 0.75  # restored

    # Through the Auto classes and at another input size, which ViT-MAE only accepts when interpolating.
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    arguments = EvaluationArguments(
        str(tmp_path), str(synthetic_folder), k=3, image_size=48, progress_bar=False, device="cpu"
    )
    results = evaluate_encoder(arguments)
    assert results["input_size"] == [3, 48, 48] and results["feature_dim"] == 32


@pytest.mark.parametrize("num_register_tokens", [0, 4])
def test_stock_encoder_features_are_the_cls_token_and_the_patch_mean(num_register_tokens, synthetic_folder):
    # ViT's pooler_output is dense + tanh over the CLS token: the CLS token itself must be used instead. DINOv2 with
    # registers puts them after CLS: they are not patches.
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
    if num_register_tokens:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=num_register_tokens, **sizes))
    else:
        model = ViTModel(ViTConfig(intermediate_size=64, **sizes))
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    paths = ImageFolder.from_directory(synthetic_folder).paths[:3]

    features = extract_features(model, processor, paths, pooling="cls+mean", progress_bar=False)
    pixel_values = torch.stack([preprocess_image_file(path, processor) for path in paths])
    with torch.no_grad():
        hidden_states = model.eval()(pixel_values).last_hidden_state
    assert hidden_states.shape[1] == 1 + num_register_tokens + 16
    torch.testing.assert_close(features[:, :32], hidden_states[:, 0])
    torch.testing.assert_close(features[:, 32:], hidden_states[:, 1 + num_register_tokens :].mean(dim=1))


def test_evaluate_encoder_end_to_end(tiny_pera, synthetic_folder):
    arguments = EvaluationArguments(
        str(tiny_pera), str(synthetic_folder), k=3, train_per_class=2, linear_probe=True, progress_bar=False
    )
    results = evaluate_encoder(arguments)
    assert (results["num_images"], results["num_classes"], results["num_train"], results["num_test"]) == (12, 3, 6, 6)
    assert results["input_size"] == [3, 32, 32] and results["feature_dim"] == 32
    for method in ("knn", "linear_probe"):
        assert 0 <= results[method]["top1_accuracy"] <= 1
        assert set(results[method]["per_class_accuracy"]) == {"class_0", "class_1", "class_2"}
    assert results["linear_probe"]["weight_decay"] > 0
    json.dumps(results)


def test_run_eval_script(tiny_pera, synthetic_folder, tmp_path, monkeypatch, capsys):
    output_json = tmp_path / "results.json"
    arguments = ["--model_name_or_path", str(tiny_pera), "--data_dir", str(synthetic_folder), "--k", "3"]
    arguments += ["--random_init", "--linear_probe", "--device", "cpu", "--output_json", str(output_json)]
    monkeypatch.setattr(sys, "argv", ["run_eval.py", *arguments])
    runpy.run_path(str(REPO_ROOT / "examples" / "run_eval.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "kNN k=3" in printed and "linear probe" in printed and "(random init)" in printed
    results = json.loads(output_json.read_text())
    assert results["random_init"] and results["num_test"] == 6


def test_format_comparison_puts_the_shared_figures_side_by_side_with_their_difference():
    pretrained = {"knn": {"top1_accuracy": 0.45}, "linear_probe": {"top1_accuracy": 0.6}}
    random_init = {"knn": {"top1_accuracy": 0.354}, "segmentation_probe": {"mean_iou": 0.4}}
    text = format_comparison(pretrained, random_init, "random init")
    assert "45.00 % against 35.40 % (+9.60 points)" in text and "random init" in text
    assert "linear probe" not in text and "segmentation" not in text  # only what both have
    with pytest.raises(ValueError, match="share no figure"):
        format_comparison({"linear_probe": {"top1_accuracy": 0.5}}, random_init, "random init")
