"""Pretraining from large scenes: random windows read alone (never the whole scene), through the overviews when
downsampled, nodata windows skipped and counted, and a clear message for each bad scene."""

import sys

import numpy as np
import pytest
import torch

from modeling_pera import PeraImageProcessor
from modeling_pera.data import SceneDataset, check_dataset, find_scenes, make_pretraining_dataloader
from modeling_pera.pretraining import pretrain
from modeling_pera.raster import RasterReadError
from modeling_pera.scene_io import write_band_stack_vrt, write_synthetic_scene
from pera_testing import (
    assert_resumes_exactly,
    sixteen_bit_start,
    sixteen_bit_views,
    tiny_arguments,
    tiny_config_overrides,
)


rasterio = pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")
from rasterio.transform import from_origin  # noqa: E402
from rasterio.windows import Window  # noqa: E402


NODATA = 0  # write_synthetic_scene's nodata; its default border of 1500 px is 39 % of the 8000 px scene


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory):
    return write_synthetic_scene(tmp_path_factory.mktemp("scenes") / "scene.tif")


class ReadLog:
    """Records every window rasterio is asked to read."""

    def __init__(self, monkeypatch):
        self.reads = []
        original = rasterio.io.DatasetReader.read

        def read(scene, *arguments, **keywords):
            self.reads.append((keywords.get("window"), keywords.get("out_shape")))
            return original(scene, *arguments, **keywords)

        monkeypatch.setattr(rasterio.io.DatasetReader, "read", read)


def test_windows_are_read_alone_through_the_overviews_and_nodata_is_skipped(big_scene, monkeypatch):
    log = ReadLog(monkeypatch)
    dataset = SceneDataset([big_scene], sixteen_bit_views(), seed=1, window_size=256, sample_size=32)
    # Valid area over a window's: (8000 - 2 * 1500)^2 / 256^2 = 381, measured on the 256 px mask (edges blur).
    assert abs(len(dataset) - 381) <= 0.05 * 381
    samples = [dataset[(0, index)] for index in range(24)]
    assert all(sample["student_global"].shape == (2, 4, 32, 32) for sample in samples)
    # Each read is one 256 px window read at 32 px (GDAL takes it from the overview 8x smaller), never the scene.
    assert len(log.reads) >= 24
    assert all((window.width, window.height) == (256, 256) for window, _ in log.reads)
    assert all(out_shape == (4, 32, 32) for _, out_shape in log.reads)
    # Windows drawn in the nodata border are skipped (most without a read, on the low-resolution mask) and counted.
    assert sum(sample["replaced"] for sample in samples) > 0
    # The same sample twice is the same window and views: exact resume.
    torch.testing.assert_close(dataset[(0, 5)], samples[5], rtol=0, atol=0)


def test_a_full_resolution_window_holds_the_scene_s_pixels(big_scene):
    dataset = SceneDataset([big_scene], sixteen_bit_views(), seed=0, window_size=64)
    description = dataset.describe(3)
    row, col = (int(part.split()[-1]) for part in description.split("(")[1].split(",")[:2])
    with rasterio.open(big_scene) as scene:
        expected = scene.read(window=Window(col, row, 64, 64)).astype(np.float32)
    got = dataset.load_image(3)
    valid = expected.min(0) != NODATA
    assert valid.mean() >= 0.5 and got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy()[:, valid], expected[:, valid])
    assert (got.numpy()[:, ~valid] == 0).all()


def test_pretraining_from_a_scene_trains_and_resumes_exactly(big_scene, tmp_path):
    scenes = dict(
        train_scenes=[str(big_scene)],
        scene_window_size=128,
        scene_sample_size=32,
        model_name_or_path=str(sixteen_bit_start(tmp_path / "start")),
        dataloader_num_workers=2,
    )
    full = assert_resumes_exactly(tmp_path, **scenes)
    assert full["replaced_samples"] > 0  # windows in the nodata border, skipped
    # The exported processor records the pixel size of the windows: 10 m scene pixels, 128 px read at 32 px.
    assert PeraImageProcessor.from_pretrained(tmp_path / "full" / "encoder").ground_sampling_distance == 40.0


def test_a_new_model_takes_the_scenes_own_band_statistics(big_scene, tmp_path):
    statistics = dict(image_mean=[1400.0, 1410.0, 1420.0, 1430.0], image_std=[250.0] * 4)
    arguments = tiny_arguments(
        None,
        tmp_path / "run",
        config_overrides=tiny_config_overrides(num_local_crops=2, num_channels=4),
        train_scenes=[str(big_scene)],
        scene_window_size=128,
        scene_sample_size=32,
        max_train_steps=2,
        **statistics,
    )
    assert pretrain(arguments)["completed_steps"] == 2
    processor = PeraImageProcessor.from_pretrained(tmp_path / "run" / "encoder")
    assert processor.image_mean == statistics["image_mean"] and processor.image_std == statistics["image_std"]
    assert not processor.do_rescale
    with pytest.raises(ValueError, match="--image_mean and --image_std go together"):
        tiny_arguments(None, tmp_path / "other", image_mean=[1.0])
    with pytest.raises(ValueError, match="--image_mean has 1 values and --image_std 2"):
        tiny_arguments(None, tmp_path / "other", image_mean=[1.0], image_std=[1.0, 2.0])
    with pytest.raises(ValueError, match="--image_std must be positive"):
        tiny_arguments(None, tmp_path / "other", image_mean=[1.0], image_std=[0.0])
    with pytest.raises(ValueError, match="--image_mean has 4 values, the model has 3 bands"):
        pretrain(tiny_arguments(None, tmp_path / "three", train_scenes=[str(big_scene)], **statistics))


def test_bad_scenes_are_refused_at_start_with_their_name(big_scene, tmp_path):
    small = write_synthetic_scene(tmp_path / "small.tif", size=512, border=0)
    other_crs = write_synthetic_scene(tmp_path / "utm32.tif", size=512, border=0, crs="EPSG:32632")
    three_bands = write_synthetic_scene(tmp_path / "rgb.tif", size=512, border=0, count=3)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(small.read_bytes()[:5000])
    views = sixteen_bit_views()
    with pytest.raises(ValueError, match="utm32.tif is in EPSG:32632, .*small.tif in EPSG:32633"):
        SceneDataset([small, other_crs], views)
    with pytest.raises(ValueError, match="rgb.tif has 3 bands but the model takes 4"):
        SceneDataset([three_bands], views)
    with pytest.raises(ValueError, match=r"rgb.tif has 3 bands \(indices 0-2\); --bands asks for \[3\]"):
        SceneDataset([three_bands], views, bands=[0, 1, 2, 3])
    with pytest.raises(RasterReadError, match="corrupt.tif"):
        SceneDataset([small, corrupt], views)
    with pytest.raises(ValueError, match="small.tif is 512 x 512 px, smaller than a 1024 px window"):
        SceneDataset([small], views, window_size=1024)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No scenes"):
        find_scenes([tmp_path / "empty"])
    # A scene of nodata only: no window can be used, said at the start by check_dataset.
    empty = write_synthetic_scene(tmp_path / "nodata.tif", size=512, border=256)
    with pytest.raises(RuntimeError, match="None of 100 windows of 64 px .* 50% valid pixels"):
        check_dataset(SceneDataset([empty], views, window_size=64))


def test_scenes_without_rasterio_say_how_to_install_it(big_scene, monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(ImportError, match=r"pip install 'modeling_pera\[geo\]'"):
        SceneDataset([big_scene], sixteen_bit_views())


def test_scene_windows_load_in_dataloader_workers(big_scene):
    dataset = SceneDataset([big_scene], sixteen_bit_views(), window_size=128, sample_size=32, windows_per_epoch=8)
    check_dataset(dataset)  # reads in this process first, as a run does: forked workers must open their own files
    loader = make_pretraining_dataloader(dataset, batch_size=4, num_workers=2)
    loader.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["student_global_pixel_values"].shape == (2, 4, 4, 32, 32)
    in_main = [dataset[(0, index)]["student_global"] for index in range(8)]
    order = list(loader.sampler)
    by_index = {index: position for position, (_, index) in enumerate(order)}
    stacked = torch.cat([batch["student_global_pixel_values"] for batch in batches], dim=1)
    for index, views in enumerate(in_main):
        torch.testing.assert_close(stacked[:, by_index[index]], views, rtol=0, atol=0)


def write_band_file(path, pixels: np.ndarray, pixel_size: float, crs: str = "EPSG:32633"):
    """A single-band uint16 GeoTIFF over the same 5120 m square, whatever its pixel size."""
    profile = {
        "driver": "GTiff",
        "width": pixels.shape[1],
        "height": pixels.shape[0],
        "count": 1,
        "dtype": "uint16",
        "crs": crs,
        "transform": from_origin(500_000, 5_000_000, pixel_size, pixel_size),
        "nodata": NODATA,
    }
    with rasterio.open(path, "w", **profile) as band:
        band.write(pixels, 1)
    return path


def test_band_files_of_two_resolutions_stack_into_one_scene(tmp_path):
    generator = np.random.default_rng(0)
    blue = generator.integers(1000, 2000, (512, 512), dtype=np.uint16)  # 10 m
    red_edge = generator.integers(1000, 2000, (256, 256), dtype=np.uint16)  # 20 m
    band_files = [
        write_band_file(tmp_path / "T33_B02.tif", blue, 10.0),
        write_band_file(tmp_path / "T33_B05.tif", red_edge, 20.0),
    ]
    stack = write_band_stack_vrt(band_files, tmp_path / "T33.vrt", resampling="nearest")
    on_the_10_m_grid = np.repeat(np.repeat(red_edge, 2, axis=0), 2, axis=1)
    with rasterio.open(stack) as scene:
        assert (scene.count, scene.width, scene.res, scene.descriptions) == (2, 512, (10.0, 10.0), ("B02", "B05"))
        np.testing.assert_array_equal(scene.read(1), blue)
        np.testing.assert_array_equal(scene.read(2), on_the_10_m_grid)
    # A scene like any other: bands picked by name, in the order asked for.
    dataset = SceneDataset([stack], sixteen_bit_views(num_channels=2), window_size=64, bands=["B05", "B02"])
    row, col = (int(part.split()[-1]) for part in dataset.describe(0).split("(")[1].split(",")[:2])
    window = dataset.load_image(0).numpy()
    np.testing.assert_array_equal(window[0], on_the_10_m_grid[row : row + 64, col : col + 64])
    np.testing.assert_array_equal(window[1], blue[row : row + 64, col : col + 64])
    assert dataset.ground_sampling_distance == 10.0


def test_band_files_that_do_not_stack_are_named(tmp_path):
    pixels = np.ones((64, 64), dtype=np.uint16)
    blue = write_band_file(tmp_path / "a_B02.tif", pixels, 80.0)
    with pytest.raises(ValueError, match="b_B03.tif is uint16 in EPSG:32632, .*a_B02.tif uint16 in EPSG:32633"):
        write_band_stack_vrt(
            [blue, write_band_file(tmp_path / "b_B03.tif", pixels, 80.0, crs="EPSG:32632")], tmp_path / "x.vrt"
        )
    with pytest.raises(ValueError, match="a_B02.tif covers .*, .*c_B04.tif .*: stack bands of one area"):
        write_band_stack_vrt([blue, write_band_file(tmp_path / "c_B04.tif", pixels, 40.0)], tmp_path / "x.vrt")
