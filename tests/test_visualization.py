"""Feature-map pictures: band selection and RGB composites (also of 12-band images), PCA maps, CLS attention maps,
nearest neighbours, and the PNGs `examples/visualize_features.py` writes, on a tiny random PeraModel."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from matplotlib.image import imread
from PIL import Image

from modeling_pera import PeraForPreTraining, PeraImageProcessor, PeraModel
from modeling_pera.image_processing_pera import SENTINEL2_L2A_BANDS
from modeling_pera.pretraining import export_pretrained
from modeling_pera.raster import find_images
from modeling_pera.visualization import (
    compute_feature_maps,
    nearest_neighbours,
    pca_feature_maps,
    rgb_composite,
    select_rgb_bands,
    visualize_features,
)
from pera_testing import tiny_config


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "band_names, num_bands, expected",
    [
        (["red", "green", "blue"], 3, [0, 1, 2]),
        (["nir", "Red", "Green", "Blue"], 4, [1, 2, 3]),
        (SENTINEL2_L2A_BANDS, 12, [3, 2, 1]),
        (None, 12, [0, 1, 2]),
        (["band_1", "band_2", "band_3", "band_4"], 4, [0, 1, 2]),
        (None, 1, [0, 0, 0]),
    ],
)
def test_select_rgb_bands(band_names, num_bands, expected):
    assert select_rgb_bands(num_bands, band_names) == expected


def test_rgb_composite_of_a_12_band_image_stretches_red_green_blue():
    pixels = np.random.default_rng(0).integers(0, 10000, size=(12, 20, 24), dtype=np.uint16)
    composite = rgb_composite(pixels, SENTINEL2_L2A_BANDS)
    assert composite.shape == (20, 24, 3) and composite.dtype == np.float32
    assert composite.min() == 0.0 and composite.max() == 1.0
    red = pixels[3].astype(np.float32)  # B04
    low, high = np.percentile(red, [2, 98])
    np.testing.assert_allclose(composite[..., 0], np.clip((red - low) / (high - low), 0, 1), atol=1e-6)
    # a constant band gives black, not NaN
    assert np.all(rgb_composite(np.full((3, 4, 4), 7.0)) == 0.0)


def test_pca_maps_are_rgb_in_unit_range_and_separate_two_kinds_of_patches():
    generator = torch.Generator().manual_seed(0)
    features = 0.05 * torch.randn(2, 16, 32, generator=generator)
    grid = torch.arange(16).reshape(4, 4)
    left = (grid % 4 < 2).flatten()
    features[:, left] += torch.randn(32, generator=generator)  # left half of every image: one kind of patch
    maps = pca_feature_maps(features, (4, 4))
    assert maps.shape == (2, 4, 4, 3) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps.reshape(-1, 3).min(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(maps.reshape(-1, 3).max(axis=0), 1.0, atol=1e-6)
    first_component = maps[..., 0].reshape(2, 16)
    left_values, right_values = first_component[:, left.numpy()], first_component[:, ~left.numpy()]
    assert left_values.min() > right_values.max() or left_values.max() < right_values.min()
    with pytest.raises(ValueError, match="grid"):
        pca_feature_maps(features, (3, 4))


def test_feature_maps_of_a_tiny_encoder():
    model = PeraModel(tiny_config()).eval()
    pixel_values = torch.randn(2, 3, 48, 32, generator=torch.Generator().manual_seed(0))
    maps = compute_feature_maps(model, pixel_values)
    assert maps.pca.shape == (2, 6, 4, 3) and 0.0 <= maps.pca.min() and maps.pca.max() <= 1.0
    assert maps.attention.shape == (2, 4, 6, 4)
    # CLS attention to the patches: the softmax row less the CLS token's attention to itself
    row_sums = maps.attention.sum(axis=(-2, -1))
    assert np.all(row_sums > 0) and np.all(row_sums < 1)
    assert model.config._attn_implementation == "sdpa"  # switched back after the call
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(pixel_values, output_attentions=True).attentions[-1]
    np.testing.assert_allclose(maps.attention, attentions[:, :, 0, 1:].reshape(2, 4, 6, 4).numpy(), atol=1e-6)


def test_nearest_neighbours_rank_by_cosine_and_skip_the_query_itself():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]])
    queries = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    indices, similarities = nearest_neighbours(queries, gallery, 3, excluded=[0, None])
    assert indices[0].tolist() == [2, 1, 3]
    assert indices[1].tolist()[0] == 1
    assert torch.all(similarities[:, :-1] >= similarities[:, 1:])
    indices, _ = nearest_neighbours(queries, gallery, 10, excluded=[0, None])
    assert indices.shape == (2, 3)  # at most the gallery less the excluded image


def write_rgb_folder(root, size=40):
    generator = np.random.default_rng(0)
    for class_name in ("fields", "harbour"):
        (root / class_name).mkdir(parents=True)
        for index in range(3):
            pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / class_name / f"{class_name}{index}.png")
    return find_images(root)


def test_visualize_features_writes_one_png_per_image(tmp_path):
    gallery = write_rgb_folder(tmp_path / "gallery")
    assert len(gallery) == 6
    model = PeraModel(tiny_config()).eval()
    processor = PeraImageProcessor.from_preset("pera-rgb", size=32)
    written = visualize_features(
        model, processor, gallery[:2], tmp_path / "figures", gallery_paths=gallery, num_neighbours=3, image_size=48
    )
    assert written == [tmp_path / "figures" / "fields0_features.png", tmp_path / "figures" / "fields1_features.png"]
    for path in written:
        picture = imread(path)
        # two rows of panels: input, PCA and 4 heads above; query and 3 neighbours below
        assert picture.ndim == 3 and picture.shape[1] > 2.5 * picture.shape[0]


def test_visualize_features_of_a_12_band_model(tmp_path):
    generator = np.random.default_rng(1)
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"s2_{index}.tif")
        pixels = generator.integers(0, 8000, (12, 40, 40), dtype=np.uint16)
        tifffile.imwrite(paths[-1], pixels, photometric="minisblack")
    model = PeraModel(tiny_config(num_channels=12, band_names=SENTINEL2_L2A_BANDS)).eval()
    processor = PeraImageProcessor.from_preset("sentinel2-l2a", size=32)
    written = visualize_features(model, processor, paths, tmp_path / "figures")
    assert [path.name for path in written] == ["s2_0_features.png", "s2_1_features.png"]
    picture = imread(written[0])
    assert picture.shape[1] > 4 * picture.shape[0]  # one row: input, PCA and 4 heads


def test_example_script(tmp_path, monkeypatch):
    gallery = write_rgb_folder(tmp_path / "gallery")
    processor = PeraImageProcessor.from_preset("pera-rgb", size=32)
    export_pretrained(PeraForPreTraining(tiny_config()), processor, tmp_path / "run")
    script = REPO_ROOT / "examples" / "visualize_features.py"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            str(script), "--model_name_or_path", str(tmp_path / "run" / "encoder"), "--images", str(gallery[4]),
            "--gallery_dir", str(tmp_path / "gallery"), "--output_dir", str(tmp_path / "figures"), "--device", "cpu",
        ],
    )  # fmt: skip
    runpy.run_path(str(script), run_name="__main__")
    assert (tmp_path / "figures" / "harbour1_features.png").is_file()
