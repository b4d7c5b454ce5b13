"""Sharing on the Hub, offline: the folder `--push_to_hub` uploads (exported encoder + model card) loads with
trust_remote_code where `modeling_pera` cannot be imported and runs the card's own usage example, the card's metadata
parses, and the upload calls the Hub API with the right arguments (a recorder stands in for `HfApi`)."""

import json
import re

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, RepoUrl
from PIL import Image

import modeling_pera.hub
from modeling_pera import PeraForPreTraining, PeraImageProcessor
from modeling_pera.hub import probe_results_from_evaluation, push_folder_to_hub, write_model_card
from modeling_pera.image_processing_pera import SENTINEL2_L2A_BANDS, SENTINEL2_L2A_MEAN, SENTINEL2_L2A_STD
from modeling_pera.pretraining import PretrainingArguments, export_pretrained, push_encoder
from pera_testing import HUB_FILES, run_without_package, tiny_config


@pytest.fixture
def hub_calls(monkeypatch):
    """Replaces `HfApi` in the hub module by a recorder; returns the list of recorded calls."""
    calls = []

    class RecordingHfApi:
        def __init__(self, token=None):
            calls.append(("HfApi", {"token": token}))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            full_id = repo_id if "/" in repo_id else f"logged-in-user/{repo_id}"
            return RepoUrl(f"https://huggingface.co/{full_id}")

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr(modeling_pera.hub, "HfApi", RecordingHfApi)
    return calls


def export_tiny_run(directory, **config_overrides):
    """A pretraining run's output folder (full checkpoint + `encoder/`) for a tiny random PerA."""
    config = tiny_config(**config_overrides)
    model = PeraForPreTraining(config).eval()
    if config.num_channels == 3:
        processor = PeraImageProcessor.from_preset("pera-rgb", size=config.image_size)
    else:
        processor = PeraImageProcessor.from_preset(
            "sentinel2-l2a", size=config.image_size, ground_sampling_distance=10
        )
    export_pretrained(model, processor, directory)
    return model, processor


def test_pushed_folder_loads_with_remote_code_and_runs_its_card_example(tmp_path, hub_calls):
    model, processor = export_tiny_run(tmp_path / "run")
    encoder_dir = tmp_path / "run" / "encoder"
    arguments = PretrainingArguments(output_dir=str(tmp_path / "run"), train_dir=["/data/ucmerced"], max_train_steps=5)
    card_info = modeling_pera.hub.pretraining_card_info(arguments, model.config, completed_steps=5)
    card_info.update(license="apache-2.0", probe_results={"k-NN top-1, UC Merced": 0.5})

    repo_id = push_encoder(encoder_dir, "someone/pera-tiny", "hf_secret", card_info=card_info)

    assert repo_id == "someone/pera-tiny"
    assert hub_calls == [
        ("HfApi", {"token": "hf_secret"}),
        ("create_repo", {"repo_id": "someone/pera-tiny", "private": False, "exist_ok": True}),
        (
            "upload_folder",
            {"repo_id": "someone/pera-tiny", "folder_path": encoder_dir, "commit_message": "Upload PerA encoder"},
        ),
    ]
    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", *HUB_FILES):
        assert (encoder_dir / name).is_file(), name

    # What a user downloading the repository would run: the card's example, with the Hub id pointing at the folder.
    card = ModelCard.load(encoder_dir / "README.md")
    (example,) = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)
    assert example.count('"someone/pera-tiny"') == 2 and "trust_remote_code=True" in example
    example = example.replace('"someone/pera-tiny"', repr(str(encoder_dir)))
    image = np.random.default_rng(0).integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "scene.png")
    with torch.no_grad():
        expected = model.pera(processor(image, return_tensors="pt")["pixel_values"]).pooler_output
    torch.save(expected, tmp_path / "expected.pt")

    script = """
        import torch

        namespace = {}
        exec(sys.argv[1], namespace)
        model = namespace["model"]
        assert type(model).__name__ == "PeraModel", type(model)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        torch.testing.assert_close(namespace["image_features"], torch.load("expected.pt"), rtol=0, atol=1e-6)
        assert namespace["patch_features"].shape == (1, 16, 32), namespace["patch_features"].shape
        print("card example OK")
    """
    result = run_without_package(script, example, workdir=tmp_path)
    assert "card example OK" in result.stdout


def test_model_card_metadata_and_content(tmp_path):
    model, _ = export_tiny_run(tmp_path)
    arguments = PretrainingArguments(
        output_dir=str(tmp_path), train_dir=["/somewhere/private/ucmerced"], per_device_train_batch_size=16
    )
    card_info = modeling_pera.hub.pretraining_card_info(arguments, model.config, completed_steps=350, num_processes=2)
    path = write_model_card(
        tmp_path / "encoder",
        repo_id="someone/pera-tiny",
        license="mit",
        probe_results={"k-NN (k=20) top-1, ucmerced": 0.6123, "segmentation": "not run"},
        **card_info,
    )

    card = ModelCard.load(path)
    metadata = card.data.to_dict()
    assert metadata == {
        "library_name": "transformers",
        "pipeline_tag": "image-feature-extraction",
        "tags": ["remote-sensing", "earth-observation", "self-supervised", "pera"],
        "license": "mit",
    }
    text = card.text
    assert "# pera-tiny" in text
    assert "| width / depth / heads | 32 / 2 / 4 |" in text
    assert "| 1 | red | - | 0.3585 | 0.1483 |" in text and "| 3 | blue | - | 0.3155 | 0.1198 |" in text
    assert "multiplies by 1/255, resizes to 32 x 32 px and normalises" in text
    assert "m per pixel" not in text  # no ground sampling distance recorded
    assert "| data | image folder(s) `ucmerced` |" in text and "/somewhere/private" not in text
    assert "| steps | 350 |" in text and "| batch size | 32 images (16 per device x 2 process(es)" in text
    assert "| crops per image | 2 x 32 px global + 8 x 16 px local |" in text
    assert "| k-NN (k=20) top-1, ucmerced | 61.2 % |" in text and "| segmentation | not run |" in text
    assert "author  = {Shen, H." in text


def test_model_card_of_a_multispectral_model(tmp_path):
    export_tiny_run(tmp_path, num_channels=12, band_names=SENTINEL2_L2A_BANDS)
    card = ModelCard.load(write_model_card(tmp_path / "encoder"))
    assert "license" not in card.data.to_dict()
    assert f"| 4 | B04 | 0.665 | {SENTINEL2_L2A_MEAN[3]:g} | {SENTINEL2_L2A_STD[3]:g} |" in card.text
    assert "multiplies by" not in card.text  # Sentinel-2 statistics are in DN
    assert "The pretraining images have 10 m per pixel." in card.text
    assert 'input_data_format="channels_last"' in card.text and "(height, width, 12)" in card.text
    assert f'from_pretrained("{tmp_path / "encoder"}"' in card.text  # without a repo id, the example loads the folder
    assert "## Training" not in card.text and "## Frozen-feature results" not in card.text


def test_card_of_a_pretraining_checkpoint_counts_the_encoder_only(tmp_path):
    model, _ = export_tiny_run(tmp_path)
    encoder_parameters = sum(parameter.numel() for parameter in model.pera.parameters())
    for folder in (tmp_path, tmp_path / "encoder"):
        text = ModelCard.load(write_model_card(folder)).text
        assert f"learned position embeddings), {encoder_parameters:,} parameters |" in text
    assert "full pretraining checkpoint" in ModelCard.load(tmp_path / "README.md").text
    assert "full pretraining checkpoint" not in ModelCard.load(tmp_path / "encoder" / "README.md").text


def test_push_folder_to_hub_arguments(tmp_path, hub_calls):
    export_tiny_run(tmp_path)
    repo_id = push_folder_to_hub(tmp_path / "encoder", "pera-tiny", private=True, commit_message="First upload")
    assert repo_id == "logged-in-user/pera-tiny"
    assert hub_calls == [
        ("HfApi", {"token": None}),
        ("create_repo", {"repo_id": "pera-tiny", "private": True, "exist_ok": True}),
        (
            "upload_folder",
            {
                "repo_id": "logged-in-user/pera-tiny",
                "folder_path": tmp_path / "encoder",
                "commit_message": "First upload",
            },
        ),
    ]


def test_nothing_is_pushed_without_a_saved_model_or_a_repository(tmp_path, hub_calls):
    with pytest.raises(ValueError, match="no config.json"):
        push_folder_to_hub(tmp_path, "someone/pera")
    with pytest.raises(ValueError, match="--hub_model_id"):
        push_encoder(tmp_path, None, None)
    assert hub_calls == []


def test_probe_results_from_an_evaluation():
    results = {
        "data_dir": "/data/ucmerced",
        "num_train": 1050,
        "num_test": 1050,
        "pooling": "cls",
        "random_init": False,
        "knn": {"k": 20, "top1_accuracy": 0.61},
        "linear_probe": {"top1_accuracy": 0.7},
    }
    assert probe_results_from_evaluation(results) == {
        "k-NN (k=20) top-1, ucmerced, 1050 train / 1050 test, cls features": 0.61,
        "linear probe top-1, ucmerced, 1050 train / 1050 test, cls features": 0.7,
    }
    assert json.dumps(probe_results_from_evaluation({**results, "random_init": True})).count("random init") == 2
