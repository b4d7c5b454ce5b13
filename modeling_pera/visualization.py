# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""What an encoder's features capture, as pictures: the PCA of the patch features mapped to RGB (as in the DINO
papers), the CLS token's attention per head in the last block, and the nearest neighbours of an image in a gallery.

Images with any number of bands are shown as an RGB composite: the red, green and blue bands when the band names say
which they are, else the first three bands, each stretched between two percentiles.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from .evaluation import extract_features, preprocess_image_file
from .raster import read_image


# Band names (lower case) that identify the red, green and blue bands: plain names and Sentinel-2 / Landsat 8-9 band
# numbers.
RGB_BAND_NAMES = {
    "red": ("red", "r", "b04", "b4"),
    "green": ("green", "g", "b03", "b3"),
    "blue": ("blue", "b", "b02", "b2"),
}
# Each principal component is scaled between these quantiles (over all patches) for display.
PCA_CLIP_QUANTILE = 0.01
# Side of one panel of the figures, in inches.
PANEL_SIZE = 1.8


def select_rgb_bands(num_bands: int, band_names: Sequence[str] | None = None) -> list[int]:
    """
    The indices of the bands to show as red, green and blue.

    Args:
        num_bands (`int`):
            The number of bands of the image.
        band_names (`Sequence[str]`, *optional*):
            The name of each band (e.g. `["red", "green", "blue", "nir"]` or Sentinel-2's `["B01", ..., "B12"]`).

    Returns:
        `list[int]`: three band indices: the bands named red, green and blue when all three are found, else the first
        three bands (the first band three times for images with fewer than 3 bands).
    """
    if band_names is not None and len(band_names) == num_bands:
        lower_names = [name.lower() for name in band_names]
        found = [
            next((index for index, name in enumerate(lower_names) if name in aliases), None)
            for aliases in RGB_BAND_NAMES.values()
        ]
        if None not in found:
            return found
    return [0, 1, 2] if num_bands >= 3 else [0, 0, 0]


def rgb_composite(
    pixels: np.ndarray | torch.Tensor,
    band_names: Sequence[str] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> np.ndarray:
    """
    An RGB picture of an image with any number of bands.

    Args:
        pixels (`np.ndarray` or `torch.Tensor`):
            The image, `(bands, height, width)`, of any numeric type.
        band_names (`Sequence[str]`, *optional*):
            The name of each band, to find the red, green and blue bands (see [`select_rgb_bands`]).
        percentiles (`tuple[float, float]`, *optional*, defaults to `(2.0, 98.0)`):
            Each shown band is stretched linearly from its low percentile (black) to its high percentile (white), so
            that 16-bit or reflectance data is visible and a few extreme pixels do not wash it out.

    Returns:
        `np.ndarray`: float32 `(height, width, 3)` in [0, 1].
    """
    pixels = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if pixels.ndim != 3:
        raise ValueError(f"Expected an image of shape (bands, height, width), got {pixels.shape}.")
    composite = pixels[select_rgb_bands(pixels.shape[0], band_names)].astype(np.float32)
    low, high = np.nanpercentile(composite, percentiles, axis=(1, 2), keepdims=True)
    composite = (composite - low) / np.maximum(high - low, np.finfo(np.float32).eps)
    return np.nan_to_num(composite.clip(0, 1)).astype(np.float32).transpose(1, 2, 0)


def pca_feature_maps(patch_features: torch.Tensor, grid_size: tuple[int, int]) -> np.ndarray:
    """
    The first three principal components of patch features, as RGB pictures.

    The components are fitted on the patches of all given images together, so that a colour means the same
    direction in feature space in every picture; each component is then scaled to [0, 1] between its 1st and 99th
    percentiles over all images (values beyond are clipped).

    Args:
        patch_features (`torch.Tensor`):
            `(batch, num_patches, dim)`, patches in raster order.
        grid_size (`tuple[int, int]`):
            `(grid_height, grid_width)` with `grid_height * grid_width == num_patches`.

    Returns:
        `np.ndarray`: float32 `(batch, grid_height, grid_width, 3)` in [0, 1].
    """
    batch_size, num_patches, dim = patch_features.shape
    if grid_size[0] * grid_size[1] != num_patches:
        raise ValueError(f"A {grid_size[0]}x{grid_size[1]} grid does not hold {num_patches} patches.")
    features = patch_features.reshape(-1, dim).float()
    features = features - features.mean(dim=0)
    # right singular vectors = principal directions; fewer than 3 only for degenerate inputs (dim or patches < 3)
    _, _, directions = torch.linalg.svd(features, full_matrices=False)
    components = features @ directions[:3].T
    components = F.pad(components, (0, 3 - components.shape[1]))
    # a few outlying patches would otherwise squeeze every other patch into a narrow band of colours
    low = torch.quantile(components, PCA_CLIP_QUANTILE, dim=0)
    high = torch.quantile(components, 1 - PCA_CLIP_QUANTILE, dim=0)
    components = ((components - low) / (high - low).clamp_min(torch.finfo(torch.float32).eps)).clamp(0, 1)
    return components.reshape(batch_size, *grid_size, 3).cpu().numpy()


@dataclass
class FeatureMaps:
    """
    Pictures of what an encoder sees in a batch of images.

    Attributes:
        pca (`np.ndarray`):
            `(batch, grid_height, grid_width, 3)` in [0, 1]: the PCA of the patch features (see [`pca_feature_maps`]).
        attention (`np.ndarray`):
            `(batch, num_heads, grid_height, grid_width)`: the last block's attention of the CLS token to each patch,
            per head (each row sums to 1 with the CLS token's attention to itself).
    """

    pca: np.ndarray
    attention: np.ndarray


@torch.no_grad()
def compute_feature_maps(model: nn.Module, pixel_values: torch.Tensor) -> FeatureMaps:
    """
    Runs a PerA encoder (or a ViT with a CLS token) on `pixel_values` and returns its PCA and CLS-attention maps.

    Attention weights only exist with eager attention: the model is switched to `attn_implementation="eager"` for the
    call and switched back afterwards.

    Args:
        model (`nn.Module`):
            A [`PeraModel`] (or any encoder whose outputs are CLS + patch tokens and which returns `attentions`).
        pixel_values (`torch.Tensor`):
            `(batch, bands, height, width)`, preprocessed.

    Returns:
        [`FeatureMaps`]
    """
    device = next(model.parameters()).device
    patch_size = model.config.patch_size
    grid_size = (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)
    attention_implementation = model.config._attn_implementation
    was_training = model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        outputs = model(pixel_values=pixel_values.to(device), output_attentions=True)
    finally:
        model.set_attn_implementation(attention_implementation)
        model.train(was_training)
    num_patches = grid_size[0] * grid_size[1]
    patch_tokens = outputs.last_hidden_state[:, -num_patches:]
    cls_attention = outputs.attentions[-1][:, :, 0, -num_patches:]
    attention = cls_attention.reshape(*cls_attention.shape[:2], *grid_size).float().cpu().numpy()
    return FeatureMaps(pca=pca_feature_maps(patch_tokens, grid_size), attention=attention)


def nearest_neighbours(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    num_neighbours: int,
    excluded: Sequence[int | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The gallery items most similar (cosine) to each query.

    Args:
        query_features (`torch.Tensor`):
            `(num_queries, dim)`.
        gallery_features (`torch.Tensor`):
            `(num_gallery, dim)`.
        num_neighbours (`int`):
            How many neighbours to return per query (at most the gallery size, less the excluded item).
        excluded (`Sequence[int | None]`, *optional*):
            Per query, a gallery index never to return (the query itself when it is in the gallery), or `None`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the gallery indices `(num_queries, k)` and their similarities, most
        similar first.
    """
    query_features = F.normalize(query_features.float(), dim=-1)
    gallery_features = F.normalize(gallery_features.float(), dim=-1)
    similarities = query_features @ gallery_features.T
    available = gallery_features.shape[0]
    for query_index, gallery_index in enumerate(excluded or []):
        if gallery_index is not None:
            similarities[query_index, gallery_index] = float("-inf")
            available = gallery_features.shape[0] - 1
    values, indices = similarities.topk(min(num_neighbours, available), dim=-1)
    return indices, values


def _normalise_map(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) / max(high - low, np.finfo(np.float32).eps)


def plot_feature_figure(
    composite: np.ndarray,
    pca_map: np.ndarray,
    attention: np.ndarray,
    neighbours: Sequence[tuple[np.ndarray, str]] = (),
    title: str | None = None,
) -> Figure:
    """
    One figure for one image: the input, the PCA map and the CLS attention of each head side by side, and below them
    the retrieval strip (the input, then its nearest neighbours).

    Args:
        composite (`np.ndarray`):
            The input as RGB, `(height, width, 3)` in [0, 1] (see [`rgb_composite`]).
        pca_map (`np.ndarray`):
            `(grid_height, grid_width, 3)` in [0, 1].
        attention (`np.ndarray`):
            `(num_heads, grid_height, grid_width)`; each head's map is scaled to its own range.
        neighbours (`Sequence[tuple[np.ndarray, str]]`, *optional*):
            The neighbours as `(RGB composite, caption)`, most similar first; no retrieval row when empty.
        title (`str`, *optional*):
            The figure's title.

    Returns:
        `matplotlib.figure.Figure`
    """
    num_heads = attention.shape[0]
    num_columns = max(2 + num_heads, 1 + len(neighbours))
    num_rows = 2 if neighbours else 1
    figure_size = (PANEL_SIZE * num_columns, PANEL_SIZE * num_rows + (0.3 if title else 0))
    figure = Figure(figsize=figure_size, layout="constrained")
    axes = np.asarray(figure.subplots(num_rows, num_columns, squeeze=False))
    for axis in axes.flat:
        axis.set_axis_off()
    # feature and attention maps are drawn blocky: one square per patch
    top_row = [(composite, "input", "bilinear"), (pca_map, "patch PCA", "nearest")]
    top_row += [
        (_normalise_map(attention[head]), f"CLS attention, head {head + 1}", "nearest") for head in range(num_heads)
    ]
    for axis, (picture, caption, interpolation) in zip(axes[0], top_row):
        axis.imshow(picture, cmap="inferno" if picture.ndim == 2 else None, interpolation=interpolation)
        axis.set_title(caption, fontsize=8)
    if neighbours:
        retrieval_row = [(composite, "query")] + list(neighbours)
        for axis, (picture, caption) in zip(axes[1], retrieval_row):
            axis.imshow(picture)
            axis.set_title(caption, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def _retrieval_strips(
    model: nn.Module,
    processor: Any,
    image_paths: list[Path],
    gallery_paths: list[Path],
    num_neighbours: int,
    batch_size: int,
    processor_kwargs: dict,
    band_names: Sequence[str] | None,
) -> list[list[tuple[np.ndarray, str]]]:
    """For each image, its `num_neighbours` nearest gallery images (CLS cosine similarity, never itself) as (RGB
    composite, caption) pairs."""
    features = extract_features(
        model, processor, image_paths + gallery_paths, batch_size=batch_size, processor_kwargs=processor_kwargs,
        progress_bar=False,
    )  # fmt: skip
    gallery_index = {path.resolve(): index for index, path in enumerate(gallery_paths)}
    indices, similarities = nearest_neighbours(
        features[: len(image_paths)],
        features[len(image_paths) :],
        num_neighbours,
        excluded=[gallery_index.get(path.resolve()) for path in image_paths],
    )
    strips = [[] for _ in image_paths]
    for query, (row, scores) in enumerate(zip(indices.tolist(), similarities.tolist())):
        for index, score in zip(row, scores):
            neighbour = gallery_paths[index]
            caption = f"{neighbour.parent.name}/{neighbour.stem}\ncosine {score:.3f}"
            strips[query].append((rgb_composite(read_image(neighbour), band_names), caption))
    return strips


def visualize_features(
    model: nn.Module,
    processor: Any,
    image_paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    gallery_paths: Sequence[str | os.PathLike] | None = None,
    num_neighbours: int = 5,
    image_size: int | None = None,
    batch_size: int = 64,
    dpi: int = 100,
) -> list[Path]:
    """
    Saves one PNG per image with its feature maps and, given a gallery, its nearest neighbours (see
    [`plot_feature_figure`]).

    The PCA is fitted on the patches of all `image_paths` together, so colours are comparable between the figures.
    Neighbours are ranked by the cosine similarity of the CLS features (see
    [`~modeling_pera.evaluation.extract_features`]); an image is never its own neighbour.

    Args:
        model (`nn.Module`):
            A [`PeraModel`].
        processor:
            Its image processor (e.g. [`PeraImageProcessor`]); its `band_names` pick the composite's bands.
        image_paths (`Sequence[str | os.PathLike]`):
            The images to show (files or band folders, as [`~modeling_pera.raster.read_image`] reads them).
        output_dir (`str` or `os.PathLike`):
            Where to write `<image name>_features.png`.
        gallery_paths (`Sequence[str | os.PathLike]`, *optional*):
            The images to retrieve neighbours from; no retrieval strip when not given.
        num_neighbours (`int`, *optional*, defaults to 5):
            Neighbours per image.
        image_size (`int`, *optional*):
            Side of the square model input; the processor's size when not given. Larger inputs give finer maps.
        batch_size (`int`, *optional*, defaults to 64):
            Images per forward pass when encoding the gallery.
        dpi (`int`, *optional*, defaults to 100):
            Resolution of the PNGs.

    Returns:
        `list[Path]`: the written files, in the order of `image_paths`.
    """
    image_paths = [Path(path) for path in image_paths]
    if not image_paths:
        raise ValueError("No images to visualise.")
    processor_kwargs = {"size": {"height": image_size, "width": image_size}} if image_size else {}
    band_names = getattr(processor, "band_names", None) or getattr(model.config, "band_names", None)
    pixel_values = torch.stack([preprocess_image_file(path, processor, **processor_kwargs) for path in image_paths])
    feature_maps = compute_feature_maps(model, pixel_values)

    neighbours_of = [[] for _ in image_paths]
    if gallery_paths:
        neighbours_of = _retrieval_strips(
            model, processor, image_paths, [Path(path) for path in gallery_paths], num_neighbours, batch_size,
            processor_kwargs, band_names,
        )  # fmt: skip

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, path in enumerate(image_paths):
        figure = plot_feature_figure(
            rgb_composite(read_image(path), band_names),
            feature_maps.pca[index],
            feature_maps.attention[index],
            neighbours_of[index],
            title=f"{path.parent.name}/{path.name}",
        )
        output_path = output_dir / f"{path.stem}_features.png"
        figure.savefig(output_path, dpi=dpi)
        written.append(output_path)
    return written


__all__ = [
    "FeatureMaps",
    "compute_feature_maps",
    "nearest_neighbours",
    "pca_feature_maps",
    "plot_feature_figure",
    "rgb_composite",
    "select_rgb_bands",
    "visualize_features",
]
