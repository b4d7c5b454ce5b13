"""PerA pretraining with Accelerate: parameter groups, the training step, checkpoints that resume exactly, and the
export of the teacher encoder.

`pretrain(arguments)` is the whole job; `examples/run_pretraining.py` only parses flags into `PretrainingArguments`.
"""

import ast
import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
from tqdm.auto import tqdm

from .configuration_pera import PeraConfig
from .data import check_dataset, load_pretraining_dataset, make_pretraining_dataloader, make_pretraining_dataset
from .hub import pretraining_card_info, push_folder_to_hub, write_model_card
from .image_processing_pera import PeraImageProcessor
from .modeling_pera import PeraForPreTraining
from .schedules import PretrainingSchedule, ScheduleValues
from .views import AlignedPairViews


logger = logging.getLogger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
SNAPSHOTS_DIRNAME = "snapshots"
TRAINER_STATE_NAME = "trainer_state.json"
# Parameters that are not weight matrices: decaying them pulls tokens, positions, scales and offsets to zero.
NO_DECAY_NAMES = ("cls_token", "mask_token", "position_embeddings", "weight_g")
# Operations whose outputs selective activation checkpointing keeps: matrix products and attention, costly to
# recompute. The rest of a block (norms, GELU, casts, residual adds, drop path) is recomputed in backward.
KEPT_BY_SELECTIVE_CHECKPOINTING = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


# Hyper-parameter sets. "reference" is method.md's recipe, made for 200 epochs over millions of images. Measured on
# short CPU runs (docs/training.md), it does not beat a random-init encoder: its 131072 (or thousands of) prototypes
# keep the teacher's targets near-uniform for hundreds of steps. "short-budget" is for runs of a few hundred steps,
# each change measured by benchmarks/sweep.py (docs/training.md): fewer prototypes, lighter drop path, an lr for small
# batches, a faster-moving teacher, and narrower heads and fewer local crops (1.65x the steps in the same time).
RECIPES: dict[str, dict[str, dict]] = {
    "reference": {"config": {}, "arguments": {"learning_rate": 1e-3, "momentum_start": 0.992}},
    "short-budget": {
        "config": {
            "num_prototypes": 1024,
            "drop_path_rate": 0.1,
            "head_hidden_size": 512,
            "head_bottleneck_size": 256,
            "num_local_crops": 4,
        },
        "arguments": {"learning_rate": 2e-4, "momentum_start": 0.95},
    },
}


@dataclass
class PretrainingArguments:
    """Flags of `examples/run_pretraining.py` (the names follow transformers' `run_mim_no_trainer.py`)."""

    output_dir: str = field(metadata={"help": "Where checkpoints, the final model and `encoder/` are written."})
    train_dir: list[str] | None = field(
        default=None, metadata={"help": "Folder(s) of images, pooled (recursive; jpg/png/tif/GeoTIFF, band folders)."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` dataset: a Hub id or 'imagefolder'."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    image_column_name: str = field(default="image", metadata={"help": "The dataset column holding the images."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Continue from a PerA checkpoint or encoder."})
    model_size: str = field(default="vit-small", metadata={"help": "Backbone preset for a new model (see PERA_PRESETS)."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated config settings, e.g. 'image_size=224,local_crop_size=96,num_prototypes=8192'."},
    )
    recipe: str = field(
        default="reference",
        metadata={
            "help": "Hyper-parameter set: 'reference' (method.md) or 'short-budget' (runs of a few hundred to a few "
            "thousand steps; see RECIPES). --learning_rate, --momentum_start and --config_overrides win over it."
        },
    )
    processor_preset: str | None = field(
        default=None, metadata={"help": "Band statistics preset (default: pera-rgb for 3 bands, rgbn for 4)."}
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Images per device and step."})
    num_train_epochs: int = field(default=100, metadata={"help": "Epochs, unless --max_train_steps is given."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Total optimizer steps; overrides epochs."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate, not scaled by batch size (default: the recipe's)."}
    )
    min_learning_rate: float = field(default=1e-6, metadata={"help": "Final learning rate of the cosine."})
    warmup_fraction: float = field(default=0.1, metadata={"help": "Fraction of steps of linear lr warm-up."})
    weight_decay_start: float = field(default=0.04, metadata={"help": "Weight decay at the start (cosine)."})
    weight_decay_end: float = field(default=0.2, metadata={"help": "Weight decay at the end."})
    momentum_start: float | None = field(
        default=None, metadata={"help": "Teacher EMA momentum at the start, cosine to 1 (default: the recipe's)."}
    )
    teacher_temperature_start: float = field(default=0.03, metadata={"help": "Teacher temperature at the start."})
    teacher_temperature_end: float = field(default=0.05, metadata={"help": "Teacher temperature after warm-up."})
    teacher_temperature_warmup_fraction: float = field(default=0.15, metadata={"help": "Fraction of steps of warm-up."})
    max_grad_norm: float = field(default=3.0, metadata={"help": "Gradient clipping norm."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Save a resumable checkpoint every N steps."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Keep at most this many step checkpoints."})
    snapshot_steps: list[int] | None = field(
        default=None,
        metadata={"help": "Also save the encoder after these steps to output_dir/snapshots/step_N (quality over time)."},
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' for the newest one in output_dir."}
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
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the encoder to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for --push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"Unknown --recipe {self.recipe!r}; choose one of {sorted(RECIPES)}.")
        for name, value in RECIPES[self.recipe]["arguments"].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def model_config_overrides(self) -> dict:
        """The config settings of a new model: the recipe's, then `--config_overrides` on top."""
        return {**RECIPES[self.recipe]["config"], **parse_config_overrides(self.config_overrides)}


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


def student_parameter_groups(model: PeraForPreTraining) -> list[dict]:
    """The trainable (student-side) parameters, split into weight-decayed matrices and the rest."""
    decayed, not_decayed = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or name.endswith(NO_DECAY_NAMES):
            not_decayed.append(parameter)
        else:
            decayed.append(parameter)
    return [{"params": decayed, "apply_weight_decay": True}, {"params": not_decayed, "apply_weight_decay": False}]


def _selective_checkpointing_policy(context, operation, *arguments, **keyword_arguments) -> CheckpointPolicy:
    if operation in KEPT_BY_SELECTIVE_CHECKPOINTING:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@contextlib.contextmanager
def _without_autocast_cache(forward_context: contextlib.AbstractContextManager):
    """`forward_context` with autocast's weight-cast cache off. Autocast keeps its casts for the whole forward pass,
    so a block run a second time in one pass (the student sees the global crops, then the local ones) would cast
    nothing, while its recomputation in backward casts its weights: selective checkpointing needs both to run the
    same operations."""
    cache_enabled = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        with forward_context:
            yield
    finally:
        torch.set_autocast_cache_enabled(cache_enabled)


def _selective_checkpointing_contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    forward_context, recompute_context = create_selective_checkpoint_contexts(_selective_checkpointing_policy)
    return _without_autocast_cache(forward_context), recompute_context


def enable_activation_checkpointing(model: PeraForPreTraining, mode: str) -> None:
    """Checkpoints every block of the student: `mode` 'full' or 'selective' (see `PretrainingArguments`)."""
    if mode not in ("full", "selective"):
        raise ValueError(f"activation checkpointing is 'full' or 'selective', got {mode!r}.")
    checkpoint_kwargs = {"use_reentrant": False}
    if mode == "selective":
        checkpoint_kwargs["context_fn"] = _selective_checkpointing_contexts
    model.student.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)


def apply_schedule(optimizer: torch.optim.Optimizer, values: ScheduleValues) -> None:
    for group in optimizer.param_groups:
        group["lr"] = values.learning_rate
        group["weight_decay"] = values.weight_decay if group["apply_weight_decay"] else 0.0


def mask_noise(config: PeraConfig, batch: dict, seed: int, micro_step: int, rank: int) -> dict[str, torch.Tensor]:
    """The mask noise of one micro-batch: a function of (seed, micro step, process), drawn on the batch's device."""
    device = batch["student_global_pixel_values"].device
    generator = torch.Generator(device=device).manual_seed(hash((seed, micro_step, rank)) & 0x7FFF_FFFF_FFFF_FFFF)
    noise = {}
    for kind in ("global", "local"):
        pixel_values = batch.get(f"student_{kind}_pixel_values")
        if pixel_values is not None:
            num_crops, batch_size, _, height, width = pixel_values.shape
            num_patches = (height // config.patch_size) * (width // config.patch_size)
            noise[f"{kind}_noise"] = torch.rand(num_crops, batch_size, num_patches, generator=generator, device=device)
    return noise


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = sorted(Path(output_dir, CHECKPOINTS_DIRNAME).glob("step_*"), key=lambda path: int(path.name[5:]))
    return checkpoints[-1] if checkpoints else None


def replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written `staging` folder to `target`, so a crash never leaves a half-written checkpoint."""
    if target.exists():
        retired = target.with_name(target.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)


def snapshot_directory(output_dir: str | os.PathLike, step: int) -> Path:
    """Where a run (PerA here, or the MAE baseline) keeps the encoder it had after `step` optimizer steps."""
    return Path(output_dir) / SNAPSHOTS_DIRNAME / f"step_{step}"


def export_encoder(model: PeraForPreTraining, processor: PeraImageProcessor, target: str | os.PathLike) -> None:
    """Writes the teacher as a stand-alone `PeraModel` with the image processor and the Hub code files to `target`,
    through a staging folder so that an interrupted export never leaves a half-written one."""
    target = Path(target)
    staging = target.with_name(f".staging_{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    model.pera.save_pretrained(staging)
    processor.save_pretrained(staging)
    replace_directory(staging, target)


def export_pretrained(model: PeraForPreTraining, processor: PeraImageProcessor, output_dir: str | os.PathLike) -> None:
    """
    Writes the full pretraining checkpoint to `output_dir` and the teacher as a stand-alone `PeraModel` to
    `output_dir/encoder`, each with the image processor and the Hub code files. Everything is written to a staging
    folder first and then moved in place, so an interrupted export never leaves a half-written file.
    """
    output_dir = Path(output_dir)
    export_encoder(model, processor, output_dir / "encoder")

    staging = output_dir / ".staging_pretraining"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)
    staging.rmdir()


def save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, total_limit: int) -> Path:
    """A resumable checkpoint (model incl. the DINO centre, optimizer, RNG states, step and data position)."""
    checkpoints_dir = output_dir / CHECKPOINTS_DIRNAME
    target = checkpoints_dir / f"step_{state['completed_steps']}"
    staging = checkpoints_dir / f".staging_step_{state['completed_steps']}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(staging)
    accelerator.wait_for_everyone()  # every process writes its RNG state into the staging folder
    if accelerator.is_main_process:
        (staging / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=2))
        replace_directory(staging, target)
        for old in sorted(checkpoints_dir.glob("step_*"), key=lambda path: int(path.name[5:]))[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


def build_model(arguments: PretrainingArguments) -> PeraForPreTraining:
    if arguments.model_name_or_path:
        # training state is float32 whatever the checkpoint's dtype; the architecture is the checkpoint's
        return PeraForPreTraining.from_pretrained(
            arguments.model_name_or_path, dtype=torch.float32, **parse_config_overrides(arguments.config_overrides)
        )
    return PeraForPreTraining(PeraConfig.from_preset(arguments.model_size, **arguments.model_config_overrides()))


def build_processor(arguments: PretrainingArguments, config: PeraConfig) -> PeraImageProcessor:
    if arguments.model_name_or_path and Path(arguments.model_name_or_path, "preprocessor_config.json").is_file():
        return PeraImageProcessor.from_pretrained(arguments.model_name_or_path)
    preset = arguments.processor_preset or {3: "pera-rgb", 4: "rgbn"}.get(config.num_channels)
    if preset is None:
        raise ValueError(
            f"No default band statistics for {config.num_channels} bands: pass --processor_preset (e.g. "
            "sentinel2-l2a for 12 Sentinel-2 L2A bands)."
        )
    processor = PeraImageProcessor.from_preset(preset, size={"height": config.image_size, "width": config.image_size})
    if processor.num_channels != config.num_channels:
        raise ValueError(
            f"--processor_preset {preset} has {processor.num_channels} bands but the model has {config.num_channels}; "
            "choose a preset with the model's bands or set num_channels in --config_overrides."
        )
    return processor


def pretrain(arguments: PretrainingArguments) -> dict:
    """Runs PerA pretraining; returns a summary (steps, images/s, last losses)."""
    output_dir = Path(arguments.output_dir)
    if arguments.push_to_hub and not arguments.hub_model_id:  # checked now, not after hours of training
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/pera-vit-small-rs).")
    accelerator = Accelerator(
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        log_with=arguments.report_to if arguments.with_tracking else None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=arguments.seed),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(arguments.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    model = build_model(arguments)
    config = model.config
    processor = build_processor(arguments, config)
    if arguments.activation_checkpointing:
        enable_activation_checkpointing(model, arguments.activation_checkpointing)

    source = load_pretraining_dataset(
        dataset_name=arguments.dataset_name,
        dataset_config_name=arguments.dataset_config_name,
        train_dir=arguments.train_dir,
        image_column_name=arguments.image_column_name,
        streaming=arguments.streaming,
    )
    views = AlignedPairViews(config, processor, defer_photometry=arguments.photometry_on_device)
    dataset = make_pretraining_dataset(
        source,
        views,
        seed=arguments.seed,
        image_column_name=arguments.image_column_name,
        min_image_size=config.patch_size,
    )
    check_dataset(dataset)
    dataloader = make_pretraining_dataloader(
        dataset,
        batch_size=arguments.per_device_train_batch_size,
        num_workers=arguments.dataloader_num_workers,
        seed=arguments.seed,
    )

    optimizer = torch.optim.AdamW(
        student_parameter_groups(model),
        lr=arguments.learning_rate,
        betas=(0.9, 0.999),
        eps=2e-5,
        fused=accelerator.device.type == "cuda",
    )
    if arguments.streaming:
        # A stream shards itself over processes (and workers): accelerate must not split or dispatch it again.
        if arguments.max_train_steps is None:
            raise ValueError("A streamed dataset has no length: give --max_train_steps with --streaming.")
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    pera = accelerator.unwrap_model(model)

    if arguments.streaming:
        total_steps = arguments.max_train_steps
    else:
        steps_per_epoch = math.ceil(len(dataloader) / arguments.gradient_accumulation_steps)
        if steps_per_epoch == 0:
            raise ValueError(
                f"The dataset has fewer images than one batch ({arguments.per_device_train_batch_size} per device x "
                f"{accelerator.num_processes} processes): lower --per_device_train_batch_size or add images."
            )
        total_steps = arguments.max_train_steps or arguments.num_train_epochs * steps_per_epoch
    schedule = PretrainingSchedule(
        total_steps=total_steps,
        learning_rate=arguments.learning_rate,
        min_learning_rate=arguments.min_learning_rate,
        warmup_fraction=arguments.warmup_fraction,
        weight_decay_start=arguments.weight_decay_start,
        weight_decay_end=arguments.weight_decay_end,
        momentum_start=arguments.momentum_start,
        teacher_temperature_start=arguments.teacher_temperature_start,
        teacher_temperature_end=arguments.teacher_temperature_end,
        teacher_temperature_warmup_fraction=arguments.teacher_temperature_warmup_fraction,
    )
    # One device tensor, refilled each step: `fill_` copies nothing from the host, and a tensor (not a float that
    # changes every step) lets a compiled forward run without recompiling.
    teacher_temperature = torch.zeros((), device=accelerator.device)
    forward = torch.compile(model) if arguments.torch_compile else model
    if arguments.with_tracking:
        # TensorBoard's hyper-parameters take scalars and strings only
        hyperparameters = {k: ",".join(v) if isinstance(v, list) else v for k, v in asdict(arguments).items() if v is not None}
        accelerator.init_trackers("pera_pretraining", hyperparameters)

    completed_steps, start_epoch, batches_to_skip = 0, 0, 0
    if arguments.resume_from_checkpoint:
        checkpoint = (
            latest_checkpoint(output_dir)
            if arguments.resume_from_checkpoint == "latest"
            else Path(arguments.resume_from_checkpoint)
        )
        if checkpoint is None or not (checkpoint / TRAINER_STATE_NAME).is_file():
            raise ValueError(
                f"No checkpoint to resume from at {arguments.resume_from_checkpoint!r} (looked in "
                f"{output_dir / CHECKPOINTS_DIRNAME}); start without --resume_from_checkpoint."
            )
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
        completed_steps, start_epoch = state["completed_steps"], state["epoch"]
        batches_to_skip = state["batches_in_epoch"]
        logger.info("Resumed from %s at step %d (epoch %d, batch %d)", checkpoint, completed_steps, start_epoch, batches_to_skip)

    global_batch = arguments.per_device_train_batch_size * accelerator.num_processes * arguments.gradient_accumulation_steps
    logger.info(
        "PerA pretraining: %d steps, global batch %d, %s, %d processes, mixed precision %s",
        total_steps, global_batch, accelerator.device, accelerator.num_processes, accelerator.mixed_precision,
    )
    progress = tqdm(
        total=total_steps, initial=completed_steps, disable=not accelerator.is_local_main_process, desc="pretraining",
        unit="step",
    )
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    summary: dict = {"images_per_second": None, "loss_history": []}
    images_since_log, log_started = 0, time.perf_counter()
    train_seconds, train_started = 0.0, time.perf_counter()  # the loop's time without checkpoints and exports
    replaced_samples = torch.zeros((), dtype=torch.long, device=accelerator.device)
    model.train()
    epoch = start_epoch
    while completed_steps < total_steps:
        dataloader.set_epoch(epoch)
        batches_in_epoch = batches_to_skip
        if not batches_to_skip:
            epoch_batches = dataloader
        elif arguments.streaming:
            epoch_batches = itertools.islice(dataloader, batches_to_skip, None)
        else:
            epoch_batches = accelerator.skip_first_batches(dataloader, batches_to_skip)
        for batch in epoch_batches:
            batch = {name: tensor.to(accelerator.device, non_blocking=True) for name, tensor in batch.items()}
            if views.defer_photometry:
                batch = views.finish_batch(batch)
            values = schedule.at(completed_steps)
            apply_schedule(optimizer, values)
            teacher_temperature.fill_(values.teacher_temperature)
            replaced_samples += batch.pop("num_replaced")
            micro_step = completed_steps * arguments.gradient_accumulation_steps + (
                batches_in_epoch % arguments.gradient_accumulation_steps
            )
            with accelerator.accumulate(model):
                outputs = forward(
                    **batch,
                    **mask_noise(config, batch, arguments.seed, micro_step, accelerator.process_index),
                    teacher_temperature=teacher_temperature,
                )
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, arguments.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            batches_in_epoch += 1
            images_since_log += arguments.per_device_train_batch_size * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            pera.update_teacher(values.momentum)
            completed_steps += 1
            progress.update(1)

            if completed_steps % arguments.logging_steps == 0 or completed_steps == total_steps:
                scalars = {
                    name: float(outputs[name].detach())  # one host sync per logging interval
                    for name in ("loss", "dino_loss", "koleo_loss", "pixel_loss", "teacher_entropy", "center_norm")
                }
                if not math.isfinite(scalars["loss"]):
                    raise FloatingPointError(
                        f"The loss became {scalars['loss']} at step {completed_steps} ({scalars}). Lower "
                        "--learning_rate or --max_grad_norm, check the inputs for NaN/inf, and resume from the last "
                        f"checkpoint in {output_dir / CHECKPOINTS_DIRNAME}."
                    )
                elapsed = time.perf_counter() - log_started
                scalars.update(
                    learning_rate=values.learning_rate,
                    weight_decay=values.weight_decay,
                    momentum=values.momentum,
                    teacher_temperature=values.teacher_temperature,
                    images_per_second=images_since_log / elapsed,
                    replaced_samples=int(replaced_samples),
                )
                images_since_log, log_started = 0, time.perf_counter()
                summary.update(scalars)
                summary["loss_history"].append((completed_steps, scalars["loss"]))
                progress.set_postfix(
                    loss=f"{scalars['loss']:.3f}", dino=f"{scalars['dino_loss']:.3f}",
                    pixel=f"{scalars['pixel_loss']:.3f}", lr=f"{values.learning_rate:.2e}",
                    img_s=f"{scalars['images_per_second']:.1f}",
                )
                if arguments.with_tracking:
                    accelerator.log(scalars, step=completed_steps)

            saving_checkpoint = bool(arguments.checkpointing_steps) and completed_steps % arguments.checkpointing_steps == 0
            saving_snapshot = completed_steps in (arguments.snapshot_steps or ())
            if saving_checkpoint or saving_snapshot:
                accelerator.wait_for_everyone()
                train_seconds += time.perf_counter() - train_started
            if saving_snapshot and accelerator.is_main_process:
                export_encoder(pera, processor, snapshot_directory(output_dir, completed_steps))
            if saving_checkpoint:
                state = {"completed_steps": completed_steps, "epoch": epoch, "batches_in_epoch": batches_in_epoch}
                save_checkpoint(accelerator, output_dir, state, arguments.checkpoints_total_limit)
                if accelerator.is_main_process:
                    export_pretrained(pera, processor, output_dir)
            if saving_checkpoint or saving_snapshot:
                train_started = time.perf_counter()
            if completed_steps >= total_steps:
                break
        if batches_in_epoch == 0:
            raise ValueError("The data yielded no batch in a whole epoch: check the dataset and the batch size.")
        epoch, batches_to_skip = epoch + 1, 0
    progress.close()

    accelerator.wait_for_everyone()
    train_seconds += time.perf_counter() - train_started
    if accelerator.is_main_process:
        export_pretrained(pera, processor, output_dir)
        if arguments.push_to_hub:
            card_info = pretraining_card_info(
                arguments, config, completed_steps=completed_steps, num_processes=accelerator.num_processes
            )
            push_encoder(output_dir / "encoder", arguments.hub_model_id, arguments.hub_token, card_info=card_info)
    if arguments.with_tracking:
        accelerator.end_training()
    summary.update(completed_steps=completed_steps, replaced_samples=int(replaced_samples), train_seconds=train_seconds)
    return summary


def push_encoder(
    encoder_dir: Path, hub_model_id: str | None, hub_token: str | None, card_info: dict | None = None
) -> str:
    """
    Writes the model card into the exported encoder folder (weights, config, processor, code files) and uploads the
    folder to a Hub model repository.

    `card_info` holds keyword arguments of [`~modeling_pera.hub.write_model_card`] (e.g. the output of
    [`~modeling_pera.hub.pretraining_card_info`], `probe_results`, `license`). Returns the full repository id.
    """
    if not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/pera-vit-small-rs).")
    write_model_card(encoder_dir, repo_id=hub_model_id, **(card_info or {}))
    return push_folder_to_hub(encoder_dir, hub_model_id, token=hub_token, commit_message="Upload PerA encoder")
