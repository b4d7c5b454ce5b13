"""Fine-tuning with `Trainer`: layer-wise learning-rate decay, the classification script, the augmentation, and the
transformers pipelines on saved checkpoints."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from transformers import HfArgumentParser, TrainingArguments

from modeling_pera import PeraForImageClassification, PeraForPreTraining, PeraImageProcessor
from modeling_pera.evaluation import EvaluationArguments, evaluate_encoder
from modeling_pera.finetuning import (
    ClassificationArguments,
    LayerDecayTrainer,
    RandomResizedCropTransform,
    finetune_classification,
    parameter_depth,
)
from modeling_pera.pretraining import pretrain
from pera_testing import HUB_FILES, run_without_package, tiny_arguments, tiny_config


REPO_ROOT = Path(__file__).resolve().parents[1]
CLASS_COLOURS = {"forest": (30, 160, 30), "water": (30, 30, 200), "urban": (200, 200, 200)}


# ---------------------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, depth",
    [
        ("pera.embeddings.cls_token", 0),
        ("pera.embeddings.patch_embeddings.projection.weight", 0),
        ("pera.layers.0.attention.q_proj.weight", 1),
        ("pera.layers.11.mlp.fc2.bias", 12),
        ("pera.layernorm.weight", 13),
        ("classifier.weight", 13),
        ("vit.encoder.layer.3.output.dense.weight", 4),  # transformers' ViT naming
        ("backbone.pera.layers.5.norm1.weight", 6),  # UperNet on a PeraBackbone
        ("decode_head.lateral_convs.0.conv.weight", 13),
    ],
)
def test_parameter_depth(name, depth):
    assert parameter_depth(name, num_layers=12) == depth


def make_trainer(tmp_path: Path, layer_decay: float | None) -> LayerDecayTrainer:
    model = PeraForImageClassification(tiny_config(num_labels=3))
    arguments = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.05, use_cpu=True, report_to="none"
    )
    return LayerDecayTrainer(model=model, args=arguments, layer_decay=layer_decay)


def test_layer_decay_groups_get_the_right_learning_rates(tmp_path):
    trainer = make_trainer(tmp_path, layer_decay=0.5)
    optimizer = trainer.create_optimizer()
    group_of = {id(parameter): group for group in optimizer.param_groups for parameter in group["params"]}
    trainable = {name: parameter for name, parameter in trainer.model.named_parameters() if parameter.requires_grad}
    assert len(group_of) == len(trainable) == sum(len(group["params"]) for group in optimizer.param_groups)
    assert "pera.embeddings.mask_token" not in trainable  # frozen in the classifier: not optimised

    # 2 blocks: the embeddings get 0.5**3 of the head's rate, block 0 0.5**2, block 1 0.5, the final norm and head 1
    expected_lr = {
        "pera.embeddings.patch_embeddings.projection.weight": 1e-3 * 0.125,
        "pera.embeddings.position_embeddings": 1e-3 * 0.125,
        "pera.layers.0.attention.q_proj.weight": 1e-3 * 0.25,
        "pera.layers.1.mlp.fc1.bias": 1e-3 * 0.5,
        "pera.layernorm.weight": 1e-3,
        "classifier.weight": 1e-3,
    }
    for name, lr in expected_lr.items():
        assert group_of[id(trainable[name])]["lr"] == pytest.approx(lr), name
    # weight matrices decay; biases, norms, CLS token and position embeddings do not
    decayed = {name for name, parameter in trainable.items() if group_of[id(parameter)]["weight_decay"] == 0.05}
    assert {"pera.layers.0.attention.q_proj.weight", "classifier.weight"} <= decayed
    for name in ("pera.embeddings.cls_token", "pera.embeddings.position_embeddings", "pera.layers.1.mlp.fc1.bias"):
        assert name not in decayed, name
    assert not any("norm" in name for name in decayed)
    assert all(group["weight_decay"] in (0.0, 0.05) for group in optimizer.param_groups)


def test_without_layer_decay_every_parameter_gets_the_learning_rate(tmp_path):
    optimizer = make_trainer(tmp_path, layer_decay=None).create_optimizer()
    assert {group["lr"] for group in optimizer.param_groups} == {1e-3}
    with pytest.raises(ValueError, match="layer_decay"):
        make_trainer(tmp_path, layer_decay=1.5).create_optimizer()


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------------


def test_random_resized_crop_transform_takes_any_band_count(tmp_path):
    # A 4-band uint8 TIFF whose bands are constant: crops and flips leave each band at its normalised value.
    band_values = np.array([10, 80, 150, 220], dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgbn.tif", np.broadcast_to(band_values[:, None, None], (4, 50, 60)).copy())
    processor = PeraImageProcessor.from_preset("rgbn")
    transform = RandomResizedCropTransform(processor, image_size=24)
    torch.manual_seed(0)
    pixel_values = transform(tmp_path / "rgbn.tif")
    assert pixel_values.shape == (4, 24, 24) and pixel_values.dtype == torch.float32
    expected = (band_values / 255 - np.array(processor.image_mean)) / np.array(processor.image_std)
    torch.testing.assert_close(
        pixel_values, torch.tensor(expected, dtype=torch.float32)[:, None, None].expand(4, 24, 24)
    )


def test_fine_tuning_bands_pick_the_encoders_bands_from_larger_images(tmp_path):
    band_values = np.array([10, 80, 150, 220], dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgbn.tif", np.broadcast_to(band_values[:, None, None], (4, 50, 60)).copy())
    processor = PeraImageProcessor()  # an RGB encoder's
    with pytest.raises(ValueError, match=r"has 4 bands but the encoder takes 3: .*--bands 0 1 2"):
        RandomResizedCropTransform(processor, image_size=24)(tmp_path / "rgbn.tif")
    pixel_values = RandomResizedCropTransform(processor, image_size=24, bands=[2, 1, 0])(tmp_path / "rgbn.tif")
    expected = (band_values[[2, 1, 0]] / 255 - np.array(processor.image_mean)) / np.array(processor.image_std)
    torch.testing.assert_close(
        pixel_values, torch.tensor(expected, dtype=torch.float32)[:, None, None].expand(3, 24, 24)
    )
    assert ClassificationArguments(model_name_or_path="m", train_dir="d", bands=[2, 1, 0]).bands == [2, 1, 0]


def test_random_resized_crop_transform_is_random_and_seeded(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    transform = RandomResizedCropTransform(PeraImageProcessor(), image_size=16)
    torch.manual_seed(1)
    first, second = transform(tmp_path / "image.png"), transform(tmp_path / "image.png")
    assert not torch.equal(first, second)
    torch.manual_seed(1)
    assert torch.equal(first, transform(tmp_path / "image.png"))


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning with Trainer, and the pipelines on the result
# ---------------------------------------------------------------------------------------------------------------------


def write_class_folders(root: Path, per_class: int = 12) -> Path:
    """Trivially separable scenes: noisy images of one colour per class."""
    rng = np.random.default_rng(0)
    for class_name, colour in CLASS_COLOURS.items():
        (root / class_name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / class_name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny PerA pretraining checkpoint and its exported encoder, each with a 32 px processor."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    pretraining = PeraForPreTraining(tiny_config())
    processor = PeraImageProcessor(size={"height": 32, "width": 32})
    for name, model in (("pretraining", pretraining), ("encoder", pretraining.teacher)):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return {"pretraining": root / "pretraining", "encoder": root / "encoder"}


@pytest.fixture(scope="module")
def finetuned(checkpoints, tmp_path_factory) -> Path:
    """`examples/run_classification.py` run on separable class folders, from the pretraining checkpoint."""
    root = tmp_path_factory.mktemp("finetuning")
    data_dir = write_class_folders(root / "data")
    output_dir = root / "classifier"
    arguments = ["--model_name_or_path", str(checkpoints["pretraining"]), "--train_dir", str(data_dir)]
    arguments += ["--output_dir", str(output_dir), "--num_train_epochs", "4", "--per_device_train_batch_size", "6"]
    arguments += ["--learning_rate", "2e-3", "--layer_decay", "0.75", "--train_val_split", "0.25", "--seed", "0"]
    arguments += ["--eval_strategy", "epoch", "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none"]
    arguments += ["--use_cpu", "--config_overrides", "drop_path_rate=0.0"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(sys, "argv", ["run_classification.py", *arguments])
        runpy.run_path(str(REPO_ROOT / "examples" / "run_classification.py"), run_name="__main__")
    return output_dir


def test_trainer_fine_tuning_separates_the_classes(finetuned):
    metrics = json.loads((finetuned / "all_results.json").read_text())
    assert metrics["eval_accuracy"] == 1.0 and metrics["eval_mean_per_class_accuracy"] == 1.0
    losses = [
        entry["loss"]
        for entry in json.loads((finetuned / "trainer_state.json").read_text())["log_history"]
        if "loss" in entry
    ]
    assert len(losses) == 20  # 27 training images (9 per class), batches of 6, 4 epochs
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])

    config = json.loads((finetuned / "config.json").read_text())
    assert config["architectures"] == ["PeraForImageClassification"] and config["drop_path_rate"] == 0.0
    assert config["id2label"] == {"0": "forest", "1": "urban", "2": "water"}
    for name in (*HUB_FILES, "preprocessor_config.json"):
        assert (finetuned / name).is_file(), name


def test_pipelines_load_our_checkpoints_offline_without_the_package(finetuned, checkpoints, tmp_path):
    for class_name, colour in CLASS_COLOURS.items():
        Image.fromarray(np.full((48, 48, 3), colour, dtype=np.uint8)).save(tmp_path / f"{class_name}.png")
    script = """
        import numpy as np
        from PIL import Image
        from transformers import pipeline

        classifier_dir, encoder_dir, image_dir = sys.argv[1:]
        classify = pipeline("image-classification", model=classifier_dir, trust_remote_code=True)
        assert type(classify.model).__module__.startswith("transformers_modules"), type(classify.model)
        for name in ("forest", "water", "urban"):
            top = classify(Image.open(f"{image_dir}/{name}.png"), top_k=3)
            assert [entry["label"] for entry in top][0] == name, top
            assert abs(sum(entry["score"] for entry in top) - 1) < 1e-5, top
        extract = pipeline("image-feature-extraction", model=encoder_dir, trust_remote_code=True)
        image = Image.open(f"{image_dir}/water.png")
        assert np.array(extract(image)).shape == (1, 17, 32)  # CLS + 4 x 4 patches at 32 px
        assert np.array(extract(image, pool=True)).shape == (1, 32)
        print("pipelines OK")
    """
    result = run_without_package(script, finetuned, checkpoints["encoder"], tmp_path, workdir=tmp_path)
    assert "pipelines OK" in result.stdout


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_a_folder_of_rgba_or_grey_pngs_pretrains_evaluates_and_fine_tunes(tmp_path, mode):
    data_dir = write_class_folders(tmp_path / "data", per_class=4)
    for path in data_dir.rglob("*.png"):
        Image.open(path).convert(mode).save(path)
    pretrain(tiny_arguments(data_dir, tmp_path / "pera", max_train_steps=2))
    encoder = tmp_path / "pera" / "encoder"
    arguments = EvaluationArguments(str(encoder), str(data_dir), k=2, train_per_class=2, progress_bar=False)
    results = evaluate_encoder(arguments)
    assert results["num_test"] == 6 and results["input_size"][0] == 3
    arguments = ["--model_name_or_path", str(encoder), "--train_dir", str(data_dir), "--output_dir"]
    arguments += [str(tmp_path / "classifier"), "--num_train_epochs", "1", "--per_device_train_batch_size", "4"]
    arguments += ["--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--use_cpu"]
    parser = HfArgumentParser((ClassificationArguments, TrainingArguments))
    finetune_classification(*parser.parse_args_into_dataclasses(args=arguments))
    assert (tmp_path / "classifier" / "all_results.json").is_file()
