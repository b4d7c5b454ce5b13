# Copyright 2025 The PerA authors and contributors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Large georeferenced scenes (GeoTIFF/COG of any size, GDAL VRTs), read a window at a time with rasterio, the
optional `geo` extra: what a scene is ([`describe_scene`]), one window's pixels ([`read_scene_window`]), its pixel
size in metres, and the writers of band stacks ([`write_band_stack_vrt`]) and of a synthetic scene for tests and
examples. Image files of ordinary size go through `raster.py`; the pretraining source over scenes is
`data.SceneDataset`. Part of the installed package, not of the Hub code files.
"""

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .raster import RasterReadError, band_of_file


SCENE_MASK_SIZE = 256  # the longer side of the low-resolution valid-pixel mask kept per scene


def import_rasterio():
    """rasterio, or an `ImportError` that says how to install it."""
    try:
        import rasterio
    except ImportError as error:
        raise ImportError(
            "Reading large scenes needs rasterio: pip install 'modeling_pera[geo]' (or pip install rasterio)."
        ) from error
    return rasterio


@dataclass(frozen=True)
class SceneInfo:
    """What a scene is, read once from its header and overviews: its size, bands, CRS and where its valid pixels
    are (`valid_mask`, at most `SCENE_MASK_SIZE` on its longer side: True where not nodata)."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    band_names: tuple[str | None, ...]
    valid_mask: np.ndarray
    pixel_size: float | None = None  # metres per pixel, for square pixels of a CRS in metres

    def valid_fraction(self, row: int, col: int, size: int) -> float:
        """The valid share of the window `(row, col, size)` on the low-resolution mask (no read of the scene)."""
        mask_height, mask_width = self.valid_mask.shape
        top, bottom = row * mask_height // self.height, -(-(row + size) * mask_height // self.height)
        left, right = col * mask_width // self.width, -(-(col + size) * mask_width // self.width)
        return float(self.valid_mask[top:bottom, left:right].mean())


def describe_scene(path: str | os.PathLike) -> SceneInfo:
    """Reads a scene's header and its low-resolution valid-pixel mask (through its overviews when it has them).
    Raises a [`RasterReadError`] naming the file when rasterio cannot read it."""
    rasterio = import_rasterio()
    try:
        with rasterio.open(path) as scene:
            scale = max(scene.width, scene.height) / SCENE_MASK_SIZE
            shape = (max(1, round(scene.height / scale)), max(1, round(scene.width / scale)))
            return SceneInfo(
                path=Path(path),
                width=scene.width,
                height=scene.height,
                count=scene.count,
                dtype=scene.dtypes[0],
                crs=scene.crs.to_string() if scene.crs else None,
                band_names=tuple(scene.descriptions),
                pixel_size=pixel_size_in_metres(scene),
                # every band valid, as in read_scene_window (dataset_mask ignores nodata in overviews)
                valid_mask=(scene.read_masks(out_shape=(scene.count, *shape)) > 0).all(axis=0),
            )
    except rasterio.errors.RasterioError as error:
        raise RasterReadError(f"{path} cannot be read as a raster scene: {error}") from error


def pixel_size_in_metres(scene) -> float | None:
    """The pixel size in metres of a rasterio (or TorchGeo) dataset, when its CRS is projected in metres and its
    pixels are square; else None."""
    if scene.crs is None:
        return None
    crs = import_rasterio().crs.CRS.from_user_input(scene.crs)  # TorchGeo's is pyproj's
    if not crs.is_projected or crs.linear_units not in ("metre", "meter", "m"):
        return None
    width, height = scene.res
    return float(width) if math.isclose(width, height, rel_tol=1e-6) else None


def read_scene_window(
    scene, bands: Sequence[int], row: int, col: int, size: int, out_size: int
) -> tuple[np.ndarray, float]:
    """
    Reads the `size` x `size` window at `(row, col)` of the open rasterio dataset `scene`, only that window, at
    `out_size` x `out_size` pixels (averaged, through the overviews when `out_size < size`), bands `bands` (0-based).
    Returns `(pixels, valid_fraction)`: pixels as uint8 for 8-bit scenes, float32 otherwise, 0 where not valid
    (nodata, masked, or NaN). Raises a [`RasterReadError`] when the read fails (e.g. a corrupt tile).
    """
    rasterio = import_rasterio()
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    try:
        pixels = scene.read(
            [band + 1 for band in bands],
            window=Window(col, row, size, size),
            out_shape=(len(bands), out_size, out_size),
            resampling=Resampling.average if out_size < size else Resampling.nearest,
            masked=True,
        )
    except rasterio.errors.RasterioError as error:
        raise RasterReadError(f"{scene.name} window (row {row}, col {col}, {size} px): {error}") from error
    valid = ~np.ma.getmaskarray(pixels).any(axis=0)
    data = pixels.data if pixels.dtype == np.uint8 else pixels.data.astype(np.float32)
    if data.dtype == np.float32:
        valid &= np.isfinite(data).all(axis=0)
    return np.where(valid, data, 0).astype(data.dtype, copy=False), float(valid.mean())


# GDAL's names of the numpy dtypes a VRT band can have
_VRT_DATA_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def write_band_stack_vrt(
    band_files: Sequence[str | os.PathLike], path: str | os.PathLike, resampling: str = "bilinear"
) -> Path:
    """
    Stacks single-band rasters of one area into one multi-band scene on the grid of the finest: a GDAL VRT (what
    `gdalbuildvrt -separate -resolution highest` makes), which `--train_scenes` reads like any scene. For band files
    of different resolutions, such as Sentinel-2's 10, 20 and 60 m bands: the coarser bands are resampled
    (`resampling`: "bilinear", "cubic", "average" or "nearest") when a window is read. Each band is named after its
    file (`<scene>_<band>.tif` -> `<band>`, else the file's stem), so `--bands` can pick bands by name.

    The files must share their CRS, extent and data type; otherwise a `ValueError` names the file that differs.
    Returns `path`.
    """
    from xml.sax.saxutils import escape

    rasterio = import_rasterio()
    if resampling not in ("bilinear", "cubic", "average", "nearest"):
        raise ValueError(f"resampling must be bilinear, cubic, average or nearest, got {resampling!r}.")
    if not band_files:
        raise ValueError("write_band_stack_vrt needs at least one band file.")
    bands = []
    for band_file in map(Path, band_files):
        try:
            with rasterio.open(band_file) as band:
                bands.append({"path": band_file.resolve(), "profile": band.profile, "bounds": band.bounds})
        except rasterio.errors.RasterioError as error:
            raise RasterReadError(f"{band_file} cannot be read as a raster: {error}") from error
    finest = min(bands, key=lambda band: band["profile"]["transform"].a)
    crs, dtype, bounds = finest["profile"]["crs"], finest["profile"]["dtype"], finest["bounds"]
    for band in bands:
        profile = band["profile"]
        if profile["count"] != 1:
            raise ValueError(f"{band['path']} has {profile['count']} bands; a band stack takes single-band files.")
        if profile["crs"] != crs or profile["dtype"] != dtype:
            raise ValueError(
                f"{band['path']} is {profile['dtype']} in {profile['crs']}, {finest['path']} {dtype} in {crs}: stack "
                "bands of one CRS and data type."
            )
        if any(abs(a - b) > profile["transform"].a / 2 for a, b in zip(band["bounds"], bounds)):
            raise ValueError(
                f"{band['path']} covers {tuple(band['bounds'])}, {finest['path']} {tuple(bounds)}: stack bands of one "
                "area."
            )
    pixel_width, pixel_height = finest["profile"]["transform"].a, -finest["profile"]["transform"].e
    width, height = finest["profile"]["width"], finest["profile"]["height"]
    lines = [
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
        f"  <SRS>{escape(crs.to_wkt())}</SRS>",
        f"  <GeoTransform>{bounds.left!r}, {pixel_width!r}, 0, {bounds.top!r}, 0, {-pixel_height!r}</GeoTransform>",
    ]
    for index, band in enumerate(bands, start=1):
        profile, nodata = band["profile"], band["profile"]["nodata"]
        lines += [
            f'  <VRTRasterBand dataType="{_VRT_DATA_TYPES[dtype]}" band="{index}">',
            f"    <Description>{escape(band_of_file(band['path'].name) or band['path'].stem)}</Description>",
            *([f"    <NoDataValue>{nodata!r}</NoDataValue>"] if nodata is not None else []),
            f'    <ComplexSource resampling="{resampling}">',
            f'      <SourceFilename relativeToVRT="0">{escape(str(band["path"]))}</SourceFilename>',
            "      <SourceBand>1</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{profile["width"]}" ySize="{profile["height"]}"/>',
            f'      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>',
            *([f"      <NODATA>{nodata!r}</NODATA>"] if nodata is not None else []),
            "    </ComplexSource>",
            "  </VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def write_synthetic_scene(
    path: str | os.PathLike,
    size: int = 8000,
    border: int = 1500,
    count: int = 4,
    crs: str = "EPSG:32633",
    pixel_size: float = 10.0,
    overviews: bool = True,
) -> Path:
    """
    Writes a large scene to try scene pretraining without downloading one: a `size` x `size` uint16 GeoTIFF laid out
    as a cloud-optimised one (512 px tiles, deflate, overviews at 1/2 to 1/32), with `count` smooth bands of values
    1000-1800 (band b adds 10 b) inside a nodata (0) `border`, in `crs` with `pixel_size` m pixels. Written a strip
    at a time, so memory stays small; its folder is made if missing. Returns `path`.
    """
    rasterio = import_rasterio()
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": count,
        "dtype": "uint16",
        "crs": crs,
        "transform": from_origin(500_000, 5_000_000, pixel_size, pixel_size),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    columns = np.arange(size)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as scene:
        for top in range(0, size, 1000):
            rows = np.arange(top, min(top + 1000, size))[:, None]
            values = 1000 + (rows * 7 + columns[None] * 3) % 800
            inside = (rows >= border) & (rows < size - border) & (columns >= border) & (columns < size - border)
            strip = np.where(inside, values, 0).astype(np.uint16)
            scene.write(np.stack([strip + 10 * band for band in range(count)]), window=Window(0, top, size, len(rows)))
        if overviews:
            scene.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    return Path(path)


__all__ = [
    "SceneInfo",
    "describe_scene",
    "import_rasterio",
    "pixel_size_in_metres",
    "read_scene_window",
    "write_band_stack_vrt",
    "write_synthetic_scene",
]
