"""PerA pretraining with Accelerate, in named phases: `build_run` (model, processor, data, optimizer, schedule),
`resume` (an intact checkpoint that continues the run exactly), `train` (the loop: step, log, save) and `finish`
(the final export and the optional upload). The MAE baseline (`--method mae`) runs through the same phases: what
differs is its method's (`methods.py`).

`pretrain(arguments)` is the whole job; `examples/run_pretraining.py` parses flags into `PretrainingArguments` and
calls it.
"""

import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, set_seed

from ..cli import TrainingStopped
from ..configuration_pera import PeraConfig
from ..data import (
    GeoSamplerDataset,
    SceneDataset,
    StreamingDataLoader,
    build_torchgeo_dataset,
    check_dataset,
    find_scenes,
    load_pretraining_dataset,
    make_pretraining_dataloader,
    make_pretraining_dataset,
)
from ..hub import check_hub_access, pretraining_card_info, push_folder_to_hub, write_model_card
from ..image_processing_pera import PeraImageProcessor
from ..schedules import PretrainingSchedule, ScheduleValues
from ..views import AlignedPairViews
from .arguments import REFERENCE_MIN_STEPS, PretrainingArguments
from .building import build_processor, enable_activation_checkpointing, parameter_groups
from .checkpoints import (
    CHECKPOINTS_DIRNAME,
    TRACKER_PROJECT,
    TRAINER_STATE_NAME,
    CheckpointError,
    check_resumable,
    find_checkpoint,
    prepare_output_dir,
    save_checkpoint,
    snapshot_directory,
    stream_state_path,
)
from .methods import METHODS, MaeMethod, PeraMethod
from .monitoring import DivergenceMonitor, TrainingLog
from .sharding import (
    SHARDED_STATE_DIRNAME,
    autocast_forward,
    gathered_model,
    load_sharded_state,
    refuse_accelerate_fsdp,
    shard_model,
)


logger = logging.getLogger(__name__)


@dataclass
class TrainingState:
    """Where the run is: what a checkpoint records to resume exactly."""

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already consumed
    train_seconds: float = 0.0  # training time so far, checkpoints and exports excluded (for --max_train_minutes)


@dataclass
class Run:
    """The parts of a pretraining run, built once by `build_run`."""

    arguments: PretrainingArguments
    accelerator: Accelerator
    method: PeraMethod | MaeMethod
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped with several processes), or sharded (--fsdp)
    unwrapped_model: torch.nn.Module  # the same model, unwrapped: `PeraForPreTraining` or `ViTMAEForPreTraining`
    forward: Callable  # `model`, compiled with --torch_compile
    config: PeraConfig  # the encoder's and the views' config
    processor: PeraImageProcessor
    views: AlignedPairViews
    dataloader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    schedule: PretrainingSchedule
    total_steps: int

    def __post_init__(self):
        self.trainable = [parameter for group in self.optimizer.param_groups for parameter in group["params"]]

    @property
    def output_dir(self) -> Path:
        return Path(self.arguments.output_dir)

    def resume_settings(self) -> dict:
        """What a checkpoint must share with this run to continue it exactly (a stream's positions are per worker)."""
        settings = {
            "method": self.arguments.method,
            "num_processes": self.accelerator.num_processes,
            "per_device_train_batch_size": self.arguments.per_device_train_batch_size,
            "gradient_accumulation_steps": self.arguments.gradient_accumulation_steps,
            "streaming": self.arguments.streaming,
        }
        if self.arguments.streaming:
            settings["dataloader_num_workers"] = self.arguments.dataloader_num_workers
            settings["num_stream_shards"] = self.dataloader.dataset.num_shards
        return settings

    def model_to_export(self) -> torch.nn.Module | None:
        """The whole model for the main process to export; under --fsdp gathered from every process's shards (then
        collective: every process calls it, and the others get None)."""
        if self.arguments.fsdp:
            return gathered_model(self.unwrapped_model, self.accelerator.is_main_process)
        return self.unwrapped_model

    @property
    def stream(self) -> StreamingDataLoader | None:
        """The loader whose position a checkpoint records (a streamed dataset's), else None."""
        return self.dataloader if isinstance(self.dataloader, StreamingDataLoader) else None


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (a cluster's preemption) during training: the first asks the loop to stop after
    its current step, with a checkpoint; a second Ctrl-C stops at once. Outside the main thread, where Python cannot
    take signals, the defaults stay."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.previous_handlers = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous_handlers = {number: signal.signal(number, self.handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)

    def handle(self, number: int, frame) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number
        print(
            f"\n{signal.Signals(number).name}: stopping after this step with a checkpoint (Ctrl-C again to stop at "
            "once, without one).",
            file=sys.stderr,
        )

    def agreed(self, accelerator: Accelerator, synchronising: bool) -> bool:
        """Whether every process stops now for a signal (see [`agreed`])."""
        return agreed(accelerator, self.received is not None, synchronising)


def agreed(accelerator: Accelerator, wanted: bool, synchronising: bool) -> bool:
    """Whether every process stops now, when some `wanted` to. One process decides alone; several agree at steps where
    they synchronise anyway (logging and saving), so that no step pays for a collective."""
    if accelerator.num_processes == 1:
        return wanted
    if not synchronising:
        return False
    flag = torch.tensor(float(wanted), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def pretrain(arguments: PretrainingArguments, geo_source: tuple[Any, Any] | None = None) -> dict:
    """Runs PerA pretraining (or, with `--method mae`, the MAE baseline's); returns a summary (steps, images/s, last
    losses, loss history).

    `geo_source`, a TorchGeo dataset and its geo sampler `(dataset, sampler)`, is the source of the images instead of
    the arguments' (see [`~data.GeoSamplerDataset`]). SIGINT or SIGTERM stops the run after its current step with a
    checkpoint and raises [`~cli.TrainingStopped`], whose message gives the command that resumes it."""
    run = build_run(arguments, geo_source)
    state = resume(run) if arguments.resume_from_checkpoint else TrainingState()
    monitor = DivergenceMonitor(
        run.accelerator,
        state.completed_steps,
        str(run.output_dir / CHECKPOINTS_DIRNAME),
        accumulation=arguments.gradient_accumulation_steps,
        loss_terms=run.method.loss_terms,
    )
    with StopSignals() as stop:
        summary = train(run, state, monitor, stop)
    finish(run, state, monitor)
    return summary


def start_accelerator(arguments: PretrainingArguments) -> Accelerator:
    """Checks the output folder (and the Hub access for --push_to_hub) before anything costly, starts the
    Accelerator, sets the logging and the seed, and prepares the output folder on the main process."""
    output_dir = Path(arguments.output_dir)
    resuming = arguments.resume_from_checkpoint is not None
    prepare_output_dir(output_dir, arguments.overwrite_output_dir, resuming, is_main_process=False)  # fail fast
    if arguments.push_to_hub:  # before the training, not after it
        check_hub_access(arguments.hub_model_id, arguments.hub_token)
    refuse_accelerate_fsdp()
    try:
        accelerator = Accelerator(
            gradient_accumulation_steps=arguments.gradient_accumulation_steps,
            log_with=arguments.report_to if arguments.with_tracking else None,
            project_dir=str(output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=arguments.seed),
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=arguments.ddp_timeout))],
        )
    except (torch.distributed.DistError, TimeoutError) as error:
        raise ConnectionError(rendezvous_failure(arguments.ddp_timeout, error)) from error
    # This package's INFO lines (the run, resumes, saves); other libraries' only from WARNING on, so that their
    # INFO lines do not break the progress bar.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("modeling_pera").setLevel(logging.INFO)
    set_seed(arguments.seed)
    if accelerator.is_main_process:
        prepare_output_dir(output_dir, arguments.overwrite_output_dir, resuming, is_main_process=True)
    accelerator.wait_for_everyone()

    return accelerator


def rendezvous_failure(timeout_seconds: int, error: Exception) -> str:
    """What to check when the processes of a run could not all meet at start."""
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return (
        f"The {os.environ.get('WORLD_SIZE', '?')} processes of this run did not all meet at {address} within "
        f"--ddp_timeout {timeout_seconds} s ({type(error).__name__}: {str(error).splitlines()[0]}). Start every "
        "machine with the same --main_process_ip and --main_process_port (machine 0's address, with the port open to "
        "the others), --num_machines and --num_processes; raise --ddp_timeout if the machines start minutes apart."
    )


def build_run(arguments: PretrainingArguments, geo_source: tuple[Any, Any] | None = None) -> Run:
    accelerator = start_accelerator(arguments)
    method = METHODS[arguments.method](arguments.seed, accelerator.device)
    model, config = method.build_model(arguments)
    processor = build_processor(arguments, config)
    if arguments.activation_checkpointing:
        enable_activation_checkpointing(model, arguments.activation_checkpointing)
    if arguments.fsdp:
        shard_model(model, accelerator)
    views = AlignedPairViews(method.views_config(config), processor, defer_photometry=arguments.photometry_on_device)
    dataloader = build_dataloader(arguments, views, config, geo_source)
    if processor.ground_sampling_distance is None:  # scenes in metres know their pixel size
        processor.ground_sampling_distance = getattr(dataloader.dataset, "ground_sampling_distance", None)
    optimizer = torch.optim.AdamW(
        parameter_groups(model),
        lr=arguments.learning_rate,
        fused=accelerator.device.type == "cuda",
        **method.optimizer_options,
    )
    # A sharded model and its optimizer are FSDP's, and a stream shards itself over processes (and workers):
    # accelerate must not wrap, split or dispatch them again.
    if not arguments.fsdp:
        model, optimizer = accelerator.prepare(model, optimizer)
    if not arguments.streaming:
        dataloader = accelerator.prepare(dataloader)
    total_steps = count_steps(arguments, dataloader, accelerator.num_processes)
    if arguments.method == "pera" and arguments.recipe == "reference" and total_steps < REFERENCE_MIN_STEPS:
        logger.warning(
            "--recipe reference for %d steps: its values are made for 100+ epochs over large archives and learn "
            "little in runs under %d steps (docs/training.md#recipes); --recipe short-budget is made for them.",
            total_steps,
            REFERENCE_MIN_STEPS,
        )
    schedule = PretrainingSchedule.from_arguments(arguments, total_steps)
    if arguments.with_tracking:
        # TensorBoard's hyper-parameters take scalars and strings only
        hyperparameters = {
            key: ",".join(map(str, value)) if isinstance(value, list) else value
            for key, value in asdict(arguments).items()
            if value is not None
        }
        accelerator.init_trackers(TRACKER_PROJECT, hyperparameters)
    forward = torch.compile(model) if arguments.torch_compile else model
    return Run(
        arguments=arguments,
        accelerator=accelerator,
        method=method,
        model=model,
        unwrapped_model=accelerator.unwrap_model(model),
        forward=autocast_forward(forward, accelerator) if arguments.fsdp else forward,
        config=config,
        processor=processor,
        views=views,
        dataloader=dataloader,
        optimizer=optimizer,
        schedule=schedule,
        total_steps=total_steps,
    )


def build_dataloader(
    arguments: PretrainingArguments,
    views: AlignedPairViews,
    config: PeraConfig,
    geo_source: tuple[Any, Any] | None = None,
):
    if geo_source is not None:
        dataset = GeoSamplerDataset(*geo_source, views, seed=arguments.seed)
    elif arguments.torchgeo_dataset:
        dataset = GeoSamplerDataset.random_windows(
            build_torchgeo_dataset(arguments.torchgeo_dataset, arguments.torchgeo_paths, arguments.bands),
            views,
            window_size=arguments.scene_window_size,
            windows_per_epoch=arguments.scene_windows_per_epoch,
            seed=arguments.seed,
        )
    elif arguments.train_scenes:
        selection = arguments.band_selection()
        dataset = SceneDataset(
            find_scenes(arguments.train_scenes),
            views,
            seed=arguments.seed,
            window_size=arguments.scene_window_size,
            sample_size=arguments.scene_sample_size,
            windows_per_epoch=arguments.scene_windows_per_epoch,
            bands=selection.get("bands", selection.get("band_order")),
            min_valid_fraction=arguments.scene_min_valid_fraction,
        )
    else:
        dataset = make_pretraining_dataset(
            load_pretraining_dataset(
                dataset_name=arguments.dataset_name,
                dataset_config_name=arguments.dataset_config_name,
                train_dir=arguments.train_dir,
                image_column_name=arguments.image_column_name,
                streaming=arguments.streaming,
            ),
            views,
            seed=arguments.seed,
            image_column_name=arguments.image_column_name,
            min_image_size=config.patch_size,
            **arguments.band_selection(),
        )
    check_dataset(dataset)
    return make_pretraining_dataloader(
        dataset,
        batch_size=arguments.per_device_train_batch_size,
        num_workers=arguments.dataloader_num_workers,
        seed=arguments.seed,
    )


def count_steps(arguments: PretrainingArguments, dataloader, num_processes: int) -> int:
    if arguments.streaming:
        if arguments.max_train_steps is None:
            raise ValueError("A streamed dataset has no length: give --max_train_steps with --streaming.")
        return arguments.max_train_steps
    steps_per_epoch = math.ceil(len(dataloader) / arguments.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError(
            f"The dataset has fewer images than one batch ({arguments.per_device_train_batch_size} per device x "
            f"{num_processes} processes): lower --per_device_train_batch_size or add images."
        )
    return arguments.max_train_steps or arguments.num_train_epochs * steps_per_epoch


def resume(run: Run) -> TrainingState:
    """Loads the checkpoint of `--resume_from_checkpoint`: the newest intact one for 'latest'."""
    checkpoint = find_checkpoint(run.output_dir, run.arguments.resume_from_checkpoint)
    saved = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    check_resumable(checkpoint, saved, run.resume_settings(), run.arguments.allow_inexact_resume)
    sharded = (checkpoint / SHARDED_STATE_DIRNAME).is_dir()
    if sharded != run.arguments.fsdp:
        raise CheckpointError(
            f"{checkpoint} holds {'sharded' if sharded else 'whole'} weights and this run is "
            f"{'sharded' if run.arguments.fsdp else 'not'}: resume it {'with' if sharded else 'without'} --fsdp."
        )
    run.accelerator.load_state(str(checkpoint))
    if sharded:
        load_sharded_state(run.unwrapped_model, run.optimizer, checkpoint / SHARDED_STATE_DIRNAME)
    stream_state = stream_state_path(checkpoint, run.accelerator.process_index)
    if run.stream is not None and stream_state.is_file():
        run.stream.load_state_dict(torch.load(stream_state, weights_only=True))
    # checkpoints written before --max_train_minutes existed have no training time
    state = TrainingState(
        saved["completed_steps"], saved["epoch"], saved["batches_in_epoch"], saved.get("train_seconds", 0.0)
    )
    logger.info(
        "Resumed from %s at step %d (epoch %d, batch %d)",
        checkpoint,
        state.completed_steps,
        state.epoch,
        state.batches_in_epoch,
    )
    return state


def train(run: Run, state: TrainingState, monitor: DivergenceMonitor, stop: StopSignals) -> dict:
    """The loop: one optimizer step per `accumulation` batches, then the EMA teacher, the log, the saves and a
    requested stop."""
    arguments, accelerator = run.arguments, run.accelerator
    log = TrainingLog(
        accelerator,
        run.total_steps,
        state.completed_steps,
        arguments.logging_steps,
        arguments.with_tracking,
        state.train_seconds,
        logged_outputs=run.method.logged_outputs,
        logged_schedule=run.method.logged_schedule,
    )
    logger.info(
        "%s pretraining: %d steps, global batch %d, %s, %d processes, mixed precision %s",
        run.method.title,
        run.total_steps,
        arguments.per_device_train_batch_size * accelerator.num_processes * arguments.gradient_accumulation_steps,
        accelerator.device,
        accelerator.num_processes,
        accelerator.mixed_precision,
    )
    run.model.train()
    for batch in batches_from(run, state):
        batch = log.count_batch(batch, arguments.per_device_train_batch_size * accelerator.num_processes)
        values = run.schedule.at(state.completed_steps)
        outputs = training_step(run, batch, values, state)
        monitor.record(outputs)
        if not accelerator.sync_gradients:
            continue
        run.method.after_step(run.unwrapped_model, values)
        state.completed_steps += 1
        log.progress.update(1)
        log_due = log.log_due(state.completed_steps)
        if log_due:
            monitor.check()
            log.log(state.completed_steps, outputs, values)
        saved = save_due(run, state, monitor, log)
        if state.completed_steps >= run.total_steps:
            break
        if time_is_up(run, log, synchronising=log_due or saved):
            log.summary["stopped_by_time_limit"] = True
            break
        if stop.agreed(accelerator, synchronising=log_due or saved):
            stop_run(run, state, monitor, log, stop.received, saved)
    return log.finish(state.completed_steps)


def time_is_up(run: Run, log: TrainingLog, synchronising: bool) -> bool:
    """Whether --max_train_minutes of training time have passed (on every process: see [`agreed`])."""
    limit = run.arguments.max_train_minutes
    return limit is not None and agreed(run.accelerator, log.training_seconds() >= 60 * limit, synchronising)


def batches_from(run: Run, state: TrainingState) -> Iterator[dict]:
    """The batches on the training device from the run's position on, epoch after epoch; `state.epoch` and
    `state.batches_in_epoch` follow what was yielded, and photometry deferred to the device is applied. A resumed
    stream continues from the position its loader was given in `resume`."""
    while True:
        run.dataloader.set_epoch(state.epoch)
        skipped = state.batches_in_epoch
        if skipped and run.stream is None:
            epoch_batches = run.accelerator.skip_first_batches(run.dataloader, skipped)
        else:
            epoch_batches = run.dataloader
        for batch in epoch_batches:
            state.batches_in_epoch += 1
            batch = {name: tensor.to(run.accelerator.device, non_blocking=True) for name, tensor in batch.items()}
            yield run.views.finish_batch(batch) if run.views.defer_photometry else batch
        if state.batches_in_epoch == 0:
            raise ValueError("The data yielded no batch in a whole epoch: check the dataset and the batch size.")
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0


def training_step(run: Run, batch: dict, values: ScheduleValues, state: TrainingState):
    """Forward and backward of one micro-batch; clips and steps the optimizer when gradients are synchronised."""
    arguments, accelerator = run.arguments, run.accelerator
    apply_schedule(run.optimizer, values)
    accumulation = arguments.gradient_accumulation_steps
    micro_step = state.completed_steps * accumulation + (state.batches_in_epoch - 1) % accumulation
    with accelerator.accumulate(run.model):
        outputs = run.forward(**run.method.inputs(run.config, batch, values, micro_step, accelerator.process_index))
        accelerator.backward(outputs.loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(run.trainable, arguments.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    return outputs


def apply_schedule(optimizer: torch.optim.Optimizer, values: ScheduleValues) -> None:
    for group in optimizer.param_groups:
        group["lr"] = values.learning_rate
        group["weight_decay"] = values.weight_decay if group["apply_weight_decay"] else 0.0


def save_due(run: Run, state: TrainingState, monitor: DivergenceMonitor, log: TrainingLog) -> bool:
    """The checkpoint and snapshot due after this step, if any, once the losses and weights are checked finite.
    Returns whether a checkpoint was written."""
    arguments = run.arguments
    checkpointing = bool(arguments.checkpointing_steps) and state.completed_steps % arguments.checkpointing_steps == 0
    snapshot = state.completed_steps in (arguments.snapshot_steps or ())
    if checkpointing or snapshot:
        save(run, state, monitor, log, checkpoint=checkpointing, snapshot=snapshot)
    return checkpointing


def save(
    run: Run, state: TrainingState, monitor: DivergenceMonitor, log: TrainingLog, checkpoint: bool, snapshot: bool
) -> None:
    arguments, accelerator = run.arguments, run.accelerator
    monitor.check(run.unwrapped_model)
    log.pause()
    state.train_seconds = log.train_seconds
    accelerator.wait_for_everyone()
    model = run.model_to_export()
    if snapshot and accelerator.is_main_process:
        run.method.export_snapshot(model, run.processor, snapshot_directory(run.output_dir, state.completed_steps))
    if checkpoint:
        saved = {**asdict(state), **run.resume_settings()}
        sharded = (run.unwrapped_model, run.optimizer) if arguments.fsdp else None
        save_checkpoint(accelerator, run.output_dir, saved, arguments.checkpoints_total_limit, run.stream, sharded)
        if accelerator.is_main_process:
            run.method.export(model, run.processor, run.output_dir)
    log.resume()


def stop_run(
    run: Run, state: TrainingState, monitor: DivergenceMonitor, log: TrainingLog, signal_number: int, saved: bool
) -> None:
    """Ends a run stopped by a signal: a checkpoint of this step (unless one was just written), then
    `TrainingStopped` with the command that resumes it."""
    if not saved:
        save(run, state, monitor, log, checkpoint=True, snapshot=False)
    log.progress.close()
    if run.arguments.with_tracking:
        run.accelerator.end_training()
    raise TrainingStopped(
        f"Stopped by {signal.Signals(signal_number).name} after step {state.completed_steps} of {run.total_steps}; "
        f"the checkpoint is in {run.output_dir / CHECKPOINTS_DIRNAME}. Resume exactly with:\n"
        f"  {resume_command(run.accelerator.num_processes)}",
        signal_number,
    )


def resume_command(num_processes: int) -> str:
    """This process's command line, made to resume the run: '--resume_from_checkpoint latest' instead of a start
    from scratch or an older checkpoint, and without --overwrite_output_dir, which would delete the run."""
    arguments, kept = sys.argv[1:], []
    while arguments:
        flag = arguments.pop(0)
        name = flag.split("=", 1)[0]
        if name in ("--overwrite_output_dir", "--resume_from_checkpoint"):
            # the flag's value, when it is given as the next word
            if "=" not in flag and arguments and not arguments[0].startswith("--"):
                arguments.pop(0)
            continue
        kept.append(flag)
    launcher = ["accelerate", "launch"] if num_processes > 1 else ["python"]
    return shlex.join([*launcher, sys.argv[0], *kept, "--resume_from_checkpoint", "latest"])


def finish(run: Run, state: TrainingState, monitor: DivergenceMonitor) -> None:
    """Exports the final model (and uploads it with --push_to_hub) once the losses and weights are checked finite."""
    arguments, accelerator = run.arguments, run.accelerator
    monitor.check(run.unwrapped_model)
    accelerator.wait_for_everyone()
    model = run.model_to_export()
    if accelerator.is_main_process:
        run.method.export(model, run.processor, run.output_dir)
        if arguments.push_to_hub:
            card_info = pretraining_card_info(
                arguments, run.config, completed_steps=state.completed_steps, num_processes=accelerator.num_processes
            )
            push_encoder(run.output_dir / "encoder", arguments.hub_model_id, arguments.hub_token, card_info=card_info)
    if arguments.with_tracking:
        accelerator.end_training()


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
