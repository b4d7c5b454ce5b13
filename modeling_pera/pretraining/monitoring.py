"""What a pretraining run watches and reports: non-finite losses (caught on the device at every step, without a host
sync), the progress bar, logged scalars and the run's summary."""

import logging
import time

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..schedules import ScheduleValues
from ..views import SAMPLE_COUNTS, pop_sample_counts
from .checkpoints import non_finite_tensors


logger = logging.getLogger(__name__)


class TrainingDivergedError(FloatingPointError):
    """The loss or the weights became NaN or infinite; nothing from that step on was saved."""


class DivergenceMonitor:
    """
    Records on the device, at every micro-batch, whether every loss so far was finite and the loss terms of the first
    one that was not. [`check`] reads that with one host sync (and one all-gather across processes), and is
    called before every save and at every logging step, so no non-finite weight reaches a checkpoint or an export.

    Args:
        accelerator (`Accelerator`):
            The run's accelerator, whose processes agree in [`check`].
        completed_steps (`int`):
            Optimizer steps done before this run (a resumed run's start), to name the first non-finite step.
        checkpoints_dir (`str`):
            Where the intact checkpoints are, for the message.
        loss_terms (`tuple[str, ...]`):
            The outputs [`record`] reads: the loss and its terms (the method's `loss_terms`).
        accumulation (`int`, *optional*, defaults to 1):
            Micro-batches per optimizer step.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        completed_steps: int,
        checkpoints_dir: str,
        loss_terms: tuple[str, ...],
        accumulation: int = 1,
    ):
        self.accelerator = accelerator
        self.start_step = completed_steps
        self.accumulation = accumulation
        self.checkpoints_dir = checkpoints_dir
        self.loss_terms = loss_terms
        device = accelerator.device
        self.all_finite = torch.ones((), dtype=torch.bool, device=device)
        self.finite_micro_batches = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad_terms = torch.zeros(len(loss_terms), device=device)

    def record(self, outputs) -> None:
        terms = torch.stack([outputs[name].detach().float() for name in self.loss_terms])
        finite = torch.isfinite(terms).all()
        self.first_bad_terms = torch.where(self.all_finite & ~finite, terms, self.first_bad_terms)
        self.all_finite &= finite
        self.finite_micro_batches += self.all_finite

    def check(self, model: torch.nn.Module | None = None) -> None:
        """Raises [`TrainingDivergedError`] if a loss so far (on any process) or a tensor of `model` is not finite."""
        if not self.accelerator.gather(self.all_finite.reshape(1).long()).all():  # gloo gathers no bools
            finite_micro_batches = int(self.accelerator.gather(self.finite_micro_batches.reshape(1)).min())
            step = self.start_step + finite_micro_batches // self.accumulation + 1
            terms = dict(zip(self.loss_terms, self.first_bad_terms.tolist()))
            self._fail(f"the loss became non-finite at step {step} ({terms})")
        if model is None:
            return
        broken = non_finite_tensors(model)
        if self.accelerator.num_processes > 1:  # every process stops together: a sharded model's shards differ
            found = self.accelerator.gather(torch.tensor([len(broken)], device=self.accelerator.device))
            if int(found.sum()) and not broken:
                broken = ["shards held by another process"]
        if broken:
            shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
            self._fail(f"the weights became non-finite ({shown}) although every loss so far was finite")

    def _fail(self, what: str) -> None:
        raise TrainingDivergedError(
            f"Training stopped: {what}. Nothing from that step on was saved; the checkpoints in "
            f"{self.checkpoints_dir} hold finite weights. Lower --learning_rate or --max_grad_norm, check the inputs "
            "for NaN/inf, and resume with --resume_from_checkpoint latest."
        )


class TrainingLog:
    """The progress bar (rate, loss), scalars every `logging_steps` (to the trackers with --with_tracking), the counts
    of replaced and of upsampled samples (warned about once), and the run's summary. The scalars are the method's
    `logged_outputs` (the loss first) and its `logged_schedule` values."""

    def __init__(
        self,
        accelerator: Accelerator,
        total_steps: int,
        completed_steps: int,
        logging_steps: int,
        tracking: bool,
        train_seconds: float,
        logged_outputs: tuple[str, ...],
        logged_schedule: tuple[str, ...],
    ):
        self.accelerator = accelerator
        self.logged_outputs, self.logged_schedule = logged_outputs, logged_schedule
        self.total_steps = total_steps
        self.logging_steps = logging_steps
        self.tracking = tracking
        self.progress = tqdm(
            total=total_steps,
            initial=completed_steps,
            disable=not accelerator.is_local_main_process,
            desc="pretraining",
            unit="step",
        )
        self.summary: dict = {"images_per_second": None, "loss_history": [], "stopped_by_time_limit": False}
        # Running totals on the device, read at logging steps only (no host sync per step)
        self.sample_counts = {
            name: torch.zeros((), dtype=torch.long, device=accelerator.device) for name in SAMPLE_COUNTS
        }
        self.upsampling_reported = False
        self.images_since_log, self.log_started = 0, time.perf_counter()
        self.train_seconds, self.train_started = train_seconds, time.perf_counter()

    def count_batch(self, batch: dict, num_images: int) -> dict:
        """Counts the batch's images, its replaced and its upsampled samples; returns the batch without the counts."""
        for name, count in pop_sample_counts(batch).items():
            self.sample_counts[name] += count
        self.images_since_log += num_images
        return batch

    def read_sample_counts(self) -> dict[str, int]:
        """One host sync: the totals so far, as `replaced_samples` and `upsampled_samples`."""
        return {f"{name}_samples": int(count) for name, count in self.sample_counts.items()}

    def report_upsampling(self, upsampled: int) -> None:
        """Warns once, the first time samples smaller than the global crops are counted."""
        if upsampled and not self.upsampling_reported:
            self.upsampling_reported = True
            logger.warning(
                "%d images so far are smaller than the global crops and are upsampled to them (check_dataset names "
                "the first ones); counted as `upsampled` in the log and the run's summary.",
                upsampled,
            )

    def log_due(self, completed_steps: int) -> bool:
        return completed_steps % self.logging_steps == 0 or completed_steps == self.total_steps

    def log(self, completed_steps: int, outputs, values: ScheduleValues) -> None:
        """One host sync: the scalars of this step."""
        scalars = {name: float(outputs[name].detach()) for name in self.logged_outputs}
        scalars.update({name: getattr(values, name) for name in self.logged_schedule})
        elapsed = time.perf_counter() - self.log_started
        scalars.update(images_per_second=self.images_since_log / elapsed, **self.read_sample_counts())
        self.images_since_log, self.log_started = 0, time.perf_counter()
        self.summary.update(scalars)
        self.summary["loss_history"].append((completed_steps, scalars["loss"]))
        terms = {name.removesuffix("_loss"): scalars[name] for name in ("dino_loss", "pixel_loss") if name in scalars}
        self.progress.set_postfix(
            loss=f"{scalars['loss']:.3f}",
            **{name: f"{value:.3f}" for name, value in terms.items()},
            lr=f"{values.learning_rate:.2e}",
            img_s=f"{scalars['images_per_second']:.1f}",
            replaced=scalars["replaced_samples"],
            upsampled=scalars["upsampled_samples"],
        )
        self.report_upsampling(scalars["upsampled_samples"])
        if self.tracking:
            self.accelerator.log(scalars, step=completed_steps)

    def pause(self) -> None:
        """Stops the training clock (checkpoints and exports are not training time)."""
        self.train_seconds += time.perf_counter() - self.train_started

    def resume(self) -> None:
        self.train_started = time.perf_counter()

    def training_seconds(self) -> float:
        """The training time so far, the current stretch included."""
        return self.train_seconds + time.perf_counter() - self.train_started

    def finish(self, completed_steps: int) -> dict:
        self.progress.close()
        self.pause()
        counts = self.read_sample_counts()
        if counts["replaced_samples"]:
            logger.warning(
                "%d samples were unusable (unreadable, too small, wrong band count or non-finite pixels; for scenes, "
                "windows with too few valid pixels) and were replaced by others; the log names the first unreadable "
                "ones.",
                counts["replaced_samples"],
            )
        self.report_upsampling(counts["upsampled_samples"])
        self.summary.update(completed_steps=completed_steps, train_seconds=self.train_seconds, **counts)
        return self.summary
