"""PeraImageProcessor: presets, input types and layouts, save/load and errors, on real and synthetic images."""

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from modeling_pera.image_processing_pera import (
    PERA_PROCESSOR_PRESETS,
    PERA_RGB_MEAN,
    PERA_RGB_STD,
    RGBN_MEAN,
    RGBN_STD,
    SENTINEL2_L1C_BANDS,
    SENTINEL2_L1C_MEAN,
    SENTINEL2_L1C_STD,
    SENTINEL2_L2A_BANDS,
    SENTINEL2_L2A_MEAN,
    SENTINEL2_L2A_STD,
    PeraImageProcessor,
)
from modeling_pera.raster import read_band_folder, read_raster


def normalise(bands_first: np.ndarray, mean, std, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Hand computation of the processor's arithmetic without resizing, in float64."""
    pixels = (bands_first.astype(np.float64) - offset) * scale
    return (pixels - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]


def plain_processor(num_channels: int, **kwargs) -> PeraImageProcessor:
    """A processor that only reorders bands and casts to float32 (unless `kwargs` say otherwise)."""
    options = {
        "num_channels": num_channels,
        "image_mean": [0.0] * num_channels,
        "image_std": [1.0] * num_channels,
        "do_rescale": False,
        "do_resize": False,
    }
    options.update(kwargs)
    return PeraImageProcessor(**options)


# ---------------------------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------------------------


def test_ucmerced_jpeg_with_pera_rgb_preset(shared_data):
    path = shared_data / "ucmerced" / "agricultural" / "agricultural00.jpg"
    image = Image.open(path)
    raw = np.asarray(image).transpose(2, 0, 1)
    processor = PeraImageProcessor.from_preset("pera-rgb")

    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 448, 448)
    assert pixel_values.dtype == torch.float32

    # Without resizing, every pixel is (value / 255 - mean) / std with the released PerA statistics.
    unresized = processor(image, do_resize=False)["pixel_values"][0].numpy()
    expected = normalise(raw, PERA_RGB_MEAN, PERA_RGB_STD, scale=1 / 255)
    np.testing.assert_allclose(unresized, expected, atol=1e-5)

    # The resized output agrees with PIL's own bilinear resize up to PIL's rounding to uint8 (about 1.5 grey levels).
    pil_resized = np.asarray(image.resize((448, 448), Image.BILINEAR)).transpose(2, 0, 1)
    reference = normalise(pil_resized, PERA_RGB_MEAN, PERA_RGB_STD, scale=1 / 255)
    assert np.abs(pixel_values[0].numpy() - reference).max() < 0.05


def test_naip_rgbn_geotiff_keeps_band_order(shared_data):
    path = sorted((shared_data / "naip_rgbn").glob("*.tif"))[1]
    stored_hwc = tifffile.imread(path)
    assert stored_hwc.ndim == 3 and stored_hwc.shape[-1] == 4
    processor = PeraImageProcessor.from_preset("rgbn", do_resize=False)

    from_reader = processor(read_raster(path))["pixel_values"]
    height, width = stored_hwc.shape[:2]
    assert from_reader.shape == (1, 4, height, width)

    nir = from_reader[0, 3].numpy()
    expected_nir = (stored_hwc[..., 3].astype(np.float64) / 255 - RGBN_MEAN[3]) / RGBN_STD[3]
    np.testing.assert_allclose(nir, expected_nir, atol=1e-5)
    expected_red = (stored_hwc[..., 0].astype(np.float64) / 255 - RGBN_MEAN[0]) / RGBN_STD[0]
    np.testing.assert_allclose(from_reader[0, 0].numpy(), expected_red, atol=1e-5)

    # The file's own HWC layout and PIL (which opens 4-band TIFFs as RGBA) give the very same tensor.
    assert torch.equal(processor(stored_hwc)["pixel_values"], from_reader)
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        assert torch.equal(processor(image)["pixel_values"], from_reader)

    resized = PeraImageProcessor.from_preset("rgbn")(stored_hwc)["pixel_values"]
    assert resized.shape == (1, 4, 448, 448)


def test_bigearthnet_patch_with_sentinel2_l2a_preset(shared_data):
    patch = sorted(path for path in (shared_data / "bigearthnet_s2_tiny").iterdir() if path.is_dir())[0]
    stacked = read_band_folder(patch)
    processor = PeraImageProcessor.from_preset("sentinel2-l2a", do_resize=False)

    pixel_values = processor(stacked)["pixel_values"]
    assert pixel_values.shape == (1, 12, 120, 120)

    # Band B02 (a 10 m band, index 1) is the normalised file content, with no rescaling of the DN values.
    b02 = tifffile.imread(next(patch.glob("*_B02.tif")))
    index = SENTINEL2_L2A_BANDS.index("B02")
    assert index == 1
    expected = (b02.astype(np.float64) - SENTINEL2_L2A_MEAN[index]) / SENTINEL2_L2A_STD[index]
    np.testing.assert_allclose(pixel_values[0, index].numpy(), expected, atol=1e-5)

    # Band B05 (20 m, index 4) went through the 60x60 -> 120x120 upsampling of read_band_folder.
    index = SENTINEL2_L2A_BANDS.index("B05")
    expected = (stacked[index] - SENTINEL2_L2A_MEAN[index]) / SENTINEL2_L2A_STD[index]
    np.testing.assert_allclose(pixel_values[0, index].numpy(), expected, rtol=1e-5, atol=1e-5)

    assert PeraImageProcessor.from_preset("sentinel2-l2a")(stacked)["pixel_values"].shape == (1, 12, 448, 448)


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------


def test_sentinel2_presets_pair_each_band_with_its_statistics():
    assert len(SENTINEL2_L1C_BANDS) == 13 and len(SENTINEL2_L2A_BANDS) == 12
    assert SENTINEL2_L2A_BANDS == [band for band in SENTINEL2_L1C_BANDS if band != "B10"]
    l1c_mean = dict(zip(SENTINEL2_L1C_BANDS, SENTINEL2_L1C_MEAN))
    l1c_std = dict(zip(SENTINEL2_L1C_BANDS, SENTINEL2_L1C_STD))
    l2a_mean = dict(zip(SENTINEL2_L2A_BANDS, SENTINEL2_L2A_MEAN))
    l2a_std = dict(zip(SENTINEL2_L2A_BANDS, SENTINEL2_L2A_STD))
    # Values of hf-notes.md (SSL4EO-S12), looked up by band name so that a shifted list fails.
    assert (l1c_mean["B01"], l1c_mean["B8A"], l1c_mean["B09"], l1c_mean["B10"], l1c_mean["B12"]) == (
        1605.58, 2560.30, 830.07, 22.10, 1524.07
    )  # fmt: skip
    assert (l1c_std["B08"], l1c_std["B10"], l1c_std["B11"]) == (1248.43, 51.15, 1336.10)
    assert (l2a_mean["B01"], l2a_mean["B8A"], l2a_mean["B09"], l2a_mean["B11"]) == (752.40, 2581.65, 2645.52, 2368.51)
    assert (l2a_std["B02"], l2a_std["B09"], l2a_std["B12"]) == (1155.15, 1582.28, 1343.48)


@pytest.mark.parametrize("name", sorted(PERA_PROCESSOR_PRESETS))
def test_every_preset_builds_a_consistent_processor(name):
    processor = PeraImageProcessor.from_preset(name)
    preset = PERA_PROCESSOR_PRESETS[name]
    assert processor.num_channels == preset["num_channels"] == len(processor.image_mean) == len(processor.band_names)
    assert processor.image_mean == preset["image_mean"]
    image = np.full((processor.num_channels, 32, 32), 100, dtype=np.uint16)
    assert processor(image)["pixel_values"].shape == (1, processor.num_channels, 448, 448)


def test_preset_rescaling_and_offset():
    rgb = PeraImageProcessor.from_preset("pera-rgb")
    assert (rgb.do_rescale, rgb.rescale_factor, rgb.offset) == (True, 1 / 255, 0.0)
    assert rgb.band_names == ["red", "green", "blue"]
    l2a = PeraImageProcessor.from_preset("sentinel2-l2a")
    assert (l2a.do_rescale, l2a.offset) == (False, 0.0)
    assert l2a.band_names == SENTINEL2_L2A_BANDS
    assert len(l2a.wavelengths) == 12 and l2a.wavelengths[SENTINEL2_L2A_BANDS.index("B08")] == 0.833

    # Processing baseline 04.00 products store DN = 10000 * reflectance + 1000: offset=1000 undoes the shift.
    reflectance_dn = np.random.default_rng(0).integers(0, 9000, size=(12, 16, 16)).astype(np.uint16)
    shifted = PeraImageProcessor.from_preset("sentinel2-l2a", offset=1000)(reflectance_dn + 1000)["pixel_values"]
    harmonised = l2a(reflectance_dn)["pixel_values"]
    torch.testing.assert_close(shifted, harmonised)
    assert not torch.allclose(l2a(reflectance_dn + 1000)["pixel_values"], harmonised)


def test_default_processor_is_the_pera_rgb_preset():
    assert PeraImageProcessor().to_dict() == PeraImageProcessor.from_preset("pera-rgb").to_dict()
    assert PeraImageProcessor(num_channels=1, image_mean=0.5, image_std=0.25).band_names is None


def test_unknown_preset_and_option_are_rejected():
    valid_names = "pera-rgb, rgbn, sentinel2-l1c, sentinel2-l2a"
    with pytest.raises(ValueError, match=rf"Unknown PerA preset 'sentinel2'.*Valid presets: {valid_names}"):
        PeraImageProcessor.from_preset("sentinel2")
    with pytest.raises(ValueError, match=r"Unknown options \['ofset'\]"):
        PeraImageProcessor.from_preset("sentinel2-l2a", ofset=1000)


# ---------------------------------------------------------------------------------------------------------------------
# Input types, dtypes and layouts
# ---------------------------------------------------------------------------------------------------------------------


def test_uint16_values_are_read_exactly():
    image = np.array([[[0, 255, 256], [40000, 65535, 1]]], dtype=np.uint16)
    pixel_values = plain_processor(1)(image)["pixel_values"]
    torch.testing.assert_close(pixel_values[0], torch.from_numpy(image.astype(np.float32)), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64"])
def test_supported_dtypes_give_the_same_output(dtype):
    values = np.random.default_rng(1).integers(0, 200, size=(3, 20, 24))
    processor = PeraImageProcessor(size=16)
    expected = processor(values.astype(np.float32))["pixel_values"]
    torch.testing.assert_close(processor(values.astype(dtype))["pixel_values"], expected)
    torch.testing.assert_close(processor(torch.from_numpy(values.astype(dtype)))["pixel_values"], expected)


def test_channels_first_and_last_numpy_and_torch_agree():
    chw = np.random.default_rng(2).integers(0, 10000, size=(12, 30, 40)).astype(np.uint16)
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
    processor = PeraImageProcessor.from_preset("sentinel2-l2a", size=24)
    expected = processor(chw)["pixel_values"]
    assert expected.shape == (1, 12, 24, 24)
    for image in (hwc, torch.from_numpy(chw.astype(np.int32)), torch.from_numpy(hwc.astype(np.int32))):
        assert torch.equal(processor(image)["pixel_values"], expected)
    # Big-endian and non-contiguous arrays, as TIFF readers may return them.
    assert torch.equal(processor(chw.astype(">u2"))["pixel_values"], expected)
    assert torch.equal(processor(chw.transpose(1, 2, 0))["pixel_values"], expected)
    # An explicit layout gives the same result as the inferred one.
    assert torch.equal(processor(hwc, input_data_format="channels_last")["pixel_values"], expected)


def test_batches_lists_and_return_types():
    rng = np.random.default_rng(3)
    small = rng.integers(0, 255, size=(3, 20, 30)).astype(np.uint8)
    large = rng.integers(0, 255, size=(50, 40, 3)).astype(np.uint8)
    processor = PeraImageProcessor(size={"height": 32, "width": 48})

    batch = processor([small, large])["pixel_values"]
    assert batch.shape == (2, 3, 32, 48)
    assert torch.equal(batch[0], processor(small)["pixel_values"][0])
    assert torch.equal(batch[1], processor(large)["pixel_values"][0])

    stacked = np.stack([small, small])
    assert torch.equal(processor(stacked)["pixel_values"], processor([small, small])["pixel_values"])

    as_numpy = processor([small, large], return_tensors="np")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_array_equal(as_numpy, batch.numpy())

    unresized = processor([small, large], do_resize=False, return_tensors=None)["pixel_values"]
    assert [tuple(image.shape) for image in unresized] == [(3, 20, 30), (3, 50, 40)]


def test_resample_and_antialiasing():
    image = np.random.default_rng(4).integers(0, 255, size=(3, 64, 64)).astype(np.uint8)
    bilinear = PeraImageProcessor(size=100, resample=2)(image)["pixel_values"]
    bicubic = PeraImageProcessor(size=100, resample=Image.Resampling.BICUBIC)(image)["pixel_values"]
    assert bicubic.shape == bilinear.shape == (1, 3, 100, 100)
    assert not torch.allclose(bilinear, bicubic)

    # Downsampling a one-pixel checkerboard by 3: bilinear sampling without antialiasing would land exactly on pixels
    # and return a checkerboard of 0 and 255; the antialiasing filter averages it to about 127.5.
    checkerboard = (np.indices((63, 63)).sum(axis=0) % 2 * 255).astype(np.uint8)
    downsampled = plain_processor(1, do_resize=True, size=21)(checkerboard)["pixel_values"]
    assert downsampled.shape == (1, 1, 21, 21)
    assert (downsampled - 127.5).abs().max() < 5


def test_per_call_overrides_do_not_change_the_processor():
    processor = PeraImageProcessor()
    image = np.random.default_rng(5).integers(0, 255, size=(3, 8, 8)).astype(np.uint8)
    raw = processor(image, do_resize=False, do_normalize=False, do_rescale=False)["pixel_values"]
    torch.testing.assert_close(raw[0], torch.from_numpy(image.astype(np.float32)))
    with_mean = processor(image, do_resize=False, image_mean=[0.5] * 3, image_std=0.5)["pixel_values"]
    torch.testing.assert_close(with_mean[0], torch.from_numpy((image / 255 - 0.5) / 0.5).float())
    assert processor.image_mean == PERA_RGB_MEAN and processor.do_resize


def test_pil_modes():
    rng = np.random.default_rng(6)
    rgb_array = rng.integers(0, 255, size=(20, 24, 3)).astype(np.uint8)
    rgba_array = np.concatenate([rgb_array, rng.integers(0, 255, size=(20, 24, 1)).astype(np.uint8)], axis=-1)
    rgb_processor = PeraImageProcessor(do_resize=False)

    expected_rgb = rgb_processor(rgb_array)["pixel_values"]
    assert torch.equal(rgb_processor(Image.fromarray(rgb_array))["pixel_values"], expected_rgb)
    # RGBA for a 3-band processor: alpha dropped. For a 4-band processor: the 4 bands are kept.
    assert torch.equal(rgb_processor(Image.fromarray(rgba_array))["pixel_values"], expected_rgb)
    rgbn_processor = PeraImageProcessor.from_preset("rgbn", do_resize=False)
    assert torch.equal(
        rgbn_processor(Image.fromarray(rgba_array))["pixel_values"],
        rgbn_processor(rgba_array)["pixel_values"],
    )
    # Palette images are expanded to RGB.
    palette = Image.fromarray(rgb_array).convert("P")
    assert torch.equal(
        rgb_processor(palette)["pixel_values"], rgb_processor(np.asarray(palette.convert("RGB")))["pixel_values"]
    )

    # Single-band modes, read without any rescaling or rounding.
    single_band = plain_processor(1)
    grey = rng.integers(0, 255, size=(10, 12)).astype(np.uint8)
    sixteen_bit = np.array([[0, 300, 65535]], dtype=np.uint16)
    int_32 = np.array([[-5, 70000, 1]], dtype=np.int32)
    floats = np.array([[0.25, -1.5, 1e4]], dtype=np.float32)
    for image, values in (
        (Image.fromarray(grey), grey),
        (Image.fromarray(sixteen_bit), sixteen_bit),
        (Image.fromarray(int_32), int_32),
        (Image.fromarray(floats), floats),
    ):
        assert image.mode in ("L", "I;16", "I", "F")
        output = single_band(image)["pixel_values"]
        torch.testing.assert_close(output[0, 0], torch.from_numpy(values.astype(np.float32)), rtol=0, atol=0)

    # A grayscale image is repeated into the 3 bands of an RGB model (the package's one rule, pil_image_to_bands); an
    # array has no mode to say it is grayscale, so a 1-band array is refused.
    grey_rgb = rgb_processor(np.stack([grey] * 3), input_data_format="channels_first")["pixel_values"]
    assert torch.equal(rgb_processor(Image.fromarray(grey))["pixel_values"], grey_rgb)
    with pytest.raises(ValueError, match=r"expects 3 bands \(red, green, blue\) but image 0 has 1 bands"):
        rgb_processor(grey)
    # Other colour spaces become RGB.
    cmyk = Image.fromarray(rgb_array).convert("CMYK")
    expected_cmyk = rgb_processor(np.asarray(cmyk.convert("RGB")))["pixel_values"]
    assert torch.equal(rgb_processor(cmyk)["pixel_values"], expected_cmyk)


# ---------------------------------------------------------------------------------------------------------------------
# Save and load
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "processor",
    [
        PeraImageProcessor.from_preset("sentinel2-l2a", offset=1000, size=64, resample=3),
        PeraImageProcessor(
            num_channels=2,
            image_mean=[0.1, 0.2],
            image_std=[0.3, 0.4],
            band_names=["VV", "VH"],
            wavelengths=[55500.0, 55500.0],
            do_rescale=False,
            size=(40, 56),
        ),
    ],
    ids=["sentinel2-l2a-offset", "custom-2-band"],
)
def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    for name in ("num_channels", "band_names", "wavelengths", "offset", "image_mean", "image_std", "resample"):
        assert saved[name] == getattr(processor, name)
    assert saved["size"] == {"height": processor.size["height"], "width": processor.size["width"]}

    loaded = PeraImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = np.random.default_rng(7).integers(0, 3000, size=(processor.num_channels, 33, 35)).astype(np.uint16)
    assert torch.equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])

    # Options given to from_pretrained override the saved ones.
    assert PeraImageProcessor.from_pretrained(tmp_path, offset=5.0).offset == 5.0


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_wrong_band_count_names_expected_got_and_fix():
    rgb = PeraImageProcessor()
    with pytest.raises(ValueError, match=r"expects 3 bands .* has 12 bands.*from_preset\('sentinel2-l2a'\)"):
        rgb(np.zeros((12, 20, 20), dtype=np.uint16), input_data_format="channels_first")
    with pytest.raises(ValueError, match=r"neither the first nor the last axis.*from_preset\('sentinel2-l1c'\)"):
        rgb(np.zeros((13, 20, 20), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"expects 12 bands .*image 1 has 3 bands.*from_preset\('pera-rgb'\)"):
        PeraImageProcessor.from_preset("sentinel2-l2a")(
            [np.zeros((12, 8, 8)), np.zeros((3, 8, 8))], input_data_format="channels_first"
        )
    with pytest.raises(ValueError, match=r"expects 3 bands .*has 1 bands"):
        rgb(np.zeros((20, 20), dtype=np.uint8))


@pytest.mark.parametrize("dtype", [bool, np.complex64, object, np.uint32, np.int8])
def test_unsupported_numpy_dtype(dtype):
    with pytest.raises(ValueError, match=f"unsupported dtype {np.dtype(dtype).name}"):
        PeraImageProcessor()(np.zeros((3, 8, 8), dtype=dtype))


def test_unsupported_torch_dtype_and_input_type():
    with pytest.raises(ValueError, match=r"unsupported dtype torch\.bool"):
        PeraImageProcessor()(torch.zeros((3, 8, 8), dtype=torch.bool))
    with pytest.raises(ValueError, match="is a str; expected a PIL image"):
        PeraImageProcessor()("image.tif")
    with pytest.raises(ValueError, match="No images were given"):
        PeraImageProcessor()([])


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(bad_value):
    image = np.zeros((3, 8, 8), dtype=np.float32)
    image[1, 2, 3] = bad_value
    with pytest.raises(ValueError, match="Image 0 contains NaN or infinite values"):
        PeraImageProcessor()(image)
    with pytest.raises(ValueError, match="Image 1 contains NaN or infinite values"):
        PeraImageProcessor()([np.zeros((3, 8, 8)), torch.from_numpy(image)])


def test_ambiguous_layout_asks_for_input_data_format():
    image = np.random.default_rng(8).random((3, 10, 3)).astype(np.float32)
    processor = PeraImageProcessor(do_resize=False)
    with pytest.raises(ValueError, match="input_data_format='channels_first' or input_data_format='channels_last'"):
        processor(image)
    assert processor(image, input_data_format="channels_first")["pixel_values"].shape == (1, 3, 10, 3)
    assert processor(image, input_data_format="channels_last")["pixel_values"].shape == (1, 3, 3, 10)
    with pytest.raises(ValueError, match="`input_data_format` must be 'channels_first' or 'channels_last'"):
        processor(image, input_data_format="bands_first")


def test_different_sizes_without_resize():
    with pytest.raises(ValueError, match=r"different sizes \[\(8, 8\), \(9, 8\)\] and `do_resize` is False"):
        PeraImageProcessor(do_resize=False)([np.zeros((3, 8, 8)), np.zeros((3, 9, 8))])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_mean": [0.1, 0.2]}, r"`image_mean` has 2 values but `num_channels` is 3"),
        ({"image_std": [0.1] * 4}, r"`image_std` has 4 values but `num_channels` is 3"),
        ({"num_channels": 12}, r"`image_mean` has 3 values but `num_channels` is 12.*from_preset"),
        ({"image_std": [0.1, 0.0, 0.1]}, r"`image_std` must be positive"),
        ({"image_mean": [0.1, float("nan"), 0.1]}, r"`image_mean` must be finite"),
        ({"band_names": ["red", "green"]}, r"`band_names` must name each of the 3 bands"),
        ({"band_names": ["red", "red", "blue"]}, r"`band_names` must be unique"),
        ({"wavelengths": [0.66, 0.56]}, r"`wavelengths` must give one wavelength .* 3 bands"),
        ({"wavelengths": [0.66, -0.56, 0.49]}, r"`wavelengths` must be positive"),
        ({"resample": 0}, r"`resample` must be 2 \(bilinear\) or 3 \(bicubic\), got 0"),
        ({"size": {"shortest_edge": 224}}, r"`size` must be an int or a dict with 'height' and 'width'"),
        ({"rescale_factor": 0.0}, r"`rescale_factor` must be a positive number"),
        ({"offset": float("inf")}, r"`offset` must be a finite number"),
        ({"do_center_crop": True}, r"does not implement `do_center_crop`"),
    ],
)
def test_invalid_configuration(options, message):
    with pytest.raises(ValueError, match=message):
        PeraImageProcessor(**options)


def test_invalid_per_call_options():
    processor = PeraImageProcessor()
    image = np.zeros((3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"`image_mean` has 12 values but `num_channels` is 3"):
        processor(image, image_mean=SENTINEL2_L2A_MEAN)
    with pytest.raises(TypeError, match=r"unexpected options \['do_center_crop'\]"):
        processor(image, do_center_crop=True)
    with pytest.raises(ValueError, match="`return_tensors` must be 'pt', 'np' or None"):
        processor(image, return_tensors="tf")


def test_named_input_bands_are_picked_and_ordered_as_the_processor_s():
    generator = np.random.default_rng(0)
    level_1c = generator.integers(0, 10000, (13, 16, 16), dtype=np.uint16)  # every L1C band, B10 included
    processor = PeraImageProcessor.from_preset("sentinel2-l2a", do_resize=False)
    expected = processor(level_1c[[SENTINEL2_L1C_BANDS.index(band) for band in SENTINEL2_L2A_BANDS]])
    got = processor(level_1c, input_band_names=SENTINEL2_L1C_BANDS)
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
    # Blue, green, red planes (e.g. read in file order) become the red, green, blue of an RGB processor.
    rgb_processor = PeraImageProcessor(do_resize=False)
    rgb = generator.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    torch.testing.assert_close(
        rgb_processor(rgb[::-1], input_band_names=["blue", "green", "red"])["pixel_values"],
        rgb_processor(rgb)["pixel_values"],
        rtol=0,
        atol=0,
    )


def test_missing_or_misnamed_input_bands_are_refused_with_the_expected_bands():
    processor = PeraImageProcessor.from_preset("sentinel2-l2a")
    image = np.zeros((3, 16, 16), dtype=np.uint16)
    with pytest.raises(ValueError, match=r"expects the bands \['B01', .*'B12'\] .* lack \['B01', 'B05'"):
        processor(image, input_band_names=["B02", "B03", "B04"])
    with pytest.raises(ValueError, match="`input_band_names` must be unique"):
        processor(image, input_band_names=["B02", "B02", "B04"])
    with pytest.raises(ValueError, match="must be a list of band names"):
        processor(image, input_band_names="B02")
    # Names given for more bands than the image has: the band count error names them.
    with pytest.raises(ValueError, match=r"expects 13 bands \(B01, B02,"):
        processor(image, input_band_names=SENTINEL2_L1C_BANDS)


def test_ground_sampling_distance_is_saved_and_checked(tmp_path):
    processor = PeraImageProcessor.from_preset("rgbn", ground_sampling_distance=0.6)
    processor.save_pretrained(tmp_path)
    assert PeraImageProcessor.from_pretrained(tmp_path).ground_sampling_distance == 0.6
    assert PeraImageProcessor().ground_sampling_distance is None
    with pytest.raises(ValueError, match="`ground_sampling_distance` must be a positive number of metres per pixel"):
        PeraImageProcessor(ground_sampling_distance=-10)
