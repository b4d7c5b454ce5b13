"""The scripts as a user meets them: Ctrl-C and SIGTERM stop a run with a checkpoint and the command that resumes it
exactly, user mistakes read as one line (no traceback) while bugs keep theirs, `--help` shows each default once, a push
to the Hub fails before training when it cannot work and names the saved encoder when it fails at the end, `--bands`
selects bands, and small images are counted."""

import contextlib
import io
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import tifffile
from PIL import Image

import modeling_pera.hub
from modeling_pera.cli import DEBUG_VARIABLE, TrainingStopped, is_user_error, run_cli
from modeling_pera.evaluation import evaluate_encoder
from modeling_pera.hub import HubAccessError, check_hub_access
from modeling_pera.pretraining import loop, parse_config_overrides, pretrain
from modeling_pera.pretraining.loop import StopSignals
from pera_testing import tiny_arguments
from test_reliability import assert_same_weights, weights_of


REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "examples"))
import push_to_hub  # noqa: E402
import run_eval  # noqa: E402
import run_pretraining  # noqa: E402


def checkpoint_steps(run: Path) -> list[str]:
    return sorted(path.name for path in (run / "checkpoints").iterdir() if path.name.startswith("step_"))


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_run_resumes_exactly(
    signal_number, images, tmp_path, monkeypatch
):
    reference = tmp_path / "uninterrupted"
    pretrain(tiny_arguments(images, reference))
    run = tmp_path / "run"
    take_step = loop.training_step

    def step_and_signal_during_the_second(run_, batch, values, state):
        outputs = take_step(run_, batch, values, state)
        if state.completed_steps == 1:
            os.kill(os.getpid(), signal_number)
        return outputs

    monkeypatch.setattr(loop, "training_step", step_and_signal_during_the_second)
    handlers_before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingStopped) as stopped:
        pretrain(tiny_arguments(images, run))
    monkeypatch.undo()

    assert stopped.value.signal_number == signal_number
    assert f"Stopped by {signal.Signals(signal_number).name} after step 2 of 4" in str(stopped.value)
    assert "--resume_from_checkpoint latest" in str(stopped.value)
    assert checkpoint_steps(run) == ["step_2"]
    assert {number: signal.getsignal(number) for number in handlers_before} == handlers_before  # given back
    summary = pretrain(tiny_arguments(images, run, resume_from_checkpoint="latest"))
    assert summary["completed_steps"] == 4
    assert_same_weights(weights_of(run), weights_of(reference))


def test_a_signal_at_a_checkpoint_step_writes_no_second_checkpoint(images, tmp_path, monkeypatch):
    take_step = loop.training_step

    def step_and_signal(run_, batch, values, state):
        outputs = take_step(run_, batch, values, state)
        if state.completed_steps == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return outputs

    monkeypatch.setattr(loop, "training_step", step_and_signal)
    saves = []
    save_checkpoint = loop.save_checkpoint

    def recorded_save(accelerator, output_dir, state, *arguments):
        saves.append(state["completed_steps"])
        return save_checkpoint(accelerator, output_dir, state, *arguments)

    monkeypatch.setattr(loop, "save_checkpoint", recorded_save)
    with pytest.raises(TrainingStopped):
        pretrain(tiny_arguments(images, tmp_path / "run", checkpointing_steps=2))
    assert saves == [2]


def test_a_second_ctrl_c_stops_at_once():
    handler_before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs between bytecodes
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_the_resume_command_drops_overwrite_and_an_earlier_resume(monkeypatch):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "examples/run_pretraining.py",
            "--train_dir",
            "a b",
            "--overwrite_output_dir",
            "--output_dir",
            "out",
            "--resume_from_checkpoint=out/checkpoints/step_2",
            "--seed",
            "1",
        ],
    )
    assert loop.resume_command(1) == (
        "python examples/run_pretraining.py --train_dir 'a b' --output_dir out --seed 1 "
        "--resume_from_checkpoint latest"
    )
    assert loop.resume_command(2).startswith("accelerate launch examples/run_pretraining.py")


def test_ctrl_c_in_a_terminal_stops_the_script_cleanly_and_its_command_resumes(images, tmp_path):
    """As a terminal does: SIGINT to the whole process group (the DataLoader worker too)."""
    run = tmp_path / "run"
    flags = [
        "--train_dir",
        str(images),
        "--output_dir",
        str(run),
        "--overwrite_output_dir",
        "--config_overrides",
        tiny_arguments(images, run).config_overrides,
        "--per_device_train_batch_size",
        "4",
        "--max_train_steps",
        "100000",
        "--checkpointing_steps",
        "2",
        "--logging_steps",
        "1",
        "--dataloader_num_workers",
        "1",
        "--recipe",
        "short-budget",
    ]
    process = subprocess.Popen(
        [sys.executable, "examples/run_pretraining.py", *flags],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not (run / "checkpoints" / "step_2").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=600)

    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "SIGINT: stopping after this step" in stderr
    command = shlex.split(stderr.split("Resume exactly with:")[1].strip().splitlines()[0])
    assert command[:2] == ["python", "examples/run_pretraining.py"]
    assert "--overwrite_output_dir" not in command and command[-2:] == ["--resume_from_checkpoint", "latest"]
    stopped_at = int(stderr.split("after step ")[1].split()[0])
    assert f"step_{stopped_at}" in checkpoint_steps(run)

    command[command.index("--max_train_steps") + 1] = str(stopped_at + 1)
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=REPOSITORY, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resumed from {run / 'checkpoints' / f'step_{stopped_at}'} at step {stopped_at}" in resumed.stderr


# ---------------------------------------------------------------------------------------------------------------------
# Errors: one line for user mistakes, tracebacks for bugs
# ---------------------------------------------------------------------------------------------------------------------


def raised(function) -> BaseException:
    try:
        function()
    except BaseException as error:  # noqa: BLE001 (any error is what the tests look at)
        return error
    raise AssertionError("nothing was raised")


def test_user_errors_are_the_package_s_value_errors_and_unreadable_files():
    assert is_user_error(raised(lambda: parse_config_overrides("image_size")))  # raised in modeling_pera
    assert is_user_error(raised(lambda: open("/no/such/file")))
    assert not is_user_error(raised(lambda: int("not a number")))  # a ValueError raised outside the package: a bug
    assert not is_user_error(raised(lambda: [][1]))


def test_run_cli_prints_one_line_for_a_user_error_and_keeps_bugs(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: parse_config_overrides("image_size"))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: --config_overrides entries must look like key=value")

    with pytest.raises(IndexError):
        run_cli(lambda: [][1])

    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    with pytest.raises(ValueError, match="key=value"):
        run_cli(lambda: parse_config_overrides("image_size"))


def test_run_cli_exits_with_the_signal_s_status(capsys):
    def stopped():
        raise TrainingStopped("Stopped by SIGTERM after step 3 of 9; resume with ...", signal.SIGTERM)

    with pytest.raises(SystemExit) as exit_info:
        run_cli(stopped)
    assert exit_info.value.code == 143
    assert "Stopped by SIGTERM after step 3" in capsys.readouterr().err

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_cli(interrupted)
    assert exit_info.value.code == 130


def test_a_script_given_an_empty_folder_prints_one_line_and_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    command = [
        sys.executable,
        "examples/run_pretraining.py",
        "--train_dir",
        str(tmp_path / "empty"),
        "--output_dir",
        str(tmp_path / "run"),
    ]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(tmp_path / "empty") in errors[0], result.stderr

    debug_environment = {**os.environ, DEBUG_VARIABLE: "1"}
    debug = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, env=debug_environment)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_process_that_cannot_reach_machine_0_says_what_to_check(images, tmp_path):
    # Process 1 of 2, pointed at a port where no process 0 listens: after --ddp_timeout, one line naming the address.
    port = free_port()
    environment = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }
    command = [
        sys.executable,
        "examples/run_pretraining.py",
        "--train_dir",
        str(images),
        "--output_dir",
        str(tmp_path / "run"),
        "--ddp_timeout",
        "3",
    ]
    result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True, env=environment)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"The 2 processes of this run did not all meet at 127.0.0.1:{port} within --ddp_timeout 3 s" in errors[0]
    assert "--main_process_ip and --main_process_port" in errors[0]


# ---------------------------------------------------------------------------------------------------------------------
# --help
# ---------------------------------------------------------------------------------------------------------------------


def help_of(module) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
        module.parse_args(["--help"])
    return output.getvalue()


def test_pretraining_help_shows_each_default_once_and_the_choices():
    text = help_of(run_pretraining)
    assert "(default: None)" not in text
    flags = text.split("\n  --")[1:]
    assert len(flags) > 40
    for flag in flags:
        assert flag.count("default") <= 1, flag
    assert "{vit-tiny,vit-small,vit-base" in text.replace(" ", "")  # --model_size
    assert "pera-rgb" in text and "sentinel2-l2a" in text  # --processor_preset choices
    assert "{reference,short-budget}" in text
    assert "method.md" not in text
    assert "(default: 32)" in text  # --per_device_train_batch_size


def test_eval_help_shows_defaults_once():
    text = help_of(run_eval)
    assert "(default: None)" not in text and "(default: 20)" in text


# ---------------------------------------------------------------------------------------------------------------------
# The Hub: checked before training, a failed upload names the saved encoder
# ---------------------------------------------------------------------------------------------------------------------


def recording_hub(monkeypatch, identity: dict, upload_error: Exception | None = None) -> list:
    calls = []

    class RecordingHfApi:
        def __init__(self, token=None):
            self.token = token

        def whoami(self):
            calls.append("whoami")
            return identity

        def create_repo(self, repo_id, **kwargs):
            calls.append("create_repo")
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, **kwargs):
            calls.append("upload_folder")
            if upload_error is not None:
                raise upload_error

    monkeypatch.setattr(modeling_pera.hub, "HfApi", RecordingHfApi)
    return calls


WRITER = {"name": "someone", "orgs": [{"name": "rs-lab"}], "auth": {"accessToken": {"role": "write"}}}


def test_push_to_hub_without_the_hub_stops_before_training(images, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the real client, offline
    run = tmp_path / "run"
    with pytest.raises(HubAccessError) as error:
        pretrain(tiny_arguments(images, run, push_to_hub=True, hub_model_id="someone/pera"))
    message = str(error.value)
    assert "hf auth login" in message and "--hub_token" in message
    assert "python examples/push_to_hub.py --model_dir '<output_dir>/encoder' --hub_model_id someone/pera" in message
    assert not (run / "checkpoints").exists() and not (run / "encoder").exists()  # nothing trained


def test_a_token_that_cannot_write_there_is_refused(monkeypatch):
    recording_hub(monkeypatch, WRITER)
    assert check_hub_access("rs-lab/pera") == "someone"
    assert check_hub_access("pera") == "someone"
    with pytest.raises(HubAccessError, match="cannot write to 'other/pera'"):
        check_hub_access("other/pera")
    recording_hub(monkeypatch, {**WRITER, "auth": {"accessToken": {"role": "read"}}})
    with pytest.raises(HubAccessError, match="read-only"):
        check_hub_access("someone/pera")


def test_a_failed_upload_names_the_saved_encoder_and_the_retry_command(images, tmp_path, monkeypatch, capsys):
    calls = recording_hub(monkeypatch, WRITER, upload_error=ConnectionError("connection reset"))
    run = tmp_path / "run"
    with pytest.raises(HubAccessError) as error:
        pretrain(tiny_arguments(images, run, push_to_hub=True, hub_model_id="someone/pera"))
    assert calls[0] == "whoami" and calls[-1] == "upload_folder"
    message = str(error.value)
    assert f"The upload of {run / 'encoder'} to someone/pera failed" in message and "connection reset" in message
    retry = message.split("retry the upload alone")[1].split(":\n")[1].strip()
    assert (run / "encoder" / "README.md").is_file() and (run / "encoder" / "model.safetensors").is_file()

    calls = recording_hub(monkeypatch, WRITER)
    monkeypatch.setattr(sys, "argv", shlex.split(retry)[1:])
    push_to_hub.main()
    assert calls == ["whoami", "create_repo", "upload_folder"]
    assert "Uploaded" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# --bands, small images, the reference recipe on a short run
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgbn_tiles(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rgbn")
    for index in range(10):
        rgbn = np.random.default_rng(index).integers(0, 256, (4, 40, 48), dtype=np.uint8)
        tifffile.imwrite(folder / f"naip_{index}.tif", rgbn, photometric="minisblack", planarconfig="separate")
    return folder


def test_bands_pretrain_an_rgb_model_on_rgbn_tiles(rgbn_tiles, tmp_path):
    with pytest.raises(ValueError, match="--bands 0 1 2"):
        pretrain(tiny_arguments(rgbn_tiles, tmp_path / "refused"))
    run = tmp_path / "run"
    pretrain(tiny_arguments(rgbn_tiles, run, bands=["0", "1", "2"], max_train_steps=1))
    assert '"num_channels": 3' in (run / "encoder" / "config.json").read_text()
    four = tmp_path / "four"
    pretrain(tiny_arguments(rgbn_tiles, four, bands=["3", "0", "1", "2"], max_train_steps=1))
    assert '"num_channels": 4' in (four / "encoder" / "config.json").read_text()


def test_bands_evaluate_an_rgb_encoder_on_rgbn_tiles(rgbn_tiles, images, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_arguments(images, run, max_train_steps=1))
    classes = tmp_path / "classes"
    for index, tile in enumerate(sorted(rgbn_tiles.iterdir())):
        (classes / f"class_{index % 2}").mkdir(parents=True, exist_ok=True)
        (classes / f"class_{index % 2}" / tile.name).write_bytes(tile.read_bytes())
    flags = ["--model_name_or_path", str(run / "encoder"), "--data_dir", str(classes), "--k", "2", "--batch_size", "4"]
    with pytest.raises(ValueError, match="has 4 bands but the encoder takes 3: .*--bands 0 1 2"):
        evaluate_encoder(run_eval.parse_args(flags))
    results = evaluate_encoder(run_eval.parse_args([*flags, "--bands", "0", "1", "2"]))
    assert results["input_size"] == [3, 32, 32]


def test_small_images_are_named_at_start_and_counted(tmp_path, caplog):
    small = tmp_path / "small"
    small.mkdir()
    for index in range(8):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            small / f"tile_{index}.png"
        )
    with caplog.at_level("WARNING"):
        summary = pretrain(tiny_arguments(small, tmp_path / "run", max_train_steps=2))
    assert "8 of the 8 checked images are smaller than the 32 px global crops" in caplog.text
    assert "tile_0.png, 24x24 px" in caplog.text
    assert summary["upsampled_samples"] == 8  # 2 steps of 4 images
    assert caplog.text.count("images so far are smaller than the global crops") == 1


def test_a_short_run_with_the_reference_recipe_is_warned(images, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        pretrain(tiny_arguments(images, tmp_path / "run", max_train_steps=1))
    assert "--recipe reference for 1 steps" in caplog.text and "--recipe short-budget" in caplog.text
