"""
What a pretraining run writes, and how it never loses what it wrote:

    output_dir/
        checkpoints/step_N/   resumable state: weights (with the DINO centre), optimizer (of a sharded run: in
                              sharded_state/, a file a process), the random states of every process, a streamed
                              run's position in the stream of every process (stream_state_R.pt),
                              trainer_state.json (step, data position, processes, batch) and manifest.json (every
                              file's size and SHA-256, written last)
        snapshots/step_N/     the encoder after N steps (--snapshot_steps)
        encoder/              the teacher as a stand-alone `PeraModel`, with the image processor and the Hub code
        model.safetensors ... the full `PeraForPreTraining` (teacher, student, heads)

Every folder is written to a hidden staging folder beside it and moved into place when complete, so a crash never
leaves a half-written one; a write that fails (a full disk) removes its staging folder and names the folder and the
free space. `latest_checkpoint` takes the newest checkpoint whose files match its manifest and names the broken ones it
skipped; `check_resumable` refuses a resume that would not continue the run exactly.
"""

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.utils import logging as transformers_logging

from ..data import StreamingDataLoader
from ..image_processing_pera import PeraImageProcessor
from ..modeling_pera import PeraForPreTraining
from .sharding import SHARDED_STATE_DIRNAME, local_tensor, save_sharded_state


logger = logging.getLogger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
SNAPSHOTS_DIRNAME = "snapshots"
ENCODER_DIRNAME = "encoder"
TRAINER_STATE_NAME = "trainer_state.json"
MANIFEST_NAME = "manifest.json"
STEP_FOLDER = re.compile(r"step_(\d+)")
TRACKER_PROJECT = "pera_pretraining"  # the TensorBoard logs' folder
# What a run writes into output_dir: another run's copies are deleted by --overwrite_output_dir.
RUN_ARTIFACTS = (
    CHECKPOINTS_DIRNAME,
    SNAPSHOTS_DIRNAME,
    ENCODER_DIRNAME,
    TRACKER_PROJECT,
    "model.safetensors",
    "config.json",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: broken, or not an exact continuation of the run."""


class CheckpointWriteError(OSError):
    """A checkpoint or export that could not be written (e.g. a full disk); the previous one is intact."""


# ---------------------------------------------------------------------------------------------------------------------
# Writing through a staging folder
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def staging_folder(target: Path, owner: bool = True) -> Iterator[Path]:
    """
    Yields an empty hidden folder beside `target` to write into. If writing fails, the folder is removed and the error
    becomes a [`CheckpointWriteError`] naming `target` and the free space. Only the `owner` process (the main one when
    several write into one folder) clears, removes and finalises it.
    """
    staging = target.with_name(f".staging_{target.name}")
    if owner:
        shutil.rmtree(staging, ignore_errors=True)
    # transformers draws a "Writing model shards" bar per save, which would break the training's progress bar
    progress_bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield staging
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        if owner:
            shutil.rmtree(staging, ignore_errors=True)
        raise _write_error(target, error) from error
    finally:
        if progress_bars:
            transformers_logging.enable_progress_bar()
    if owner:
        _make_readable(staging)


def _write_error(target: Path, error: Exception) -> CheckpointWriteError:
    existing = next(folder for folder in (target, *target.parents) if folder.exists())
    free_gb = shutil.disk_usage(existing).free / 1e9
    disk_full = getattr(error, "errno", None) == errno.ENOSPC or "unexpected pos" in str(error) or free_gb < 0.01
    cause = "the disk is full" if disk_full else f"{type(error).__name__}: {error}"
    previous = step_folders(target.parent)
    if previous:
        size_gb = sum(path.stat().st_size for path in previous[-1].rglob("*") if path.is_file()) / 1e9
        cause += f"; a checkpoint of this run takes {size_gb:.2f} GB"
    return CheckpointWriteError(
        f"Could not write {target}: {cause} ({free_gb:.2f} GB free in {existing}). The partial folder was removed; "
        "earlier checkpoints and exports are intact. Free some space or choose another --output_dir, then resume "
        "with --resume_from_checkpoint latest."
    )


def _make_readable(folder: Path) -> None:
    """Some writers create files private to the user (0600); exports are shared like any other file (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def replace_directory(staging: Path, target: Path) -> None:
    """Moves a fully written `staging` folder to `target`. A crash in between leaves `target` or `<target>.old`
    complete; [`clean_checkpoint_folder`] restores the second."""
    if target.exists():
        retired = target.with_name(target.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)


# ---------------------------------------------------------------------------------------------------------------------
# Manifests and finding the newest intact checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def _file_record(path: Path) -> dict:
    with open(path, "rb") as file:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(file, "sha256").hexdigest()}


def write_manifest(folder: Path) -> None:
    """Records every file's size and checksum; written last, so a folder with a valid manifest is complete."""
    files = {
        path.relative_to(folder).as_posix(): _file_record(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    (folder / MANIFEST_NAME).write_text(json.dumps({"files": files}, indent=1))


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not an intact checkpoint (missing, truncated or altered files), or `None` if it is."""
    if not (folder / TRAINER_STATE_NAME).is_file():
        return f"no {TRAINER_STATE_NAME}"
    if not (folder / MANIFEST_NAME).is_file():
        try:
            has_manifest = "manifest" in json.loads((folder / TRAINER_STATE_NAME).read_text())
        except ValueError as error:
            return f"an unreadable {TRAINER_STATE_NAME} ({error})"
        if has_manifest:
            return f"no {MANIFEST_NAME} (written last: the checkpoint is incomplete)"
        logger.warning("%s predates checkpoint manifests: its files cannot be verified.", folder)
        return None
    try:
        files = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    except (ValueError, KeyError) as error:
        return f"an unreadable {MANIFEST_NAME} ({error})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes instead of {expected['bytes']} (truncated?)"
        if _file_record(path)["sha256"] != expected["sha256"]:
            return f"{name} does not match its checksum (corrupted)"
    return None


def step_folders(folder: Path) -> list[Path]:
    """The `step_N` folders in `folder`, oldest first (leftovers such as `step_N.old` are not steps)."""
    found = [path for path in folder.glob("step_*") if path.is_dir() and STEP_FOLDER.fullmatch(path.name)]
    return sorted(found, key=lambda path: int(path.name[len("step_") :]))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint of `output_dir` (warning about each newer broken one it skips), or `None`."""
    for checkpoint in reversed(step_folders(Path(output_dir) / CHECKPOINTS_DIRNAME)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        logger.warning("Skipping the broken checkpoint %s: %s.", checkpoint, problem)
    return None


def clean_checkpoint_folder(checkpoints_dir: Path) -> None:
    """Removes what an interrupted save leaves: staging folders, and `step_N.old` folders (restored as `step_N` if
    the crash came between the two renames of `replace_directory`)."""
    if not checkpoints_dir.is_dir():
        return
    for path in checkpoints_dir.iterdir():
        if path.name.startswith(".staging_"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.endswith(".old") and STEP_FOLDER.fullmatch(path.name[: -len(".old")]):
            current = path.with_name(path.name[: -len(".old")])
            if current.exists():
                shutil.rmtree(path)
            else:
                path.rename(current)


# ---------------------------------------------------------------------------------------------------------------------
# The output folder of a new run
# ---------------------------------------------------------------------------------------------------------------------


def previous_run_artifacts(output_dir: Path) -> list[Path]:
    """What another run left in `output_dir`: checkpoints, snapshots, an exported encoder or model."""
    found = [output_dir / name for name in RUN_ARTIFACTS if (output_dir / name).exists()]
    return [path for path in found if path.is_file() or any(path.iterdir())]


def prepare_output_dir(output_dir: Path, overwrite: bool, resuming: bool, is_main_process: bool) -> None:
    """Refuses to start a new run in a folder holding another run's results, unless `overwrite` (then they are
    deleted, so the two runs never mix) or `resuming`. Every process checks; the main one deletes and cleans."""
    artifacts = [] if resuming else previous_run_artifacts(output_dir)
    if artifacts and not overwrite:
        names = ", ".join(path.name for path in artifacts)
        raise ValueError(
            f"{output_dir} holds another run ({names}). Continue it with --resume_from_checkpoint latest, start over "
            "with --overwrite_output_dir (deletes them), or choose another --output_dir."
        )
    if not is_main_process:
        return
    for path in artifacts:
        logger.warning("--overwrite_output_dir: deleting %s of the previous run.", path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)
    clean_checkpoint_folder(output_dir / CHECKPOINTS_DIRNAME)


# ---------------------------------------------------------------------------------------------------------------------
# Saving and resuming
# ---------------------------------------------------------------------------------------------------------------------


def non_finite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the model's parameters and buffers holding NaN or infinity (one host sync); of a sharded model, those
    whose shard on this process does."""
    tensors = {name: local_tensor(tensor) for name, tensor in model.state_dict().items() if tensor.is_floating_point()}
    finite = torch.stack([torch.isfinite(tensor).all() for tensor in tensors.values()]).tolist()
    return [name for name, ok in zip(tensors, finite) if not ok]


def stream_state_path(checkpoint: Path, rank: int) -> Path:
    return checkpoint / f"stream_state_{rank}.pt"


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    state: dict,
    total_limit: int,
    stream: StreamingDataLoader | None = None,
    sharded: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None,
) -> Path:
    """A resumable checkpoint (model incl. the DINO centre, optimizer, random states, `state`, and the position of
    each process in a `stream`), then the oldest ones beyond `total_limit` are deleted. The model and optimizer of a
    `sharded` run (not accelerate's) go to `sharded_state/`, written by every process. Collective: every process
    calls it."""
    checkpoints_dir = output_dir / CHECKPOINTS_DIRNAME
    target = checkpoints_dir / f"step_{state['completed_steps']}"
    with staging_folder(target, owner=accelerator.is_main_process) as staging:
        accelerator.wait_for_everyone()  # the main process has cleared the staging folder
        accelerator.save_state(str(staging))
        if sharded is not None:
            save_sharded_state(*sharded, staging / SHARDED_STATE_DIRNAME)
        if stream is not None:
            torch.save(stream.state_dict(), stream_state_path(staging, accelerator.process_index))
        accelerator.wait_for_everyone()  # every process has written its random state (and stream position)
        if accelerator.is_main_process:
            (staging / TRAINER_STATE_NAME).write_text(json.dumps({**state, "manifest": MANIFEST_NAME}, indent=2))
            write_manifest(staging)
    if accelerator.is_main_process:
        replace_directory(staging, target)
        for old in step_folders(checkpoints_dir)[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


def check_resumable(checkpoint: Path, state: dict, expected: dict, allow_inexact: bool) -> None:
    """
    Refuses (or, with `allow_inexact`, warns about) a resume that would not continue the run exactly: random states
    or (streaming) stream positions missing for some process, or another number of processes, batch size,
    accumulation or (streaming) DataLoader workers than the checkpoint's run (`expected` holds today's values of the
    keys `state` records).
    """
    recorded_processes = state.get("num_processes", len(list(checkpoint.glob("random_states_*.pkl"))))
    ranks = range(max(recorded_processes, 1))
    problems = [
        f"the random states of process {rank} are missing"
        for rank in ranks
        if not (checkpoint / f"random_states_{rank}.pkl").is_file()
    ]
    if expected.get("streaming"):
        problems += [
            f"the stream position of process {rank} is missing"
            for rank in ranks
            if not stream_state_path(checkpoint, rank).is_file()
        ]
    problems += [
        f"{key} was {state[key]}, now {value}"
        for key, value in expected.items()
        if key in state and state[key] != value
    ]
    if not problems:
        return
    message = f"{checkpoint} cannot continue this run exactly: {'; '.join(problems)}."
    if not allow_inexact:
        raise CheckpointError(
            message + " Resume with the checkpoint's settings, or pass --allow_inexact_resume to continue anyway "
            "(data order, views and masks will differ from an uninterrupted run; a stream without its saved position "
            "restarts its epoch)."
        )
    logger.warning("%s Continuing anyway (--allow_inexact_resume).", message)


def find_checkpoint(output_dir: Path, resume_from_checkpoint: str) -> Path:
    """The checkpoint `--resume_from_checkpoint` names ('latest': the newest intact one in `output_dir`)."""
    if resume_from_checkpoint == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            raise CheckpointError(
                f"No intact checkpoint to resume from in {output_dir / CHECKPOINTS_DIRNAME}; start without "
                "--resume_from_checkpoint."
            )
        return checkpoint
    checkpoint = Path(resume_from_checkpoint)
    problem = checkpoint_problem(checkpoint) if checkpoint.is_dir() else "no such folder"
    if problem is not None:
        raise CheckpointError(f"Cannot resume from {checkpoint}: {problem}. Give an intact checkpoint, or 'latest'.")
    return checkpoint


# ---------------------------------------------------------------------------------------------------------------------
# Exports
# ---------------------------------------------------------------------------------------------------------------------


def snapshot_directory(output_dir: str | os.PathLike, step: int) -> Path:
    """Where a run (PerA here, or the MAE baseline) keeps the encoder it had after `step` optimizer steps."""
    return Path(output_dir) / SNAPSHOTS_DIRNAME / f"step_{step}"


def save_model_folder(model: PreTrainedModel, processor: ImageProcessingMixin, target: str | os.PathLike) -> None:
    """Writes `model` with `processor` (and, for PerA, the Hub code files) to `target` through a staging folder, so
    that `target` holds either the previous folder or the complete new one."""
    target = Path(target)
    with staging_folder(target) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    replace_directory(staging, target)


def export_encoder(model: PeraForPreTraining, processor: PeraImageProcessor, target: str | os.PathLike) -> None:
    """Writes the teacher as a stand-alone `PeraModel` with the image processor and the Hub code files to `target`."""
    save_model_folder(model.teacher, processor, target)


def export_pretrained(model: PeraForPreTraining, processor: PeraImageProcessor, output_dir: str | os.PathLike) -> None:
    """
    Writes the full pretraining checkpoint to `output_dir` and the teacher as a stand-alone `PeraModel` to
    `output_dir/encoder`, each with the image processor and the Hub code files, each through a staging folder.
    """
    output_dir = Path(output_dir)
    export_encoder(model, processor, output_dir / ENCODER_DIRNAME)
    with staging_folder(output_dir / "pretraining") as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)
    staging.rmdir()
