"""The flags of a pretraining run (`PretrainingArguments`), the hyper-parameter recipes and `--config_overrides`."""

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..bands_pera import PERA_PROCESSOR_PRESETS
from ..configuration_pera import PERA_PRESETS


# Hyper-parameter sets. "reference" is the authors' recipe (their code's values), made for 200 epochs over millions
# of images. Measured on short CPU runs (docs/training.md), it does not beat a random-init encoder: its 131072 (or
# thousands of) prototypes keep the teacher's targets near-uniform for hundreds of steps. "short-budget" is for runs of
# a few hundred steps, each change measured by benchmarks/sweep.py (docs/training.md): fewer prototypes, lighter drop
# path, an lr for small batches, a faster-moving teacher, narrower heads and fewer local crops (1.65x the steps in the
# same time), per-patch normalised pixel targets (MAE's norm_pix_loss: better on every probe, two seeds) and a softer
# teacher (temperature 0.04 -> 0.07, the DINO paper's warm-up, instead of 0.03 -> 0.05: kNN +4, two seeds), then lr
# 3e-4 with a floor of 1e-5 and the student seeing 30 % of the patches, the teacher 50 % (instead of 20 % and 60 %):
# kNN +4.3, linear probe +2.0, mIoU +0.5, on both seeds (the seventh sweep), then the teacher's temperature ending at
# 0.05 instead of 0.07: linear probe +1.8 for kNN -1.4 (the eighth sweep; the sixth found the same trade). Both keep the
# reference's weight decay.
REFERENCE_DECAY = {"min_learning_rate": 1e-6, "weight_decay_start": 0.04, "weight_decay_end": 0.2}
RECIPES: dict[str, dict[str, dict]] = {
    "reference": {
        "config": {},
        "arguments": {
            **REFERENCE_DECAY,
            "learning_rate": 1e-3,
            "momentum_start": 0.992,
            "teacher_temperature_start": 0.03,
            "teacher_temperature_end": 0.05,
        },
    },
    "short-budget": {
        "config": {
            "num_prototypes": 1024,
            "drop_path_rate": 0.1,
            "head_hidden_size": 512,
            "head_bottleneck_size": 256,
            "num_local_crops": 4,
            "normalize_pixel_targets": True,
            "student_ratio": 0.3,
            "teacher_ratio": 0.5,
        },
        "arguments": {
            **REFERENCE_DECAY,
            "learning_rate": 3e-4,
            "min_learning_rate": 1e-5,
            "momentum_start": 0.95,
            "teacher_temperature_start": 0.04,
            "teacher_temperature_end": 0.05,
        },
    },
}

# `--method mae`, the MAE baseline (He et al., 2022), takes MAE's own recipe instead of a PerA recipe: lr 1.5e-4 (its
# base lr, unscaled) warmed up then cosine to 0, weight decay 0.05; its AdamW betas (0.9, 0.95) are in methods.py.
MAE_RECIPE = {"learning_rate": 1.5e-4, "min_learning_rate": 0.0, "weight_decay_start": 0.05, "weight_decay_end": 0.05}

# Below this many steps, a run with the reference recipe is warned that short-budget is made for it.
REFERENCE_MIN_STEPS = 5_000


@dataclass
class PretrainingArguments:
    """Flags of `examples/run_pretraining.py` (the names follow transformers' `run_mim_no_trainer.py`)."""

    output_dir: str = field(metadata={"help": "Where checkpoints, the final model and `encoder/` are written."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in an output_dir that holds another run's checkpoints, deleting them (without "
            "this flag such a folder is refused, so that two runs never mix)."
        },
    )
    train_dir: list[str] | None = field(
        default=None, metadata={"help": "Folder(s) of images, pooled (recursive; jpg/png/tif/GeoTIFF, band folders)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset: a Hub id or 'imagefolder'."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    image_column_name: str = field(default="image", metadata={"help": "The dataset column holding the images."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it."})
    train_scenes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Large GeoTIFF/COG scenes (files, or folders of .tif), instead of --train_dir: each sample is a "
            "random window read alone with rasterio (pip install 'modeling_pera[geo]')."
        },
    )
    torchgeo_dataset: str | None = field(
        default=None,
        metadata={
            "help": "A TorchGeo raster dataset class over --torchgeo_paths, instead of --train_dir: a name in "
            "torchgeo.datasets (RasterDataset, NAIP, Sentinel2, ...) or a dotted path; each sample is a window of "
            "--scene_window_size px from its RandomGeoSampler (pip install 'modeling_pera[torchgeo]')."
        },
    )
    torchgeo_paths: list[str] | None = field(
        default=None, metadata={"help": "The files or folders the --torchgeo_dataset indexes."}
    )
    scene_window_size: int | None = field(
        default=None,
        metadata={"help": "Pixels per side of a scene or TorchGeo window (default: the model's image_size)."},
    )
    scene_sample_size: int | None = field(
        default=None,
        metadata={
            "help": "Pixels per side a window is read at (default: the window size; smaller reads downsample "
            "through the scenes' overviews)."
        },
    )
    scene_windows_per_epoch: int | None = field(
        default=None,
        metadata={
            "help": "Windows per epoch (default: the scenes' valid area over a window's, each pixel ~once; for "
            "TorchGeo, its sampler's length)."
        },
    )
    scene_min_valid_fraction: float = field(
        default=0.5, metadata={"help": "Windows with a smaller share of valid pixels (not nodata/NaN) are skipped."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from a PerA checkpoint or encoder."}
    )
    model_size: str = field(
        default="vit-small", metadata={"help": "Backbone size of a new model.", "choices": list(PERA_PRESETS)}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config settings, e.g. 'image_size=224,local_crop_size=96,num_prototypes=8192'."
        },
    )
    recipe: str = field(
        default="reference",
        metadata={
            "help": "Hyper-parameter set: 'reference' (the paper's, for 100+ epochs over large archives) or "
            "'short-budget' (runs of a few hundred to a few thousand steps); docs/training.md#recipes compares them. "
            "--learning_rate, --momentum_start and --config_overrides win over it.",
            "choices": list(RECIPES),
        },
    )
    method: str = field(
        default="pera",
        metadata={
            "help": "What to pretrain: 'pera', or 'mae', the MAE baseline (transformers' ViTMAE with this encoder "
            "size, MAE's own recipe, on the teacher view of one global crop per image) through the same loop, data, "
            "checkpoints and logs, to compare them at equal budget (benchmarks/representation.py). --recipe, the "
            "teacher's flags and --config_overrides of the heads apply to PerA only.",
            "choices": ["pera", "mae"],
        },
    )
    bands: list[str] | None = field(
        default=None,
        metadata={
            "help": "The bands to train on, in order: 0-based indices into each image's bands (e.g. 0 1 2 for the RGB "
            "of RGB+NIR tiles; a new model gets as many input channels), or the band names of band folders (e.g. B04 "
            "B03 B02). Default: all bands of the images, and band folders in Sentinel-2 L2A order."
        },
    )
    processor_preset: str | None = field(
        default=None,
        metadata={
            "help": "Band statistics of the inputs (default: pera-rgb for 3 bands, rgbn for 4).",
            "choices": list(PERA_PROCESSOR_PRESETS),
        },
    )
    image_mean: list[float] | None = field(
        default=None,
        metadata={
            "help": "Per-band means of the images in their own units (e.g. 16-bit digital numbers), instead of a "
            "--processor_preset; with --image_std, for bands no preset has (the images are then not rescaled)."
        },
    )
    image_std: list[float] | None = field(
        default=None, metadata={"help": "Per-band standard deviations, with --image_mean (positive)."}
    )
    ground_sampling_distance: float | None = field(
        default=None,
        metadata={
            "help": "Metres on the ground per pixel of the training images, recorded in the processor and the model "
            "card (default for --train_scenes in a metric CRS: the scenes' pixel size times window/sample size)."
        },
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Images per device and step."})
    num_train_epochs: int = field(default=100, metadata={"help": "Epochs, unless --max_train_steps is given."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Total optimizer steps; overrides epochs."})
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Also stop when the training time (checkpoints and exports not counted; kept across resumes) "
            "reaches this many minutes, and export the model as at the end. The schedules stay laid out over "
            "--max_train_steps (or the epochs): give the steps you expect in that time. With several processes, "
            "checked at logging steps."
        },
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate, not scaled by batch size (default: the recipe's)."}
    )
    min_learning_rate: float | None = field(
        default=None, metadata={"help": "Final learning rate of the cosine (default: the recipe's)."}
    )
    warmup_fraction: float = field(default=0.1, metadata={"help": "Fraction of steps of linear lr warm-up."})
    weight_decay_start: float | None = field(
        default=None, metadata={"help": "Weight decay at the start, cosine to the end (default: the recipe's)."}
    )
    weight_decay_end: float | None = field(
        default=None, metadata={"help": "Weight decay at the end (default: the recipe's)."}
    )
    momentum_start: float | None = field(
        default=None, metadata={"help": "Teacher EMA momentum at the start, cosine to 1 (default: the recipe's)."}
    )
    teacher_temperature_start: float | None = field(
        default=None, metadata={"help": "Teacher temperature at the start (default: the recipe's)."}
    )
    teacher_temperature_end: float | None = field(
        default=None, metadata={"help": "Teacher temperature after warm-up (default: the recipe's)."}
    )
    teacher_temperature_warmup_fraction: float = field(
        default=0.15, metadata={"help": "Fraction of steps of warm-up."}
    )
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient clipping norm."})
    checkpointing_steps: int | None = field(
        default=None, metadata={"help": "Save a resumable checkpoint every N steps."}
    )
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Keep at most this many step checkpoints."})
    ddp_timeout: int = field(
        default=1800,
        metadata={
            "help": "Seconds the processes of a multi-process run wait for each other: for all of them to start "
            "(machines included) and at each collective."
        },
    )
    snapshot_steps: list[int] | None = field(
        default=None,
        metadata={
            "help": "Also save the encoder after these steps to output_dir/snapshots/step_N (quality over time)."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' for the newest intact one in output_dir."}
    )
    allow_inexact_resume: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint that cannot continue the run exactly (random states missing, another "
            "number of processes, batch size or accumulation), with a warning, instead of refusing."
        },
    )
    with_tracking: bool = field(default=False, metadata={"help": "Log scalars to the trackers of --report_to."})
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker(s): tensorboard, wandb, all."})
    logging_steps: int = field(default=10, metadata={"help": "Log and update the progress bar every N steps."})
    seed: int = field(default=42, metadata={"help": "Seed of weights, data order, views and masks."})
    dataloader_num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes."})
    photometry_on_device: bool = field(
        default=True,
        metadata={
            "help": "Workers only cut the crops (8-bit images stay 8-bit); colour jitter, grayscale and normalisation "
            "run batched on the training device. Same views; faster on GPUs and on the CPU (docs/benchmarks.md)."
        },
    )
    activation_checkpointing: str | None = field(
        default=None,
        metadata={
            "help": "Recompute the student's block activations in backward: 'full' keeps only each block's input; "
            "'selective' also keeps the outputs of matrix products and attention, and recomputes the cheap rest.",
            "choices": ["full", "selective"],
        },
    )
    torch_compile: bool = field(
        default=False,
        metadata={"help": "Compile the forward pass with torch.compile (the first steps compile; pays off on GPUs)."},
    )
    fsdp: bool = field(
        default=False,
        metadata={
            "help": "Shard weights, gradients and optimizer state over the processes (FSDP2, block by block, student "
            "and teacher alike), for backbones too large for DDP; checkpoints are written by every process."
        },
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the encoder to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for --push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"Unknown --recipe {self.recipe!r}; choose one of {sorted(RECIPES)}.")
        self._check_method()
        defaults = RECIPES[self.recipe]["arguments"]
        if self.method == "mae":
            defaults = {**defaults, **MAE_RECIPE}  # the teacher's values stay the recipe's, unused
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._check_values()
        self._check_sources()

    def _check_method(self):
        if self.method not in ("pera", "mae"):
            raise ValueError(f"Unknown --method {self.method!r}; choose 'pera' or 'mae'.")
        if self.method == "mae":
            offered = {
                "activation_checkpointing": "--activation_checkpointing",
                "model_name_or_path": "--model_name_or_path",
                "push_to_hub": "--push_to_hub",
            }
            given = [flag for name, flag in offered.items() if getattr(self, name)]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: PerA only. The MAE baseline (--method mae) starts from MAE's initialisation "
                    "and trains for comparisons; its encoder is in output_dir/encoder."
                )

    def _check_values(self):
        """Flags that would otherwise mean something else silently (0 steps as 'unset') or fail hours later."""
        at_least_one = [
            "ddp_timeout",
            "per_device_train_batch_size",
            "num_train_epochs",
            "gradient_accumulation_steps",
            "logging_steps",
            "checkpoints_total_limit",
        ]
        at_least_one += [
            name for name in ("max_train_steps", "checkpointing_steps") if getattr(self, name) is not None
        ]
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"--dataloader_num_workers must be 0 or more, got {self.dataloader_num_workers}.")
        # max_train_minutes and ground_sampling_distance may stay unset (None)
        for name in ("learning_rate", "max_grad_norm", "max_train_minutes", "ground_sampling_distance"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be a positive number, got {value}.")
        for name in ("min_learning_rate", "weight_decay_start", "weight_decay_end"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name} must be a non-negative number, got {value}.")
        for name in ("warmup_fraction", "teacher_temperature_warmup_fraction", "momentum_start"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must lie in [0, 1], got {getattr(self, name)}.")
        for name in ("teacher_temperature_start", "teacher_temperature_end"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"--{name} must be positive (it divides the teacher's logits), got {getattr(self, name)}."
                )
        if any(step < 1 for step in self.snapshot_steps or ()):
            raise ValueError(f"--snapshot_steps are optimizer steps, 1 or more; got {self.snapshot_steps}.")
        if self.overwrite_output_dir and self.model_name_or_path:
            output_dir = Path(self.output_dir).resolve()
            if Path(self.model_name_or_path).resolve().is_relative_to(output_dir):
                raise ValueError(
                    f"--model_name_or_path {self.model_name_or_path} lies in --output_dir {self.output_dir}, whose "
                    "previous run --overwrite_output_dir deletes: write the new run to another --output_dir."
                )
        if self.push_to_hub and not self.hub_model_id:  # checked now, not after hours of training
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/pera-vit-small-rs).")

    def _check_sources(self):
        """The source of the images, its bands and their statistics: one source, and flags that fit it."""
        if self.bands is not None:
            if not self.bands:
                raise ValueError("--bands needs at least one band index or name.")
            numeric = [band.lstrip("-").isdigit() for band in self.bands]
            if any(numeric) and not all(numeric):
                raise ValueError(f"--bands takes band indices or band names, not both: got {self.bands}.")
        window_sources = [name for name in ("train_scenes", "torchgeo_dataset") if getattr(self, name)]
        if window_sources and (len(window_sources) > 1 or self.train_dir or self.dataset_name or self.streaming):
            raise ValueError(
                "--train_scenes and --torchgeo_dataset each replace --train_dir, --dataset_name and --streaming: give "
                "one source of images."
            )
        if bool(self.torchgeo_dataset) != bool(self.torchgeo_paths):
            raise ValueError("--torchgeo_dataset and --torchgeo_paths go together: the class and the files it reads.")
        if self.torchgeo_dataset and (self.scene_sample_size or self.bands and self.bands[0].isdigit()):
            raise ValueError(
                "With --torchgeo_dataset, TorchGeo reads the windows: --bands takes the dataset's band names, and "
                "--scene_sample_size does not apply (its res argument, in a subclass, sets the resolution)."
            )
        for name in ("scene_window_size", "scene_sample_size", "scene_windows_per_epoch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if (self.image_mean is None) != (self.image_std is None):
            raise ValueError("--image_mean and --image_std go together: one value per band each.")
        if self.image_mean is not None:
            if self.processor_preset:
                raise ValueError("--image_mean/--image_std replace --processor_preset's statistics: give one of them.")
            if len(self.image_mean) != len(self.image_std):
                raise ValueError(
                    f"--image_mean has {len(self.image_mean)} values and --image_std {len(self.image_std)}: give one "
                    "per band in both."
                )
            if not all(math.isfinite(std) and std > 0 for std in self.image_std):
                raise ValueError(
                    f"--image_std must be positive numbers (they divide the bands), got {self.image_std}."
                )

    def model_config_overrides(self) -> dict:
        """The config settings of a new model: the recipe's (PerA's only), then `--config_overrides` on top; as many
        input channels as `--bands` selects unless `num_channels` is given."""
        recipe = RECIPES[self.recipe]["config"] if self.method == "pera" else {}
        overrides = {**recipe, **parse_config_overrides(self.config_overrides)}
        if self.bands is not None:
            overrides.setdefault("num_channels", len(self.bands))
        return overrides

    def band_selection(self) -> dict:
        """`--bands` as options of the pretraining dataset: `bands` (indices into every image's bands) or
        `band_order` (the band files of band folders)."""
        if self.bands is None:
            return {}
        if all(band.lstrip("-").isdigit() for band in self.bands):
            return {"bands": [int(band) for band in self.bands]}
        return {"band_order": list(self.bands)}


def parse_config_overrides(overrides: str | None) -> dict:
    """'a=1,b=x,c=[1,2]' -> {'a': 1, 'b': 'x', 'c': [1, 2]} (Python literals, else strings)."""
    settings = {}
    for item in (overrides or "").split(","):
        if not item.strip():
            continue
        key, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"--config_overrides entries must look like key=value, got {item!r}.")
        try:
            settings[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            settings[key.strip()] = value.strip()
    return settings
