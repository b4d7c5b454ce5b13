"""Image sources, decoding and band adaptation, the bad-file policy, seeding across epochs and workers, streaming."""

import io
import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from modeling_pera import PeraConfig, PeraImageProcessor
from modeling_pera.data import (
    PretrainingDataset,
    PretrainingIterableDataset,
    PretrainingSampler,
    check_dataset,
    load_pretraining_dataset,
    make_pretraining_dataloader,
    make_pretraining_dataset,
    seeded_generator,
)
from modeling_pera.image_processing_pera import SENTINEL2_L2A_BANDS
from modeling_pera.raster import find_images
from modeling_pera.views import AlignedPairViews


# BigEarthNet's Sentinel-2 grids: 10 m bands 120 px, 20 m bands 60 px, 60 m bands 20 px.
BAND_SIZES = {"B02": 120, "B03": 120, "B04": 120, "B08": 120, "B01": 20, "B09": 20}
BAD_IN_RGB_TREE = ("patch", "tiny.png", "truncated.jpg", "truncated.tif")


def make_views(num_channels: int = 3, **kwargs) -> AlignedPairViews:
    options = {
        "global_crop_size": 16,
        "local_crop_size": 8,
        "num_global_crops": 2,
        "num_local_crops": 2,
        "image_mean": [0.5] * num_channels,
        "image_std": [0.25] * num_channels,
        "offset": 0.0,
        "rescale_factor": 1 / 255,
    }
    options.update(kwargs)
    return AlignedPairViews(**options)


def identity_views() -> AlignedPairViews:
    """Views that return the whole 16 px image unchanged (as values 0-255), to recognise which image came back."""
    return make_views(
        global_crops_scale=(1.0, 1.0),
        local_crops_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        local_crop_size=16,
        flip_probability=0.0,
        student_color_probability=0.0,
        teacher_color_probability=0.0,
        image_mean=[0.0] * 3,
        image_std=[1.0] * 3,
        rescale_factor=1.0,
    )


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tiff_bytes(pixels: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, **kwargs)
    return buffer.getvalue()


def write_band_folder(folder: Path, seed: int = 0) -> None:
    """A BigEarthNet-style Sentinel-2 L2A patch: 12 single-band uint16 GeoTIFFs at their native grids."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for band in SENTINEL2_L2A_BANDS:
        size = BAND_SIZES.get(band, 60)
        tifffile.imwrite(folder / f"{folder.name}_{band}.tif", rng.integers(100, 5000, (size, size), dtype=np.uint16))
    (folder / f"{folder.name}_labels_metadata.json").write_text(json.dumps({"labels": ["Sea and ocean"]}))


@pytest.fixture
def rgb_tree(tmp_path: Path) -> Path:
    """Images of every kind a folder may hold, for a 3-band model."""
    root = tmp_path / "images"
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(rgb(40, 48, 1)).save(root / "a.jpg", quality=95)
    Image.fromarray(rgb(36, 36, 2)).save(root / "b.png")
    tifffile.imwrite(root / "c.tif", rgb(40, 40, 3), photometric="rgb")
    Image.fromarray(rgb(40, 40, 4)[..., 0]).save(root / "gray.jpg", quality=95)
    Image.fromarray(np.concatenate([rgb(40, 40, 5), np.full((40, 40, 1), 128, np.uint8)], -1)).save(root / "rgba.png")
    Image.fromarray(rgb(40, 40, 6)).quantize(colors=16).save(root / "palette.png")
    Image.fromarray(rgb(33, 35, 7)).save(root / "nested" / "deeper" / "d.JPEG")
    Image.fromarray(rgb(8, 8, 8)).save(root / "tiny.png")
    Image.fromarray(rgb(40, 40, 9)).save(root / ".hidden.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    full_jpeg = jpeg_bytes(rgb(64, 64, 10))
    (root / "truncated.jpg").write_bytes(full_jpeg[: len(full_jpeg) // 2])
    full_tiff = tiff_bytes(rgb(64, 64, 11), photometric="rgb")
    (root / "truncated.tif").write_bytes(full_tiff[: len(full_tiff) * 2 // 3])
    write_band_folder(root / "patch")
    return root


def test_find_images_lists_files_and_band_folders(rgb_tree, caplog):
    with caplog.at_level(logging.WARNING, logger="modeling_pera.data"):
        samples = find_images(rgb_tree)
    names = [path.relative_to(rgb_tree).as_posix() for path in samples]
    assert names == [
        "a.jpg",
        "b.png",
        "c.tif",
        "gray.jpg",
        "nested/deeper/d.JPEG",
        "palette.png",
        "patch",
        "rgba.png",
        "tiny.png",
        "truncated.jpg",
        "truncated.tif",
    ]
    assert "skipped 1 zero-byte files" in caplog.text and "empty.jpg" in caplog.text
    assert find_images(rgb_tree) == samples  # deterministic


def test_band_folder_is_one_multispectral_sample(tmp_path):
    write_band_folder(tmp_path / "S2_patch")
    dataset = PretrainingDataset(find_images(tmp_path), make_views(12, rescale_factor=1e-4))
    assert len(dataset) == 1
    image = dataset.load_image(0)
    assert image.shape == (12, 120, 120) and image.dtype == torch.float32
    native_b02 = tifffile.imread(tmp_path / "S2_patch" / "S2_patch_B02.tif")
    np.testing.assert_array_equal(image[SENTINEL2_L2A_BANDS.index("B02")].numpy(), native_b02)  # 10 m: not resampled
    sample = dataset[0]
    assert sample["student_global"].shape == (2, 12, 16, 16) and sample["teacher_local"].shape == (2, 12, 8, 8)
    assert sample["replaced"] == 0


def test_pil_images_are_adapted_to_three_bands(rgb_tree):
    dataset = PretrainingDataset(
        [rgb_tree / name for name in ("rgba.png", "palette.png", "gray.jpg", "c.tif")], make_views()
    )
    rgba, palette, gray, tiff = (dataset.load_image(index) for index in range(4))
    assert {image.dtype for image in (rgba, palette, gray, tiff)} == {torch.uint8}  # 8-bit images stay 8-bit
    expected_rgb = np.asarray(Image.open(rgb_tree / "rgba.png"))[..., :3].transpose(2, 0, 1)
    np.testing.assert_array_equal(rgba.numpy(), expected_rgb)
    expected_palette = np.asarray(Image.open(rgb_tree / "palette.png").convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(palette.numpy(), expected_palette)
    expected_gray = np.asarray(Image.open(rgb_tree / "gray.jpg"))
    assert gray.shape == (3, 40, 40)
    for band in gray:
        np.testing.assert_array_equal(band.numpy(), expected_gray)
    np.testing.assert_array_equal(tiff.numpy(), rgb(40, 40, 3).transpose(2, 0, 1))


def test_bad_samples_are_replaced_by_the_next_usable_one(rgb_tree, caplog):
    views = make_views()
    dataset = PretrainingDataset(find_images(rgb_tree), views, seed=3)
    names = [Path(dataset.describe(index)).name for index in range(len(dataset))]
    with caplog.at_level(logging.WARNING, logger="modeling_pera.data"):
        samples = [dataset[index] for index in range(len(dataset))]
    for index, (name, sample) in enumerate(zip(names, samples)):
        assert sample["replaced"] == int(name in BAD_IN_RGB_TREE), name
        if name in BAD_IN_RGB_TREE:
            # The substitute is the next usable image, with the requested index's seed.
            substitute = next(
                (index + step) % len(dataset)
                for step in range(1, len(dataset))
                if names[(index + step) % len(dataset)] not in BAD_IN_RGB_TREE
            )
            expected = views(dataset.load_image(substitute), seeded_generator(3, 0, index))
            for key, view in expected.items():
                assert torch.equal(sample[key], view)
    assert "truncated.jpg" in caplog.text and "truncated.tif" in caplog.text
    # Each bad file is decoded (and logged) once, however many requests run into it.
    assert caplog.text.count("Replacing a bad sample") == len(BAD_IN_RGB_TREE)
    assert "has 12 bands" in caplog.text and "smaller than min_image_size=16" in caplog.text

    loader = make_pretraining_dataloader(dataset, batch_size=len(dataset), shuffle=False, drop_last=False, seed=3)
    batch = next(iter(loader))
    assert batch["num_replaced"].item() == len(BAD_IN_RGB_TREE)
    assert batch["student_global_pixel_values"].shape == (2, len(dataset), 3, 16, 16)


def test_check_dataset_tolerates_a_few_bad_samples(rgb_tree, caplog):
    dataset = make_pretraining_dataset(load_pretraining_dataset(train_dir=rgb_tree), make_views())
    assert isinstance(dataset, PretrainingDataset)
    with caplog.at_level(logging.WARNING, logger="modeling_pera.data"):
        assert check_dataset(dataset) == len(dataset) - len(BAD_IN_RGB_TREE)
    assert "4 of 11 checked samples cannot be used" in caplog.text


def test_check_dataset_rejects_a_band_count_the_model_cannot_use(tmp_path):
    for index in range(3):
        rgbn = np.random.default_rng(index).integers(0, 256, (4, 40, 40), dtype=np.uint8)
        tifffile.imwrite(tmp_path / f"naip_{index}.tif", rgbn, photometric="minisblack", planarconfig="separate")
    dataset = PretrainingDataset(find_images(tmp_path), make_views())
    with pytest.raises(ValueError) as error:
        check_dataset(dataset)
    message = str(error.value)
    assert "found 4 bands (3 samples), the model expects 3" in message
    assert "--bands 0 1 2" in message  # what works for a pretrained RGB encoder
    assert "--config_overrides num_channels=4" in message and "--processor_preset rgbn" in message  # a new model

    selected = PretrainingDataset(find_images(tmp_path), make_views(), bands=[0, 1, 2])
    assert check_dataset(selected) == 3
    rgbn = tifffile.imread(tmp_path / "naip_0.tif")
    np.testing.assert_array_equal(selected.load_image(0).numpy(), rgbn[:3])
    reordered = PretrainingDataset(find_images(tmp_path), make_views(), bands=[3, 0, 1])
    np.testing.assert_array_equal(reordered.load_image(0).numpy(), rgbn[[3, 0, 1]])
    with pytest.raises(ValueError, match=r"has 4 bands \(indices 0-3\); --bands asks for \[7\]"):
        check_dataset(PretrainingDataset(find_images(tmp_path), make_views(), bands=[0, 1, 7]))


def test_unreadable_data_fails_at_start_and_in_getitem(rgb_tree):
    dataset = PretrainingDataset([rgb_tree / "truncated.jpg", rgb_tree / "truncated.tif"], make_views())
    with pytest.raises(ValueError, match="2 are unreadable"):
        check_dataset(dataset)
    with pytest.raises(RuntimeError, match="None of 2 consecutive samples"):
        dataset[0]


def test_set_epoch_changes_the_views(rgb_tree):
    dataset = PretrainingDataset([rgb_tree / "a.jpg", rgb_tree / "b.png"], make_views())
    first = dataset[0]
    assert torch.equal(dataset[0]["student_global"], first["student_global"])
    dataset.set_epoch(1)
    second = dataset[0]
    assert not torch.equal(second["student_global"], first["student_global"])
    # An (epoch, index) pair, as the sampler yields, gives the same views as set_epoch.
    assert torch.equal(dataset[(1, 0)]["teacher_local"], second["teacher_local"])
    assert torch.equal(dataset[(0, 0)]["teacher_local"], first["teacher_local"])


def collect_epochs(dataset: PretrainingDataset, num_workers: int, num_epochs: int = 2) -> list[list[dict]]:
    loader = make_pretraining_dataloader(dataset, batch_size=3, num_workers=num_workers, seed=11)
    epochs = []
    for epoch in range(num_epochs):
        loader.set_epoch(epoch)
        epochs.append(list(loader))
    return epochs


def test_views_do_not_depend_on_the_number_of_workers(tmp_path):
    for index in range(7):
        Image.fromarray(rgb(24, 28, index)).save(tmp_path / f"{index}.png")
    dataset = PretrainingDataset(find_images(tmp_path), make_views())
    in_process, with_workers = collect_epochs(dataset, 0), collect_epochs(dataset, 2)
    assert [len(epoch) for epoch in in_process] == [2, 2]  # 7 images, batches of 3, last one dropped
    for epoch_in_process, epoch_with_workers in zip(in_process, with_workers):
        for batch, other in zip(epoch_in_process, epoch_with_workers):
            assert batch.keys() == other.keys()
            assert all(torch.equal(batch[key], other[key]) for key in batch)
    # The epoch reached the (persistent) workers: epoch 1 differs from epoch 0.
    assert not torch.equal(
        with_workers[0][0]["student_global_pixel_values"], with_workers[1][0]["student_global_pixel_values"]
    )


def test_sampler_order_is_seeded_and_shards_are_disjoint():
    sampler = PretrainingSampler(10, seed=1)
    first = list(sampler)
    assert first == list(sampler) and sorted(index for _, index in first) == list(range(10))
    sampler.set_epoch(1)
    assert [index for _, index in sampler] != [index for _, index in first]
    assert {epoch for epoch, _ in sampler} == {1}
    shards = [[index for _, index in PretrainingSampler(11, seed=1, num_replicas=3, rank=rank)] for rank in range(3)]
    assert all(len(shard) == 3 for shard in shards)
    assert len(set().union(*map(set, shards))) == 9


def test_datasets_dataset_source_with_tiff_bytes_and_a_corrupt_row():
    multispectral = np.random.default_rng(0).integers(0, 4000, (12, 20, 24), dtype=np.uint16)
    full = tiff_bytes(multispectral, photometric="minisblack", planarconfig="separate")
    rows = [{"bytes": full, "path": None}, {"bytes": full[: len(full) // 2], "path": None}]
    source = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    dataset = PretrainingDataset(source, make_views(12, rescale_factor=1e-4))
    np.testing.assert_array_equal(dataset.load_image(0).numpy(), multispectral)
    assert dataset[1]["replaced"] == 1 and dataset[0]["replaced"] == 0
    with pytest.raises(ValueError, match="no column 'pixels'"):
        PretrainingDataset(source, make_views(12), image_column_name="pixels")


@pytest.fixture
def numbered_folder(tmp_path: Path) -> Path:
    """12 uniform 16 px PNG images with pixel value 10 * k, and one truncated PNG in the middle of the stream."""
    folder = tmp_path / "numbered"
    folder.mkdir()
    for k in range(12):
        Image.fromarray(np.full((16, 16, 3), 10 * k, np.uint8)).save(folder / f"{k:02d}.png")
    buffer = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buffer, format="PNG")
    (folder / "05_truncated.png").write_bytes(buffer.getvalue()[:300])
    return folder


def image_numbers(batches: list[dict]) -> list[int]:
    """The k of each image of the batches, read back from the identity views."""
    numbers = []
    for batch in batches:
        numbers += (batch["student_global_pixel_values"][0].mean((1, 2, 3)) / 10).round().int().tolist()
    return numbers


def test_streaming_imagefolder_yields_batches_and_skips_bad_files(numbered_folder):
    source = load_pretraining_dataset("imagefolder", train_dir=numbered_folder, streaming=True)
    assert isinstance(source, datasets.IterableDataset)
    dataset = make_pretraining_dataset(source, identity_views(), seed=0)
    assert isinstance(dataset, PretrainingIterableDataset)
    assert check_dataset(dataset) == 12
    loader = make_pretraining_dataloader(dataset, batch_size=4)
    loader.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 3
    assert batches[0]["student_global_pixel_values"].shape == (2, 4, 3, 16, 16)
    assert batches[0]["teacher_local_pixel_values"].shape == (2, 4, 3, 16, 16)
    assert sorted(image_numbers(batches)) == list(range(12))
    assert sum(batch["num_replaced"].item() for batch in batches) == 1


def test_streaming_shards_over_processes_and_workers(numbered_folder):
    paths = sorted(str(path) for path in numbered_folder.glob("[0-9][0-9].png") if "truncated" not in path.name)
    source = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())
    streams = source.to_iterable_dataset(num_shards=4)
    per_rank = []
    for rank in range(2):
        dataset = PretrainingIterableDataset(streams, identity_views(), rank=rank, world_size=2)
        per_rank.append(image_numbers(make_pretraining_dataloader(dataset, batch_size=1, drop_last=False)))
        # Within a process, DataLoader workers share the rank's shards without overlap.
        with_workers = make_pretraining_dataloader(dataset, batch_size=1, num_workers=2, drop_last=False)
        assert sorted(image_numbers(with_workers)) == sorted(per_rank[-1])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(12))


def test_streaming_views_differ_between_workers_and_epochs(tmp_path):
    # The same image in every shard: only the seed (which includes the worker) makes the views of the workers differ.
    Image.fromarray(rgb(24, 24)).save(tmp_path / "same.png")
    source = datasets.Dataset.from_dict({"image": [str(tmp_path / "same.png")] * 4})
    source = source.cast_column("image", datasets.Image())
    dataset = PretrainingIterableDataset(source.to_iterable_dataset(num_shards=2), make_views())
    loader = make_pretraining_dataloader(dataset, 1, num_workers=2)
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        epochs.append([batch["student_global_pixel_values"] for batch in loader])
    views = epochs[0] + epochs[1]
    assert len(views) == 8
    # Distinct across workers and positions, and across epochs: the epoch reached the persistent workers.
    assert all(not torch.equal(views[i], views[j]) for i in range(8) for j in range(i + 1, 8))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stream_resumes_where_it_stopped_without_reading_again(tmp_path, num_workers):
    generator = np.random.default_rng(0)
    paths = []
    for k in range(12):  # image k: values 10 k + 0..3, so that random crops differ and their mean still gives k
        paths.append(str(tmp_path / f"{k:02d}.png"))
        Image.fromarray((10 * k + generator.integers(0, 4, (24, 24, 3))).astype(np.uint8)).save(paths[-1])
    source = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())
    views = make_views(
        student_color_probability=0.0,
        teacher_color_probability=0.0,
        image_mean=[0.0] * 3,
        image_std=[1.0] * 3,
        rescale_factor=1.0,
    )

    def make_loader():
        dataset = PretrainingIterableDataset(source.to_iterable_dataset(num_shards=4), views, seed=3)
        loader = make_pretraining_dataloader(dataset, batch_size=2, num_workers=num_workers)
        loader.set_epoch(1)
        return loader

    uninterrupted = list(make_loader())
    interrupted = make_loader()
    batches = iter(interrupted)
    consumed = [next(batches) for _ in range(3)]  # with 2 workers, the next batch is the second worker's
    state = interrupted.state_dict()
    del batches, interrupted
    for number in image_numbers(consumed):
        Path(paths[number]).unlink()  # a resume that read them again would fail
    resumed = make_loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(consumed) + len(rest) == len(uninterrupted) == 6
    for got, expected in zip(consumed + rest, uninterrupted):
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_a_stream_position_is_refused_on_other_shards_or_a_shuffle_buffer(numbered_folder):
    paths = sorted(str(path) for path in numbered_folder.glob("[0-9][0-9].png"))
    source = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())
    saved = PretrainingIterableDataset(source.to_iterable_dataset(num_shards=4), identity_views()).state_dict()
    fewer_shards = PretrainingIterableDataset(source.to_iterable_dataset(num_shards=3), identity_views())
    with pytest.raises(ValueError, match="had 4 shards .* has 3 now"):
        fewer_shards.load_state_dict(saved)
    shuffled = PretrainingIterableDataset(
        source.to_iterable_dataset(num_shards=4), identity_views(), shuffle_buffer_size=8
    )
    with pytest.raises(ValueError, match="shuffled through a buffer cannot resume exactly"):
        shuffled.load_state_dict(saved)


def test_load_pretraining_dataset_sources_and_errors(rgb_tree, tmp_path, monkeypatch):
    assert load_pretraining_dataset(train_dir=rgb_tree) == find_images(rgb_tree)
    nested = rgb_tree / "nested"
    pooled = load_pretraining_dataset(train_dir=[rgb_tree, nested])
    assert pooled == find_images(rgb_tree) + find_images(nested)
    with pytest.raises(ValueError, match="one data folder"):
        load_pretraining_dataset("imagefolder", train_dir=[rgb_tree, nested])
    with pytest.raises(ValueError, match="train_dir"):
        load_pretraining_dataset()
    with pytest.raises(ValueError, match="streaming"):
        load_pretraining_dataset(train_dir=rgb_tree, streaming=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        load_pretraining_dataset(train_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="no column 'pixels'"):
        load_pretraining_dataset("imagefolder", train_dir=rgb_tree / "nested", image_column_name="pixels")
    # A Hub id without network: a clear error, fast, in offline mode.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="Could not load the dataset 'pera-tests/no-such-dataset'"):
        load_pretraining_dataset("pera-tests/no-such-dataset")


def test_real_ucmerced_and_bigearthnet(shared_data):
    jpegs = sorted((shared_data / "ucmerced" / "airplane").glob("*.jpg"))[:3]
    band_folder = sorted(path for path in (shared_data / "bigearthnet_s2_tiny").iterdir() if path.is_dir())[0]
    config = PeraConfig(image_size=32, patch_size=8, local_crop_size=16)
    rgb_dataset = PretrainingDataset(jpegs, AlignedPairViews(config, PeraImageProcessor.from_preset("pera-rgb")))
    assert check_dataset(rgb_dataset) == 3
    batch = next(iter(make_pretraining_dataloader(rgb_dataset, batch_size=3)))
    assert batch["student_global_pixel_values"].shape == (2, 3, 3, 32, 32)
    assert batch["student_local_pixel_values"].shape == (8, 3, 3, 16, 16)
    assert batch["num_replaced"].item() == 0

    s2_config = PeraConfig(image_size=32, patch_size=8, local_crop_size=16, num_channels=12)
    s2_views = AlignedPairViews(s2_config, PeraImageProcessor.from_preset("sentinel2-l2a"))
    s2_dataset = PretrainingDataset(find_images(band_folder.parent), s2_views)
    assert len(s2_dataset) == 11 and check_dataset(s2_dataset) == 11
    teacher = s2_dataset[0]["teacher_global"]
    assert teacher.shape == (2, 12, 32, 32) and torch.isfinite(teacher).all()
    # Normalised with the Sentinel-2 L2A statistics: values of order one, not digital numbers.
    assert teacher.abs().mean() < 5
