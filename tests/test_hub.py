"""Hub sharing: a saved folder carries the code files and the full auto_map, and loads with trust_remote_code in a fresh
process where `modeling_pera` cannot be imported, offline."""

import json

import numpy as np
import torch

from modeling_pera import PeraForPreTraining, PeraImageProcessor
from modeling_pera.configuration_pera import PERA_AUTO_MAP
from pera_testing import HUB_FILES, run_without_package, tiny_config


def save_checkpoint(directory):
    config = tiny_config(num_labels=3)
    model = PeraForPreTraining(config).eval()
    with torch.no_grad():
        for parameter in model.student.parameters():
            parameter.add_(1.0)  # the student differs from the teacher
    processor = PeraImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def test_saved_folder_has_code_files_and_full_auto_map(tmp_path):
    save_checkpoint(tmp_path)
    for name in HUB_FILES:
        assert (tmp_path / name).is_file(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "pera"
    assert config["auto_map"] == PERA_AUTO_MAP
    processor_config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoImageProcessor": "image_processing_pera.PeraImageProcessor"}


def test_remote_code_loads_offline_without_the_package(tmp_path):
    model, processor = save_checkpoint(tmp_path / "checkpoint")
    image = (torch.rand(40, 40, 3) * 255).to(torch.uint8).numpy()
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.pera(pixel_values).last_hidden_state
    torch.save({"image": torch.from_numpy(image), "expected": expected}, tmp_path / "expected.pt")

    script = """
        import torch
        from transformers import (AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                                  AutoModelForPreTraining)

        checkpoint, reference = sys.argv[1], torch.load(sys.argv[2])
        processor = AutoImageProcessor.from_pretrained(checkpoint, trust_remote_code=True)
        encoder = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
        assert type(encoder).__name__ == "PeraModel", type(encoder)
        assert type(encoder).__module__.startswith("transformers_modules"), type(encoder).__module__
        pixel_values = processor(reference["image"].numpy(), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            output = encoder(pixel_values).last_hidden_state
        # the test process computes with one thread, this one with the default: summation order differs slightly
        torch.testing.assert_close(output, reference["expected"], rtol=1e-5, atol=1e-6)
        pretraining = AutoModelForPreTraining.from_pretrained(checkpoint, trust_remote_code=True)
        assert type(pretraining).__name__ == "PeraForPreTraining"
        views = torch.rand(2, 2, 3, 32, 32)  # the losses come from losses_pera.py, copied beside modeling_pera.py
        assert torch.isfinite(pretraining(views, views).loss)
        classifier = AutoModelForImageClassification.from_pretrained(checkpoint, trust_remote_code=True)
        assert classifier(pixel_values).logits.shape == (1, 3)
        print("remote code OK")
    """
    result = run_without_package(script, tmp_path / "checkpoint", tmp_path / "expected.pt", workdir=tmp_path)
    assert "remote code OK" in result.stdout


def test_a_processor_saved_alone_carries_its_band_presets_and_loads_without_the_package(tmp_path):
    """`image_processing_pera.py` imports `bands_pera.py` relatively: `save_pretrained` copies both, and the processor
    loads from them in a fresh process without the package."""
    processor = PeraImageProcessor.from_preset("sentinel2-l2a", offset=1000, size=32)
    processor.save_pretrained(tmp_path / "processor")
    code_files = sorted(path.name for path in (tmp_path / "processor").glob("*.py"))
    assert code_files == ["bands_pera.py", "image_processing_pera.py"]
    image = np.random.default_rng(0).integers(1000, 6000, size=(12, 40, 40), dtype=np.int32)
    expected = processor(image, return_tensors="pt")["pixel_values"]
    reference = {"image": torch.from_numpy(image), "expected": expected, "band_names": processor.band_names}
    torch.save(reference, tmp_path / "expected.pt")

    script = """
        import torch
        from transformers import AutoImageProcessor

        folder, reference = sys.argv[1], torch.load(sys.argv[2])
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        assert processor.band_names == reference["band_names"], processor.band_names
        pixel_values = processor(reference["image"].numpy(), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixel_values, reference["expected"])
        print("remote processor OK")
    """
    result = run_without_package(script, tmp_path / "processor", tmp_path / "expected.pt", workdir=tmp_path)
    assert "remote processor OK" in result.stdout
