"""The RS toolchain: a TorchGeo dataset and its geo sampler as the pretraining source (trains, resumes exactly, bad
input named), and a PerA checkpoint fine-tuned as a TerraTorch backbone. Each skips where its extra is absent."""

import pytest
import torch

from modeling_pera import PeraImageProcessor, PeraModel
from modeling_pera.data import GeoSamplerDataset, build_torchgeo_dataset, check_dataset
from modeling_pera.pretraining import PretrainingArguments, pretrain
from modeling_pera.scene_io import write_synthetic_scene
from modeling_pera.views import AlignedPairViews
from pera_testing import assert_resumes_exactly, sixteen_bit_start, sixteen_bit_views, tiny_arguments, tiny_config


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory):
    pytest.importorskip("torchgeo", reason="the torchgeo extra is not installed")
    folder = tmp_path_factory.mktemp("torchgeo_scenes")
    for name in ("east", "west"):
        write_synthetic_scene(folder / f"{name}.tif", size=256, border=0, overviews=False)
    return folder


def test_torchgeo_windows_are_a_function_of_seed_epoch_and_index(scene_folder):
    geo_dataset = build_torchgeo_dataset("RasterDataset", [scene_folder])
    first = GeoSamplerDataset.random_windows(geo_dataset, sixteen_bit_views(), window_size=64, windows_per_epoch=6)
    again = GeoSamplerDataset.random_windows(geo_dataset, sixteen_bit_views(), window_size=64, windows_per_epoch=6)
    torch.manual_seed(123)  # torch's global state must not matter
    assert len(first) == 6 and first.queries(0) == again.queries(0)
    assert first.queries(1) != first.queries(0)
    for index in range(6):
        torch.testing.assert_close(again[(1, index)]["student_global"], first[(1, index)]["student_global"])
    assert first.read(0, 0).shape == (4, 64, 64)
    assert first.ground_sampling_distance == 10.0  # the scenes' 10 m pixels, in UTM


def test_pretraining_from_a_torchgeo_dataset_trains_and_resumes_exactly(scene_folder, tmp_path):
    source = dict(
        torchgeo_dataset="RasterDataset",
        torchgeo_paths=[str(scene_folder)],
        scene_window_size=48,
        scene_windows_per_epoch=12,
        model_name_or_path=str(sixteen_bit_start(tmp_path / "start")),
        dataloader_num_workers=2,
    )
    assert assert_resumes_exactly(tmp_path, **source)["completed_steps"] == 4
    assert PeraImageProcessor.from_pretrained(tmp_path / "full" / "encoder").ground_sampling_distance == 10.0


def test_pretrain_takes_a_torchgeo_dataset_and_sampler_of_one_s_own(scene_folder, tmp_path):
    from torchgeo.samplers import GridGeoSampler

    geo_dataset = build_torchgeo_dataset("RasterDataset", [scene_folder])
    sampler = GridGeoSampler(geo_dataset, size=128, stride=128)  # 2 x 2 windows of each 256 px scene
    arguments = tiny_arguments(None, tmp_path / "run", model_name_or_path=str(sixteen_bit_start(tmp_path / "start")))
    summary = pretrain(arguments, geo_source=(geo_dataset, sampler))
    assert len(sampler) == 8 and summary["completed_steps"] == 4
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()


def test_bad_torchgeo_input_is_named(scene_folder, tmp_path):
    with pytest.raises(ValueError, match="NotAClass is not a TorchGeo RasterDataset class"):
        build_torchgeo_dataset("NotAClass", [scene_folder])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="RasterDataset found no files in .*empty"):
        build_torchgeo_dataset("RasterDataset", [tmp_path / "empty"])
    with pytest.raises(
        ValueError, match=r"--bands \['SWIR'\]: TorchGeo's NAIP names its bands \['R', 'G', 'B', 'NIR'\]"
    ):
        build_torchgeo_dataset("NAIP", [scene_folder], bands=["R", "SWIR"])
    three_band_views = AlignedPairViews(
        global_crop_size=32, local_crop_size=16, num_global_crops=2, num_local_crops=2, image_mean=[0.0] * 3
    )
    dataset = GeoSamplerDataset.random_windows(
        build_torchgeo_dataset("RasterDataset", [scene_folder]), three_band_views
    )
    with pytest.raises(ValueError, match=r"images of shape \(4, 32, 32\).* the model expects 3 bands"):
        check_dataset(dataset)
    with pytest.raises(ValueError, match="--torchgeo_dataset and --torchgeo_paths go together"):
        PretrainingArguments(output_dir=str(tmp_path / "run"), torchgeo_dataset="NAIP")
    with pytest.raises(ValueError, match="each replace --train_dir"):
        PretrainingArguments(
            output_dir=str(tmp_path / "run"), torchgeo_dataset="NAIP", torchgeo_paths=["x"], train_dir=["y"]
        )


def test_a_pera_checkpoint_fine_tunes_as_a_terratorch_backbone(tmp_path):
    pytest.importorskip("terratorch", reason="the terratorch extra is not installed")
    import lightning
    from terratorch.tasks import SemanticSegmentationTask

    import modeling_pera.terratorch_backbone  # noqa: F401  (registers the `pera` backbone)

    encoder = PeraModel(tiny_config())
    encoder.save_pretrained(tmp_path / "encoder")
    task = SemanticSegmentationTask(
        model_factory="EncoderDecoderFactory",
        model_args={
            "backbone": "pera",
            "backbone_model_name_or_path": str(tmp_path / "encoder"),
            "decoder": "FCNDecoder",
            "num_classes": 2,
        },
        ignore_index=-1,  # TerraTorch 1.2.11's default (None) fails in torch 2.14's cross-entropy
        lr=1e-3,
        plot_on_val=False,
    )
    backbone = task.model.encoder.backbone
    assert backbone.config.out_indices == [1, 2]  # the tiny encoder's 2 blocks
    start = backbone.pera.embeddings.patch_embeddings.projection.weight.detach().clone()
    torch.testing.assert_close(start, encoder.embeddings.patch_embeddings.projection.weight)

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    samples = [{"image": image, "mask": (image[0] > 0).long()} for image in images]
    loader = torch.utils.data.DataLoader(samples, batch_size=4)
    trainer = lightning.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=loader)
    assert trainer.global_step == 4
    assert not torch.equal(backbone.pera.embeddings.patch_embeddings.projection.weight, start)
    logits = task.model(images[:2]).output
    assert logits.shape == (2, 2, 32, 32) and torch.isfinite(logits).all()


def test_the_terratorch_backbone_without_terratorch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "terratorch.registry", None)
    monkeypatch.delitem(__import__("sys").modules, "modeling_pera.terratorch_backbone", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'modeling_pera\[terratorch\]'"):
        import modeling_pera.terratorch_backbone  # noqa: F401
