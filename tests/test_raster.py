"""read_raster and read_band_folder on the real GeoTIFF/JPEG data and on synthetic, empty and damaged files."""

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from modeling_pera import PeraImageProcessor
from modeling_pera.data import ImageDecoder
from modeling_pera.evaluation import preprocess_image_file
from modeling_pera.finetuning import RandomResizedCropTransform
from modeling_pera.image_processing_pera import SENTINEL2_L1C_BANDS, SENTINEL2_L2A_BANDS
from modeling_pera.raster import RasterReadError, find_images, read_band_folder, read_image, read_raster


def upsample_2x_bilinear(image: np.ndarray) -> np.ndarray:
    """Independent reference of bilinear x2 upsampling with pixel-centre alignment and edge clamping."""

    def along_axis(values: np.ndarray, axis: int) -> np.ndarray:
        values = np.moveaxis(values, axis, 0)
        previous = np.concatenate([values[:1], values[:-1]])
        following = np.concatenate([values[1:], values[-1:]])
        output = np.empty((2 * len(values),) + values.shape[1:])
        # Output pixel 2i sits at input coordinate i - 1/4, output pixel 2i + 1 at i + 1/4.
        output[0::2] = 0.25 * previous + 0.75 * values
        output[1::2] = 0.75 * values + 0.25 * following
        return np.moveaxis(output, 0, axis)

    return along_axis(along_axis(image.astype(np.float64), 0), 1)


def bigearthnet_patch(shared_data):
    return sorted(path for path in (shared_data / "bigearthnet_s2_tiny").iterdir() if path.is_dir())[0]


def write_band_folder(folder, bands, sizes, patch="patch"):
    """Writes one uint16 GeoTIFF per band; band k holds the constant value 100 * (k + 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (band, size) in enumerate(zip(bands, sizes)):
        tifffile.imwrite(folder / f"{patch}_{band}.tif", np.full((size, size), 100 * (index + 1), dtype=np.uint16))
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# read_raster on real data
# ---------------------------------------------------------------------------------------------------------------------


def test_read_naip_geotiff(shared_data):
    for path in sorted((shared_data / "naip_rgbn").glob("*.tif")):
        stored_hwc = tifffile.imread(path)
        pixels = read_raster(path)
        assert pixels.dtype == np.uint8
        assert pixels.shape == (4,) + stored_hwc.shape[:2]
        np.testing.assert_array_equal(pixels, stored_hwc.transpose(2, 0, 1))


def test_read_ucmerced_jpeg(shared_data):
    path = shared_data / "ucmerced" / "airplane" / "airplane00.jpg"
    pixels = read_raster(path)
    assert pixels.shape == (3, 256, 256) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(path)).transpose(2, 0, 1))


def test_read_single_band_sentinel2_file(shared_data):
    path = next(bigearthnet_patch(shared_data).glob("*_B01.tif"))
    pixels = read_raster(path)
    assert pixels.shape == (1, 20, 20) and pixels.dtype == np.uint16


# ---------------------------------------------------------------------------------------------------------------------
# read_raster on synthetic files
# ---------------------------------------------------------------------------------------------------------------------


TIFF_LAYOUTS = {
    # (bands, height, width) -> the array given to tifffile, and how tifffile should store it
    "interleaved": (lambda bands: bands.transpose(1, 2, 0), {"photometric": "minisblack", "planarconfig": "contig"}),
    "planar": (lambda bands: bands, {"photometric": "minisblack", "planarconfig": "separate"}),
    "page-per-band": (lambda bands: bands, {}),
    "planar-deflate": (lambda bands: bands, {"planarconfig": "separate", "compression": "zlib"}),
}


@pytest.mark.parametrize("layout", sorted(TIFF_LAYOUTS))
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_tiff_layouts_come_back_bands_first(tmp_path, layout, dtype):
    bands = np.arange(5 * 6 * 7).reshape(5, 6, 7).astype(dtype)
    path = tmp_path / f"{layout}.tif"
    to_stored, options = TIFF_LAYOUTS[layout]
    tifffile.imwrite(path, to_stored(bands), **options)
    pixels = read_raster(path)
    assert pixels.dtype == dtype
    np.testing.assert_array_equal(pixels, bands)


def test_tiff_is_recognised_by_content_and_single_band_gets_a_band_axis(tmp_path):
    band = np.arange(12, dtype=np.uint16).reshape(3, 4)
    path = tmp_path / "band.dat"
    tifffile.imwrite(path, band)
    np.testing.assert_array_equal(read_raster(path), band[np.newaxis])


def test_pil_formats(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, size=(6, 7, 4)).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_raster(tmp_path / "rgba.png"), rgba[..., :3].transpose(2, 0, 1))
    np.testing.assert_array_equal(read_raster(tmp_path / "rgba.png", num_channels=4), rgba.transpose(2, 0, 1))

    grey = rgba[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_raster(tmp_path / "grey.png"), grey[np.newaxis])
    np.testing.assert_array_equal(read_raster(tmp_path / "grey.png", num_channels=3), np.stack([grey] * 3))

    sixteen_bit = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(sixteen_bit).save(tmp_path / "sixteen_bit.png")
    assert read_raster(tmp_path / "sixteen_bit.png").max() == 65535

    palette = Image.fromarray(rgba[..., :3]).convert("P")
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(
        read_raster(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
    )


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1"])
def test_a_png_becomes_the_same_bands_in_pretraining_evaluation_fine_tuning_and_the_processor(tmp_path, mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(20, 24, 4)).astype(np.uint8)).convert(mode)
    path = tmp_path / f"{mode}.png"
    image.save(path)
    rgb = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)

    np.testing.assert_array_equal(ImageDecoder(num_channels=3)(path, str(path)).numpy(), rgb)  # pretraining
    np.testing.assert_array_equal(read_raster(path, num_channels=3), rgb)
    processor = PeraImageProcessor(size={"height": 16, "width": 16})
    expected = processor(rgb, input_data_format="channels_first")["pixel_values"][0]
    torch.testing.assert_close(preprocess_image_file(path, processor), expected)  # evaluation
    torch.testing.assert_close(processor(Image.open(path))["pixel_values"][0], expected)
    assert RandomResizedCropTransform(processor, image_size=16)(path).shape == (3, 16, 16)  # fine-tuning


def test_find_images_and_read_image_take_files_and_band_folders_alike(tmp_path):
    write_band_folder(tmp_path / "s2" / "patch", ["B02", "B03", "B04"], [8, 8, 4])
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "tile_01.png")
    (tmp_path / "tile_02.tif").write_bytes(b"")  # zero bytes: skipped
    tifffile.imwrite(tmp_path / "scene_001.tif", np.zeros((8, 8), dtype=np.uint16))  # "_001" is no band name
    tifffile.imwrite(tmp_path / "scene_002.tif", np.zeros((8, 8), dtype=np.uint16))
    found = find_images(tmp_path)
    assert found == sorted(
        [tmp_path / "s2" / "patch", tmp_path / "scene_001.tif", tmp_path / "scene_002.tif", tmp_path / "tile_01.png"]
    )
    assert read_image(found[0], band_order=["B04", "B02"]).shape == (2, 8, 8)
    assert read_image(tmp_path / "tile_01.png").shape == (3, 8, 8)


# ---------------------------------------------------------------------------------------------------------------------
# read_raster errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.tif", "empty.jpg"])
def test_zero_byte_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"Cannot read .*{name}: the file is empty \(0 bytes\)"):
        read_raster(path)


def test_truncated_uncompressed_tiff(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.arange(100 * 100, dtype=np.uint16).reshape(100, 100))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RasterReadError, match=r"cut\.tif: the file is truncated"):
        read_raster(path)


def test_truncated_real_geotiff(shared_data, tmp_path):
    source = sorted((shared_data / "naip_rgbn").glob("*.tif"))[0]
    path = tmp_path / "cut_naip.tif"
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut_naip\.tif"):
        read_raster(path)


def test_truncated_jpeg(shared_data, tmp_path):
    source = shared_data / "ucmerced" / "airplane" / "airplane00.jpg"
    path = tmp_path / "cut.jpg"
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(RasterReadError, match=r"Cannot read .*cut\.jpg as an image: .*truncated"):
        read_raster(path)


def test_garbage_and_missing_files(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(RasterReadError, match=r"Cannot read .*notes\.png as an image"):
        read_raster(path)
    with pytest.raises(FileNotFoundError, match="No raster file"):
        read_raster(tmp_path / "absent.tif")


# ---------------------------------------------------------------------------------------------------------------------
# read_band_folder
# ---------------------------------------------------------------------------------------------------------------------


def test_bigearthnet_folder_is_stacked_on_the_10m_grid(shared_data):
    patch = bigearthnet_patch(shared_data)
    assert any(path.suffix == ".json" for path in patch.iterdir())  # the labels file is ignored
    stacked = read_band_folder(patch)
    assert stacked.shape == (12, 120, 120) and stacked.dtype == np.float32

    def band_file(band):
        return tifffile.imread(next(patch.glob(f"*_{band}.tif")))

    # 10 m bands are copied as they are.
    for band in ("B02", "B03", "B04", "B08"):
        np.testing.assert_array_equal(stacked[SENTINEL2_L2A_BANDS.index(band)], band_file(band))
    # 20 m bands are upsampled bilinearly from 60x60.
    for band in ("B05", "B8A", "B12"):
        source = band_file(band)
        assert source.shape == (60, 60)
        np.testing.assert_allclose(
            stacked[SENTINEL2_L2A_BANDS.index(band)], upsample_2x_bilinear(source), rtol=1e-6, atol=1e-3
        )
    # 60 m bands come from 20x20 and keep their mean.
    b01 = band_file("B01")
    assert b01.shape == (20, 20)
    assert abs(stacked[0].mean() - b01.mean()) < 0.02 * b01.mean()


def test_bigearthnet_folder_lacks_l1c_band_b10(shared_data):
    with pytest.raises(ValueError, match=r"Missing band files \['B10'\].*found bands \['B01', 'B02'"):
        read_band_folder(bigearthnet_patch(shared_data), band_order=SENTINEL2_L1C_BANDS)


def test_band_order_follows_the_declaration_not_the_file_names(tmp_path):
    bands = ["B04", "B8A", "B02", "B11"]
    folder = write_band_folder(tmp_path / "patch", bands, sizes=[12, 6, 12, 6])
    (folder / "patch_labels_metadata.json").write_text(json.dumps({"labels": []}))

    stacked = read_band_folder(folder, band_order=bands)
    assert stacked.shape == (4, 12, 12)
    np.testing.assert_array_equal(stacked[:, 5, 7], [100, 200, 300, 400])

    reordered = read_band_folder(folder, band_order=["B11", "B02"], size=(4, 3), resample="bicubic")
    assert reordered.shape == (2, 4, 3)
    np.testing.assert_allclose(reordered[:, 0, 0], [400, 300], rtol=1e-5)


def test_nearest_resampling_repeats_pixels(tmp_path):
    folder = tmp_path / "patch"
    folder.mkdir()
    fine = np.arange(16, dtype=np.uint16).reshape(4, 4)
    coarse = np.array([[1, 2], [3, 4]], dtype=np.uint16)
    tifffile.imwrite(folder / "patch_B02.tif", fine)
    tifffile.imwrite(folder / "patch_B05.tif", coarse)
    stacked = read_band_folder(folder, band_order=["B02", "B05"], resample="nearest")
    np.testing.assert_array_equal(stacked[1], np.kron(coarse, np.ones((2, 2))))


def test_band_folder_errors(tmp_path):
    folder = write_band_folder(tmp_path / "patch", ["B02", "B03"], sizes=[8, 8])
    with pytest.raises(ValueError, match=r"Missing band files \['B04', 'B08'\].*found bands \['B02', 'B03'\]"):
        read_band_folder(folder, band_order=["B02", "B03", "B04", "B08"])

    tifffile.imwrite(folder / "other_B02.tiff", np.zeros((8, 8), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"Several files hold the same band.*'B02'"):
        read_band_folder(folder, band_order=["B02", "B03"])

    multi_band = write_band_folder(tmp_path / "multi", ["B03"], sizes=[8])
    tifffile.imwrite(multi_band / "multi_B02.tif", np.zeros((3, 8, 8), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"multi_B02\.tif should hold the single band B02 but has 3 bands"):
        read_band_folder(multi_band, band_order=["B02", "B03"])

    empty_band = write_band_folder(tmp_path / "empty", ["B03"], sizes=[8])
    (empty_band / "empty_B02.tif").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty_B02\.tif: the file is empty"):
        read_band_folder(empty_band, band_order=["B02", "B03"])

    with pytest.raises(ValueError, match="`resample` must be one of"):
        read_band_folder(folder, band_order=["B03"], resample="lanczos")
    with pytest.raises(ValueError, match="is not a folder"):
        read_band_folder(tmp_path / "absent")
