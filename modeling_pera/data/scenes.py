# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""Pretraining on large scenes (GeoTIFF/COG of any size) without cutting them into tiles first: each sample is a
random window, read alone with rasterio (the optional `geo` extra)."""

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..raster import RasterReadError, band_count_advice
from ..scene_io import SceneInfo, describe_scene, import_rasterio, read_scene_window
from ..views import AlignedPairViews
from .datasets import seeded_generator


logger = logging.getLogger(__name__)

SCENE_EXTENSIONS = (".tif", ".tiff", ".vrt")


def find_scenes(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The scene files among `paths`: files as given, and the .tif/.tiff/.vrt files under folders (sorted)."""
    scenes = []
    for path in map(Path, paths):
        if path.is_dir():
            scenes += sorted(file for file in path.rglob("*") if file.suffix.lower() in SCENE_EXTENSIONS)
        elif path.is_file():
            scenes.append(path)
        else:
            raise ValueError(f"No scene file or folder at {path}.")
    if not scenes:
        raise ValueError(f"No scenes (.tif, .tiff, .vrt) found under {', '.join(map(str, paths))}.")
    return scenes


def _band_indices(info: SceneInfo, bands: Sequence[int | str] | None, num_channels: int) -> list[int]:
    """The 0-based bands of `info` that `bands` names (indices, or band descriptions), checked."""
    if bands is None:
        if info.count != num_channels:
            raise ValueError(
                f"{info.path} has {info.count} bands but the model takes {num_channels}: "
                f"{band_count_advice(info.count, num_channels)}."
            )
        return list(range(info.count))
    if all(isinstance(band, int) for band in bands):
        missing = [band for band in bands if not 0 <= band < info.count]
        if missing:
            raise ValueError(
                f"{info.path} has {info.count} bands (indices 0-{info.count - 1}); --bands asks for {missing}."
            )
        return list(bands)
    missing = [band for band in bands if band not in info.band_names]
    if missing:
        raise ValueError(f"{info.path} has no band named {missing}: its bands are {list(info.band_names)}.")
    return [info.band_names.index(band) for band in bands]


class SceneDataset(torch.utils.data.Dataset):
    """
    PerA view pairs from random windows of large rasters, read with rasterio: only the window, and through the
    scene's overviews when `sample_size` is smaller than `window_size`.

    Sample `index` of an epoch (or an `(epoch, index)` pair, as [`PretrainingSampler`] yields) draws from a generator
    seeded from `(seed, epoch, index)` a scene (in proportion to its area), a window position in it, then the views:
    a sample depends on nothing else, so runs resume exactly. A window with fewer than `min_valid_fraction` valid
    pixels (not nodata, not NaN) is skipped, first on the scene's low-resolution mask (without reading), else after
    its read, and another is drawn; the sample's `replaced` counts the skipped windows. Invalid pixels of a kept window
    are 0. Every scene is opened once at start: a file rasterio cannot read, a scene in another CRS than the first,
    smaller than a window, or without the bands asked for is refused with its name.

    Args:
        scenes (`Sequence[str | os.PathLike]`):
            Scene files (see [`find_scenes`]).
        views ([`~views.AlignedPairViews`]):
            Makes the views; its `num_channels` is the number of bands read.
        seed (`int`, *optional*, defaults to 0):
            Seed of the windows and the views.
        window_size (`int`, *optional*):
            Scene pixels per side of a window; defaults to the views' global crop size.
        sample_size (`int`, *optional*):
            Pixels per side a window is read at; defaults to `window_size` (full resolution).
        windows_per_epoch (`int`, *optional*):
            Samples per epoch; defaults to the scenes' valid area over a window's area (each valid pixel about once).
        bands (`Sequence[int | str]`, *optional*):
            The bands to read, in order: 0-based indices, or band descriptions of the scenes; all by default.
        min_valid_fraction (`float`, *optional*, defaults to 0.5):
            Valid share below which a window is skipped.
        max_draws (`int`, *optional*, defaults to 100):
            Windows drawn for one sample before giving up with a `RuntimeError`.
    """

    def __init__(
        self,
        scenes: Sequence[str | os.PathLike],
        views: AlignedPairViews,
        seed: int = 0,
        window_size: int | None = None,
        sample_size: int | None = None,
        windows_per_epoch: int | None = None,
        bands: Sequence[int | str] | None = None,
        min_valid_fraction: float = 0.5,
        max_draws: int = 100,
    ) -> None:
        if not 0.0 < min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must lie in (0, 1], got {min_valid_fraction}.")
        self.views = views
        self.seed = seed
        self.window_size = window_size or views.global_crop_size
        self.sample_size = sample_size or self.window_size
        self.min_valid_fraction = min_valid_fraction
        self.max_draws = max_draws
        self.scenes = [describe_scene(path) for path in scenes]
        self.bands = [_band_indices(info, bands, views.num_channels) for info in self.scenes]
        self._check_scenes()
        self.areas = torch.tensor([float(info.width * info.height) for info in self.scenes], dtype=torch.float64)
        valid_area = sum(float(info.valid_mask.mean()) * info.width * info.height for info in self.scenes)
        self.windows_per_epoch = windows_per_epoch or max(1, round(valid_area / self.window_size**2))
        self.epoch = 0
        # Open rasterio datasets, per process: a forked DataLoader worker must not share the parent's file handles.
        self._open_scenes: dict[int, object] = {}
        self._opened_by = os.getpid()

    def _check_scenes(self) -> None:
        first = self.scenes[0]
        for info in self.scenes:
            if info.crs != first.crs:
                raise ValueError(
                    f"{info.path} is in {info.crs}, {first.path} in {first.crs}: pretrain on scenes of one CRS "
                    "(reproject the others, e.g. gdalwarp -t_srs, or pretrain on them separately)."
                )
            if min(info.width, info.height) < self.window_size:
                raise ValueError(
                    f"{info.path} is {info.width} x {info.height} px, smaller than a {self.window_size} px window: "
                    "lower the window size or leave this scene out."
                )

    @property
    def ground_sampling_distance(self) -> float | None:
        """Metres per pixel of the windows as read (the scenes' pixel size times window over sample size), when every
        scene has the same square pixels in metres; else None."""
        pixel_sizes = {info.pixel_size for info in self.scenes}
        if len(pixel_sizes) != 1 or None in pixel_sizes:
            return None
        return pixel_sizes.pop() * self.window_size / self.sample_size

    def __len__(self) -> int:
        return self.windows_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch used by integer indices (the windows and views of every sample change with the epoch)."""
        self.epoch = epoch

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open_scenes": {}}

    def _open(self, scene_index: int):
        if self._opened_by != os.getpid():
            self._open_scenes, self._opened_by = {}, os.getpid()
        if scene_index not in self._open_scenes:
            self._open_scenes[scene_index] = import_rasterio().open(self.scenes[scene_index].path)
        return self._open_scenes[scene_index]

    def _draw_window(self, generator: torch.Generator) -> tuple[int, int, int]:
        scene_index = int(torch.multinomial(self.areas, 1, generator=generator))
        info = self.scenes[scene_index]
        row = int(torch.randint(0, info.height - self.window_size + 1, (), generator=generator))
        col = int(torch.randint(0, info.width - self.window_size + 1, (), generator=generator))
        return scene_index, row, col

    def describe_window(self, scene_index: int, row: int, col: int) -> str:
        return f"{self.scenes[scene_index].path} window (row {row}, col {col}, {self.window_size} px)"

    def read_window(self, generator: torch.Generator) -> tuple[torch.Tensor, str, int]:
        """The first window drawn from `generator` with enough valid pixels: `(pixels, description, skipped)`."""
        error = None
        for skipped in range(self.max_draws):
            scene_index, row, col = self._draw_window(generator)
            if self.scenes[scene_index].valid_fraction(row, col, self.window_size) < self.min_valid_fraction:
                continue
            try:
                pixels, valid_fraction = read_scene_window(
                    self._open(scene_index), self.bands[scene_index], row, col, self.window_size, self.sample_size
                )
            except RasterReadError as read_error:
                error = read_error
                logger.warning("Skipping a window that cannot be read: %s", read_error)
                continue
            if valid_fraction >= self.min_valid_fraction:
                return torch.from_numpy(pixels), self.describe_window(scene_index, row, col), skipped
        raise RuntimeError(
            f"None of {self.max_draws} windows of {self.window_size} px drawn from the scenes has "
            f"{self.min_valid_fraction:.0%} valid pixels{f' (the last read error: {error})' if error else ''}: check "
            "the scenes' nodata, or lower the window size or min_valid_fraction."
        )

    def load_image(self, index: int) -> torch.Tensor:
        """The window of sample `index` in the current epoch (what [`check_dataset`] decodes)."""
        return self.read_window(seeded_generator(self.seed, self.epoch, index))[0]

    def describe(self, index: int) -> str:
        return self.read_window(seeded_generator(self.seed, self.epoch, index))[1]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        generator = seeded_generator(self.seed, epoch, index)
        image, _, skipped = self.read_window(generator)
        views = self.views(image, generator)
        return {**views, "replaced": skipped, "upsampled": int(self.views.upsamples(image))}
