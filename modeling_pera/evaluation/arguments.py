# Copyright 2026 The modeling_pera authors. Licensed under the Apache License, Version 2.0.
"""The settings of an evaluation (`EvaluationArguments`): the flags of `examples/run_eval.py` and what
[`evaluate_encoder`] and [`evaluate_segmentation`] take, each default in one place."""

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .datasets import GID_MTL5_CLASS_NAMES
from .features import POOLINGS


# The --bands flag of the scripts that feed images to a trained encoder (run_eval, run_classification,
# run_segmentation).
BANDS_HELP = (
    "The images' bands to give the encoder, in its order (0-based), e.g. 0 1 2 for the RGB of RGB+NIR tiles given to "
    "an RGB encoder; all bands by default."
)


@dataclass
class EvaluationArguments:
    """Flags of `examples/run_eval.py`: the encoder, how images are encoded, and the settings of each probe."""

    model_name_or_path: str = field(
        metadata={"help": "Any AutoModel-loadable vision encoder with an image processor (Hub id or folder)."}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "A labelled folder <data_dir>/<class>/<image> for the kNN and linear probe."}
    )
    segmentation_dir: str | None = field(
        default=None,
        metadata={
            "help": "An image/mask folder <dir>/{image,mask}/<scene>/<name>.<ext> (e.g. GID-MTL5) for the "
            "segmentation probe."
        },
    )
    k: int = field(default=20, metadata={"help": "Neighbours of the kNN vote."})
    temperature: float = field(default=0.07, metadata={"help": "Temperature of the kNN vote weights."})
    train_fraction: float | None = field(
        default=None, metadata={"help": "Fraction of each class (scene class) for training (default 0.5)."}
    )
    train_per_class: int | None = field(
        default=None, metadata={"help": "Training images per class, instead of a fraction (classification)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the splits, of the probes and of random weights."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    image_size: int | None = field(
        default=None, metadata={"help": "Side of the square model input (default: the processor's)."}
    )
    pooling: str = field(
        default="cls", metadata={"help": "Features of the kNN and linear probe.", "choices": list(POOLINGS)}
    )
    bands: list[int] | None = field(default=None, metadata={"help": BANDS_HELP})
    linear_probe: bool = field(default=False, metadata={"help": "Also fit a logistic-regression probe."})
    random_init: bool = field(default=False, metadata={"help": "Use random weights of the same architecture."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the Python code a non-PerA model folder or Hub repository ships (only code you trust)."
        },
    )
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})
    num_workers: int = field(default=0, metadata={"help": "Processes reading the images."})
    cache_path: str | None = field(
        default=None,
        metadata={"help": "File caching the features between runs (the patch features go to <name>-patches.pt)."},
    )
    progress_bar: bool = field(default=True, metadata={"help": "Show a progress bar while encoding."})
    segmentation_class_names: list[str] | None = field(
        default_factory=lambda: list(GID_MTL5_CLASS_NAMES),
        metadata={"help": "The name of each mask value (default: GID-MTL5's)."},
    )
    ignore_index: int | None = field(default=0, metadata={"help": "The mask value of unlabelled pixels."})
    segmentation_epochs: int = field(default=20, metadata={"help": "Training epochs of the segmentation probe."})
    segmentation_learning_rate: float = field(
        default=1e-2, metadata={"help": "Learning rate of the segmentation probe."}
    )
    output_json: str | None = field(default=None, metadata={"help": "Where to write the results."})
    compare_to: str | None = field(
        default=None, metadata={"help": "An earlier --output_json of run_eval.py: print the figures side by side."}
    )

    def __post_init__(self):
        if self.train_fraction is not None and self.train_per_class is not None:
            raise ValueError("Give --train_fraction or --train_per_class, not both.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {list(POOLINGS)}, got {self.pooling!r}.")
        if self.compare_to is not None and not Path(self.compare_to).is_file():
            raise ValueError(
                f"--compare_to {self.compare_to}: no such file; run run_eval.py with --output_json first."
            )

    @property
    def torch_device(self) -> torch.device:
        """`device`, or CUDA when available, else the CPU."""
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def patch_cache_path(self) -> Path | None:
        """The cache file of the segmentation probe's patch features, beside `cache_path`."""
        if self.cache_path is None:
            return None
        path = Path(self.cache_path)
        return path.with_name(f"{path.stem}-patches{path.suffix}")


__all__ = ["BANDS_HELP", "EvaluationArguments"]
