"""AlignedPairViews and pretraining_collate: shapes, alignment of the student/teacher views, seeding, photometry."""

import pytest
import torch

from modeling_pera import PeraConfig, PeraImageProcessor
from modeling_pera.views import (
    AlignedPairViews,
    _photometry_of_every_view,
    apply_photometry,
    pop_sample_counts,
    pretraining_collate,
)


GLOBAL_SIZE, LOCAL_SIZE = 32, 16


def make_views(num_channels: int = 3, **kwargs) -> AlignedPairViews:
    """Tiny crops; pixels rescaled by 1/255 and left unnormalised unless `kwargs` say otherwise."""
    options = {
        "global_crop_size": GLOBAL_SIZE,
        "local_crop_size": LOCAL_SIZE,
        "num_global_crops": 2,
        "num_local_crops": 3,
        "image_mean": [0.0] * num_channels,
        "image_std": [1.0] * num_channels,
        "offset": 0.0,
        "rescale_factor": 1 / 255,
    }
    options.update(kwargs)
    return AlignedPairViews(**options)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(num_channels: int = 3, size: int = 64, seed: int = 0, low: int = 77, high: int = 153) -> torch.Tensor:
    """A uint8 image of smooth random structure in [low, high], different in every band."""
    noise = torch.rand(1, num_channels, size // 8, size // 8, generator=generator(seed))
    smooth = torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0]
    smooth = (smooth - smooth.amin()) / (smooth.amax() - smooth.amin())
    return (low + (high - low) * smooth).round().to(torch.uint8)


def band_correlations(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each band of two `(bands, height, width)` views."""
    first = first.flatten(1) - first.flatten(1).mean(1, keepdim=True)
    second = second.flatten(1) - second.flatten(1).mean(1, keepdim=True)
    return (first * second).sum(1) / (first.norm(dim=1) * second.norm(dim=1))


def test_shapes_and_dtypes_for_every_input_dtype():
    views = make_views()
    for image in (
        torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8),
        torch.randint(0, 256, (3, 40, 56), dtype=torch.int16).to(torch.uint16),
        torch.rand(3, 40, 56, dtype=torch.float64) * 255,
    ):
        output = views(image, generator())
        assert set(output) == {"student_global", "teacher_global", "student_local", "teacher_local"}
        assert output["student_global"].shape == output["teacher_global"].shape == (2, 3, GLOBAL_SIZE, GLOBAL_SIZE)
        assert output["student_local"].shape == output["teacher_local"].shape == (3, 3, LOCAL_SIZE, LOCAL_SIZE)
        assert all(view.dtype == torch.float32 and torch.isfinite(view).all() for view in output.values())


def test_sizes_counts_and_statistics_come_from_config_and_processor():
    config = PeraConfig(image_size=32, local_crop_size=16, patch_size=8, num_global_crops=2, num_local_crops=4)
    processor = PeraImageProcessor.from_preset("sentinel2-l2a", offset=1000)
    with pytest.raises(ValueError, match="12 .*processor"):
        AlignedPairViews(config, processor)  # a 3-band model with a 12-band processor

    config = PeraConfig(image_size=32, local_crop_size=16, patch_size=8, num_local_crops=4, num_channels=12)
    views = AlignedPairViews(config, processor)
    assert (views.global_crop_size, views.local_crop_size, views.num_global_crops, views.num_local_crops) == (
        32,
        16,
        2,
        4,
    )
    assert views.num_channels == 12 and views.offset == 1000 and views.rescale_factor == 1.0
    torch.testing.assert_close(views.image_mean, torch.tensor(processor.image_mean))
    output = views(torch.randint(1000, 6000, (12, 60, 60), dtype=torch.int32).to(torch.uint16), generator())
    assert output["student_global"].shape == (2, 12, 32, 32) and output["student_local"].shape == (4, 12, 16, 16)


def test_views_are_identical_without_photometric_augmentation():
    views = make_views(student_color_probability=0.0, teacher_color_probability=0.0)
    output = views(smooth_image(), generator(3))
    torch.testing.assert_close(output["student_global"], output["teacher_global"], rtol=0, atol=0)
    torch.testing.assert_close(output["student_local"], output["teacher_local"], rtol=0, atol=0)
    # ... while the crops themselves differ from each other.
    assert not torch.equal(output["student_global"][0], output["student_global"][1])
    locals_ = output["student_local"]
    assert all(not torch.equal(locals_[i], locals_[j]) for i in range(3) for j in range(i + 1, 3))


def test_jittered_views_differ_only_photometrically():
    # Brightness and contrast are affine in each band: the student and teacher views of one crop then correlate
    # perfectly band by band, while views of different crops of the same image do not.
    views = make_views(
        student_color_probability=1.0,
        student_grayscale_probability=0.0,
        teacher_color_probability=1.0,
        saturation=0.0,
        hue=0.0,
    )
    output = views(smooth_image(size=96), generator(1))
    for kind in ("global", "local"):
        student, teacher = output[f"student_{kind}"], output[f"teacher_{kind}"]
        assert not torch.allclose(student, teacher, atol=1e-3)
        for crop in range(len(student)):
            assert band_correlations(student[crop], teacher[crop]).min() > 0.999
        assert band_correlations(student[0], teacher[1]).max() < 0.9


def test_full_jitter_keeps_the_geometry():
    # With all four jitter operations (hue included) the spatial structure still lines up: the across-band mean of the
    # student view correlates with the teacher's far better than with another crop's.
    views = make_views(student_color_probability=1.0, student_grayscale_probability=0.0, teacher_color_probability=1.0)
    image = smooth_image(size=96, seed=5)
    image = image.float().mean(0, keepdim=True).expand(3, -1, -1) * torch.tensor([1.0, 0.9, 0.8]).view(3, 1, 1)
    output = views(image, generator(2))
    for kind in ("global", "local"):
        student = output[f"student_{kind}"].mean(1, keepdim=True)
        teacher = output[f"teacher_{kind}"].mean(1, keepdim=True)
        for crop in range(len(student)):
            assert band_correlations(student[crop], teacher[crop]).item() > 0.95
            other = (crop + 1) % len(student)
            assert band_correlations(student[crop], teacher[other]).item() < 0.9


def test_flips_are_shared_and_applied():
    # A crop of the whole image with both flips always on: both views are the image turned by 180 degrees.
    views = make_views(
        global_crops_scale=(1.0, 1.0),
        local_crops_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        local_crop_size=GLOBAL_SIZE,
        flip_probability=1.0,
        student_color_probability=0.0,
        teacher_color_probability=0.0,
    )
    image = torch.randint(0, 256, (3, GLOBAL_SIZE, GLOBAL_SIZE), dtype=torch.uint8)
    output = views(image, generator())
    expected = image.flip(-1, -2).float() / 255
    for view in output.values():
        torch.testing.assert_close(view, expected.expand_as(view))


def test_same_seed_same_views_other_seed_other_views():
    views = make_views()
    image = smooth_image()
    first, again, other = views(image, generator(7)), views(image, generator(7)), views(image, generator(8))
    for key in first:
        assert torch.equal(first[key], again[key])
        assert not torch.equal(first[key], other[key])


def test_grayscale_branch_makes_all_bands_equal():
    for num_channels, image in ((3, smooth_image()), (12, torch.randint(0, 4000, (12, 48, 48), dtype=torch.int32))):
        views = make_views(
            num_channels,
            student_color_probability=1.0,
            student_grayscale_probability=1.0,
            teacher_color_probability=0.0,
        )
        output = views(image, generator())
        for kind in ("global", "local"):
            student, teacher = output[f"student_{kind}"], output[f"teacher_{kind}"]
            torch.testing.assert_close(student, student[:, :1].expand_as(student), rtol=0, atol=1e-6)
            assert not torch.allclose(teacher, teacher[:, :1].expand_as(teacher), atol=1e-3)  # teacher: no grayscale


def multispectral_jitter(**strengths) -> dict[str, torch.Tensor]:
    """Student views with only the given jitter strengths, the teacher views unchanged, of a 12-band uint16 image."""
    views = make_views(
        12,
        student_color_probability=1.0,
        student_grayscale_probability=0.0,
        teacher_color_probability=0.0,
        rescale_factor=1e-4,
        **{"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, **strengths},
    )
    image = torch.randint(500, 6000, (12, 48, 48), dtype=torch.int32).to(torch.uint16)
    return views(image, generator(4))


def test_multispectral_brightness_is_one_factor_for_all_bands():
    output = multispectral_jitter(brightness=0.4)
    ratio = output["student_global"] / output["teacher_global"]
    assert output["student_global"].shape[1] == 12
    for crop_ratio in ratio:
        assert crop_ratio.std() < 1e-5 and 0.6 <= crop_ratio.mean() <= 1.4
    assert not torch.allclose(ratio[0].mean(), torch.tensor(1.0))


def test_multispectral_contrast_keeps_band_means():
    output = multispectral_jitter(contrast=0.4)
    student, teacher = output["student_global"], output["teacher_global"]
    torch.testing.assert_close(student.mean((-2, -1)), teacher.mean((-2, -1)), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(student.std((-2, -1)), teacher.std((-2, -1)))
    assert all(band_correlations(s, t).min() > 0.9999 for s, t in zip(student, teacher))


def test_multispectral_saturation_keeps_the_band_average():
    output = multispectral_jitter(saturation=0.2)
    student, teacher = output["student_global"], output["teacher_global"]
    torch.testing.assert_close(student.mean(1), teacher.mean(1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(student, teacher, atol=1e-4)


def test_multispectral_hue_is_a_per_band_factor_near_one():
    output = multispectral_jitter(hue=0.1)
    ratio = output["student_global"] / output["teacher_global"]
    band_ratios = ratio.mean((-2, -1))
    assert torch.allclose(ratio, band_ratios[..., None, None].expand_as(ratio), atol=1e-5)  # constant within a band
    assert ((band_ratios >= 0.9 - 1e-6) & (band_ratios <= 1.1 + 1e-6)).all()
    assert band_ratios.std(dim=1).min() > 1e-3  # and different between bands


def test_normalisation_uses_offset_rescale_mean_and_std():
    mean = torch.linspace(0.1, 0.3, 12)
    std = torch.linspace(0.05, 0.2, 12)
    views = make_views(
        12,
        global_crops_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_probability=0.0,
        student_color_probability=0.0,
        teacher_color_probability=0.0,
        image_mean=mean.tolist(),
        image_std=std.tolist(),
        offset=1000.0,
        rescale_factor=1e-4,
    )
    image = torch.randint(1000, 6000, (12, GLOBAL_SIZE, GLOBAL_SIZE), dtype=torch.int32).to(torch.uint16)
    output = views(image, generator())
    expected = ((image.double() - 1000) * 1e-4 - mean.double().view(12, 1, 1)) / std.double().view(12, 1, 1)
    torch.testing.assert_close(output["student_global"][0].double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(output["teacher_global"][1].double(), expected, rtol=0, atol=1e-5)


def test_images_smaller_than_the_crop_are_upsampled():
    output = make_views()(torch.randint(0, 256, (3, 9, 13), dtype=torch.uint8), generator())
    assert output["student_global"].shape == (2, 3, GLOBAL_SIZE, GLOBAL_SIZE)
    assert torch.isfinite(output["student_global"]).all()


def test_invalid_inputs_and_options_raise():
    views = make_views()
    with pytest.raises(ValueError, match=r"\(3, height, width\)"):
        views(torch.zeros(4, 20, 20), generator())
    with pytest.raises(ValueError, match="global_crops_scale"):
        make_views(global_crops_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="image_std"):
        make_views(image_std=[1.0, 0.0, 1.0])


def test_collate_is_crop_major_and_counts_replacements():
    views = make_views()
    samples = [
        {**views(smooth_image(seed=seed), generator(seed)), "replaced": replaced}
        for seed, replaced in ((0, 0), (1, 1), (2, 1))
    ]
    batch = pretraining_collate(samples)
    assert batch["student_global_pixel_values"].shape == (2, 3, 3, GLOBAL_SIZE, GLOBAL_SIZE)
    assert batch["teacher_local_pixel_values"].shape == (3, 3, 3, LOCAL_SIZE, LOCAL_SIZE)
    for crop in range(2):
        for index, sample in enumerate(samples):
            assert torch.equal(batch["student_global_pixel_values"][crop, index], sample["student_global"][crop])
            assert torch.equal(batch["teacher_global_pixel_values"][crop, index], sample["teacher_global"][crop])
    assert batch["num_replaced"].dtype == torch.int64 and batch["num_replaced"].item() == 2

    no_local = pretraining_collate([make_views(num_local_crops=0)(smooth_image(), generator())])
    assert "student_local_pixel_values" not in no_local and no_local["num_replaced"].item() == 0


def photometry_rows(views: AlignedPairViews, jitter_orders, factors, hue_values, grayscale=()) -> torch.Tensor:
    """Photometry rows built by hand: row i jitters with operations `jitter_orders[i]` (None: unchanged), blend
    factors `factors[i]` (brightness, contrast, saturation) and hue column(s) `hue_values[i]`; rows in `grayscale`
    are made grayscale instead."""
    rows = torch.zeros(len(jitter_orders), views.num_photometry_columns)
    for index, (order, row_factors, hue) in enumerate(zip(jitter_orders, factors, hue_values)):
        if index in grayscale:
            rows[index, 0] = 1.0
        elif order is not None:
            rows[index, 1] = 1.0
            rows[index, 2] = order.index(3)
            rows[index, 3:6] = torch.tensor([operation for operation in order if operation != 3])
            rows[index, 6:9] = torch.tensor(row_factors)
            rows[index, 9:] = torch.as_tensor(hue)
    return rows


def test_batched_rgb_photometry_matches_torchvision_view_by_view():
    from torchvision.transforms.v2 import functional as TF

    views = make_views()
    operations = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    orders = [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1), None, None]
    factors = [(1.3, 0.7, 1.2), (0.6, 1.4, 0.8), (1.1, 0.9, 1.15), (0.8, 1.3, 0.9), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    hues = [0.08, -0.1, 0.03, -0.05, 0.0, 0.0]
    rows = photometry_rows(views, orders, factors, hues, grayscale=(5,))
    crops = torch.stack([smooth_image(seed=seed, size=24).float() / 255 for seed in range(len(orders))])
    crops[0, :, :4] = 0.5  # gray pixels: no hue

    batched = apply_photometry(crops, rows, rgb=True)
    for index, (order, row_factors, hue) in enumerate(zip(orders, factors, hues)):
        expected = crops[index]
        if index == 5:
            expected = TF.rgb_to_grayscale(expected, num_output_channels=3)
        elif order is not None:
            for operation in order:
                expected = operations[operation](expected, (*row_factors, hue)[operation])
        torch.testing.assert_close(batched[index], expected, rtol=0, atol=2e-6)
        # one view alone (the worker's path, which skips the steps it does not take) gives the same
        alone = apply_photometry(crops[index : index + 1], rows[index : index + 1], rgb=True)[0]
        torch.testing.assert_close(alone, expected, rtol=0, atol=2e-6)
    assert torch.equal(batched[4], crops[4])  # an unchanged view is left exactly as it was


@pytest.mark.parametrize("num_channels", [3, 4])
def test_photometry_on_the_cpu_computes_the_changed_views_only_and_gives_what_every_view_gives(num_channels):
    views = make_views(num_channels)
    draw = generator(0)
    rows = torch.stack(
        [views._teacher_photometry(draw) for _ in range(32)] + [views._student_photometry(draw) for _ in range(32)]
    )
    crops = torch.rand(64, num_channels, 16, 16, generator=generator(1))
    unchanged = (rows[:, 0] == 0) & (rows[:, 1] == 0)  # neither grayscale nor jitter
    assert unchanged.any() and not unchanged.all()

    changed_only = apply_photometry(crops, rows, rgb=num_channels == 3)
    # the accelerator's path, which computes every view
    every_view = _photometry_of_every_view(crops, rows, rgb=num_channels == 3, on_cpu=False)
    torch.testing.assert_close(changed_only, every_view, rtol=0, atol=1e-6)
    assert torch.equal(changed_only[unchanged], crops[unchanged])
    assert not torch.equal(changed_only[~unchanged], crops[~unchanged])


def test_batched_multispectral_photometry_follows_each_views_order():
    views = make_views(4)
    crops = torch.rand(3, 4, 8, 8, generator=generator(1)) * 2
    band_factors = torch.tensor([[0.9, 1.1, 1.05, 0.95], [1.0, 1.0, 1.0, 1.0], [1.1, 0.92, 1.0, 1.02]])
    orders, factors = [(0, 3, 1, 2), (2, 1, 0, 3), None], [(1.2, 0.8, 1.3), (0.7, 1.25, 0.6), (1, 1, 1)]
    rows = photometry_rows(views, orders, factors, band_factors)

    def brightness(x, f):
        return x * f

    def contrast(x, f):
        return x.mean((-2, -1), keepdim=True) + f * (x - x.mean((-2, -1), keepdim=True))

    def saturation(x, f):
        return x.mean(0, keepdim=True) + f * (x - x.mean(0, keepdim=True))

    expected = crops[0]

    def spectral_jitter(x, f):
        return x * f.view(-1, 1, 1)

    # view 0: brightness, then the per-band factors (the hue step), contrast, saturation
    for operation, argument in (
        (brightness, 1.2),
        (spectral_jitter, band_factors[0]),
        (contrast, 0.8),
        (saturation, 1.3),
    ):
        expected = operation(expected, argument)
    batched = apply_photometry(crops, rows, rgb=False)
    torch.testing.assert_close(batched[0], expected)
    torch.testing.assert_close(batched[1], contrast(brightness(saturation(crops[1], 0.6), 0.7), 1.25))
    assert torch.equal(batched[2], crops[2])


@pytest.mark.parametrize("num_channels", [3, 5])
def test_deferred_photometry_makes_the_same_views_batched(num_channels):
    if num_channels == 3:
        # 8-bit crops are rounded to integers: up to half a level, which hue shifts of unsaturated pixels amplify
        images, tolerance = [smooth_image(seed=seed, low=10, high=245) for seed in range(3)], 2 / 255 / 0.2
        statistics = {"image_mean": [0.4, 0.5, 0.45], "image_std": [0.2, 0.25, 0.22]}
    else:
        images = [
            torch.randint(200, 4000, (5, 40, 40), generator=generator(seed)).to(torch.int16) for seed in range(3)
        ]
        tolerance, statistics = 1e-4, {"rescale_factor": 1e-4}
    options = {
        "student_color_probability": 1.0,
        "student_grayscale_probability": 0.3,
        "teacher_color_probability": 0.5,
        **statistics,
    }
    in_loader = make_views(num_channels, **options)
    deferred = make_views(num_channels, defer_photometry=True, **options)

    samples = [deferred(image, generator(seed)) for seed, image in enumerate(images)]
    assert samples[0]["global_crops"].dtype == (torch.uint8 if num_channels == 3 else torch.float32)
    assert samples[0]["student_local_photometry"].shape == (3, deferred.num_photometry_columns)
    batch = pretraining_collate(samples)
    assert batch["global_crops"].shape == (2, 3, num_channels, GLOBAL_SIZE, GLOBAL_SIZE)
    finished = deferred.finish_batch(batch)
    pixel_names = {f"{role}_{kind}_pixel_values" for role in ("student", "teacher") for kind in ("global", "local")}
    assert set(finished) == pixel_names | {"num_replaced", "num_upsampled"}

    expected = pretraining_collate([in_loader(image, generator(seed)) for seed, image in enumerate(images)])
    for name, count in pop_sample_counts(expected).items():
        assert torch.equal(finished.pop(f"num_{name}"), count)
    for name, values in expected.items():
        torch.testing.assert_close(finished[name], values, rtol=0, atol=tolerance)
        assert (finished[name] - values).abs().mean() < tolerance / 4  # on average, within half a level
    # the draws really differ between views: some student views are grayscale, some jittered, some teacher views not
    student = finished["student_global_pixel_values"]
    assert not torch.allclose(student, finished["teacher_global_pixel_values"], atol=1e-3)
