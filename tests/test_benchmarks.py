"""The benchmark scripts run end to end on tiny settings and write what they promise (their figures are measured by
running them, never asserted here)."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pera_testing import tiny_config_overrides


REPO_ROOT = Path(__file__).resolve().parents[1]


def write_labelled_images(root: Path, classes=("field", "forest", "harbor"), per_class=12) -> Path:
    """A UC Merced-like folder: <root>/ucmerced/<class>/<image>.png, each class its own colour."""
    generator = np.random.default_rng(0)
    for index, name in enumerate(classes):
        folder = root / "ucmerced" / name
        folder.mkdir(parents=True)
        for image in range(per_class):
            pixels = generator.integers(0, 60, (40, 40, 3)) + 80 * np.eye(3, dtype=int)[index]
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{image}.png")
    return root


def test_representation_benchmark_trains_and_evaluates_every_method(tmp_path):
    data_dir = write_labelled_images(tmp_path / "data")
    markdown = tmp_path / "docs" / "benchmarks.md"
    markdown.parent.mkdir()
    markdown.write_text("# Benchmarks\n\nkept text\n")
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "representation.py"),
        "--data_dir",
        str(data_dir),
        "--model_size",
        "vit-tiny",
        "--config_overrides",
        tiny_config_overrides(num_local_crops=2),
        "--batch_size",
        "4",
        "--budget_minutes",
        "0.005",
        "--calibration_steps",
        "2",
        "--num_snapshots",
        "2",
        "--output_dir",
        str(tmp_path / "out"),
        "--markdown",
        str(markdown),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "representation.json").read_text())
    assert set(report["methods"]) == {"pera", "full_view", "mae", "random_init"}
    for method in ("pera", "full_view", "mae"):
        row = report["methods"][method]
        assert row["steps"] >= 2 and row["train_seconds"] > 0
        # The clock ends the run once its training time reaches the budget (0.3 s), unless its schedules end first.
        assert row["steps"] == row["planned_steps"] or row["train_seconds"] >= 0.3
        assert row["steps"] <= row["planned_steps"]
        # A snapshot halfway through the run the calibration expected (when reached), then the final encoder.
        curve_steps = [point["step"] for point in row["curve"]]
        assert curve_steps[-1] == row["steps"] and len(curve_steps) <= 2 and curve_steps == sorted(set(curve_steps))
        assert 0.0 <= row["final"]["knn_top1"] <= 1.0 and "linear_probe_top1" in row["final"]
    text = markdown.read_text()
    assert "kept text" in text and "<!-- BEGIN representation-cpu -->" in text
    assert "| mae |" in text and "| random_init |" in text
    assert (tmp_path / "docs" / "figures" / "representation_cpu.png").stat().st_size > 0

    # The table of several seeds' runs (here the same run twice: no spread, and PerA's margins seed by seed).
    seeds = [str(tmp_path / "out" / "representation.json")] * 2
    summary = subprocess.run([*command[:2], "--seed_reports", *seeds, "--markdown", str(markdown)], text=True)
    assert summary.returncode == 0
    text = markdown.read_text()
    pera_knn = 100 * report["methods"]["pera"]["final"]["knn_top1"]
    seconds = f"{report['methods']['pera']['train_seconds']:.0f}"
    assert f"| pera | {report['methods']['pera']['steps']} | {seconds} / {seconds} | {pera_knn:.1f} ± 0.0 |" in text
    margin = 100 * (report["methods"]["pera"]["final"]["knn_top1"] - report["methods"]["mae"]["final"]["knn_top1"])
    assert f"| **PerA - mae** |  |  | {margin:.1f} ± 0.0 |" in text


def test_step_benchmark_measures_every_variant_on_cpu(tmp_path):
    data_dir = write_labelled_images(tmp_path / "data")
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "step.py"),
        "--device",
        "cpu",
        "--model_size",
        "vit-tiny",
        "--config_overrides",
        tiny_config_overrides(num_local_crops=2),
        "--batch_sizes",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--output_json",
        str(tmp_path / "step.json"),
        "--train_dir",
        str(data_dir / "ucmerced"),
        "--photometry_on_device",
        "--num_workers",
        "0",
        "--activation_checkpointing",
        "selective",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "step.json").read_text())
    assert [row["variant"] for row in report["rows"]] == ["pera", "full_view", "mae", "pera"]
    assert report["rows"][-1]["data"] == "real, photometry on device"
    assert [row["activation_checkpointing"] for row in report["rows"]] == ["selective", "selective", None, "selective"]
    assert all(row["images_per_second"] > 0 and row["peak_memory_gib"] > 0 for row in report["rows"])


def run_data_benchmark(output_json: Path, *flags: str) -> list[dict]:
    """benchmarks/data.py with the tiny model's crops, batches of 4, 2 timed batches and `flags`; its JSON rows."""
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "data.py"),
        "--model_size",
        "vit-tiny",
        "--config_overrides",
        tiny_config_overrides(num_local_crops=2),
        "--batch_size",
        "4",
        "--batches",
        "2",
        "--output_json",
        str(output_json),
        *flags,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output_json.read_text())["rows"]


def test_data_benchmark_compares_photometry_in_the_workers_and_on_the_device(tmp_path):
    data_dir = write_labelled_images(tmp_path / "data")
    markdown = tmp_path / "benchmarks.md"
    flags = ["--train_dir", str(data_dir / "ucmerced"), "--num_workers", "0", "1", "--device", "cpu"]
    rows = run_data_benchmark(tmp_path / "data.json", *flags, "--markdown", str(markdown))
    assert [(row["mode"], row["num_workers"]) for row in rows] == [
        ("in_loader", 0),
        ("on_device", 0),
        ("in_loader", 1),
        ("on_device", 1),
    ]
    in_loader, on_device = rows[:2]
    # float32 views of both roles against one 8-bit crop: 2 roles x 4 bytes
    assert in_loader["bytes_per_image"] > 6 * on_device["bytes_per_image"]
    assert on_device["finish_images_per_second"] > 0 and in_loader["finish_images_per_second"] is None
    assert "<!-- BEGIN data-cpu -->" in markdown.read_text()


def test_data_benchmark_compares_scene_windows_with_pre_chipped_tiles(tmp_path):
    pytest.importorskip("rasterio", reason="the geo extra (rasterio) is not installed")
    flags = ["--scenes", "--scene_size", "1024", "--scene_window_size", "128", "--num_workers", "0"]
    rows = run_data_benchmark(tmp_path / "scenes.json", *flags)
    # 8 x 8 tiles of 128 px; with a 192 px nodata border the 4 x 4 inner tiles are valid and the 16 edge tiles beside
    # them half valid (kept), the rest less
    assert [row["source"] for row in rows] == [
        "scene windows, 128 px read at 128",
        "scene windows, 256 px read at 128 (overviews)",
        "32 pre-chipped tiles of 128 px",
    ]
    assert all(row["loader_images_per_second"] > 0 for row in rows)


def test_dino_loss_benchmark_compares_both_implementations(tmp_path):
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "dino_loss.py"),
        "--device",
        "cpu",
        "--rows",
        "20",
        "--num_prototypes",
        "512",
        "--repeats",
        "1",
        "--output_json",
        str(tmp_path / "loss.json"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    plain, chunked = json.loads((tmp_path / "loss.json").read_text())["results"]
    assert (plain["implementation"], chunked["implementation"]) == ("plain", "chunked")
    assert abs(plain["loss"] - chunked["loss"]) < 1e-3  # the same loss, whatever the speed and memory


def test_sweep_trains_every_configuration_for_the_budget_and_reports_mean_and_spread(tmp_path):
    data_dir = write_labelled_images(tmp_path / "data")
    grid = tmp_path / "tiny_grid.json"
    grid.write_text(
        json.dumps(
            {
                "setting": "cpu",
                "budget_minutes": 0.005,
                "config_overrides": tiny_config_overrides(num_local_crops=2),
                "configs": {"recipe": {}, "lr 1e-3": {"learning_rate": 1e-3, "config_overrides": "num_local_crops=1"}},
            }
        )
    )
    markdown = tmp_path / "docs" / "benchmarks.md"
    markdown.parent.mkdir()
    markdown.write_text("# Benchmarks\n\nkept text\n")
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "sweep.py"),
        str(grid),
        "--seeds",
        "0",
        "1",
        "--data_dir",
        str(data_dir),
        "--batch_size",
        "4",
        "--calibration_steps",
        "2",
        "--output_dir",
        str(tmp_path / "runs"),
        "--output_json",
        str(tmp_path / "sweep.json"),
        "--markdown",
        str(markdown),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "sweep.json").read_text())
    runs = [(run["config"], run["seed"]) for run in report["runs"]]
    assert runs == [("recipe", 0), ("lr 1e-3", 0), ("recipe", 1), ("lr 1e-3", 1), ("random init", None)]
    for run in report["runs"][:-1]:
        assert run["steps"] >= 1 and run["train_seconds"] > 0
        assert 0.0 <= run["final"]["knn_top1"] <= 1.0 and 0.0 <= run["final"]["linear_probe_top1"] <= 1.0
    # the configuration's own settings reached the run
    config = json.loads((tmp_path / "runs" / "seed0" / "01" / "config.json").read_text())
    assert config["num_local_crops"] == 1
    text = markdown.read_text()
    assert "kept text" in text and "<!-- BEGIN sweep-tiny_grid -->" in text
    assert "| lr 1e-3 | learning_rate=0.001, config_overrides=num_local_crops=1 |" in text and " ± " in text
    assert (tmp_path / "docs" / "figures" / "sweep_tiny_grid.png").stat().st_size > 0


def test_sweep_speed_only_reports_images_per_second_of_each_configuration(tmp_path):
    data_dir = write_labelled_images(tmp_path / "data")
    grid = tmp_path / "speed.json"
    grid.write_text(
        json.dumps(
            {
                "setting": "cpu",
                "config_overrides": tiny_config_overrides(num_local_crops=2),
                "configs": {"in the workers": {"photometry_on_device": False}, "on the device": {}},
            }
        )
    )
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "sweep.py"),
        str(grid),
        "--speed_only",
        "--data_dir",
        str(data_dir),
        "--batch_size",
        "4",
        "--calibration_steps",
        "4",
        "--output_dir",
        str(tmp_path / "runs"),
        "--output_json",
        str(tmp_path / "speed.json"),
        "--configs",
        "on the device",
        "in the workers",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "speed.json").read_text())
    assert [run["config"] for run in report["runs"]] == ["on the device", "in the workers"]  # in --configs' order
    assert shlex.split(report["command"]) == ["python", "benchmarks/sweep.py", *command[2:]]
    assert all(run["images_per_second"] > 0 for run in report["runs"])
    assert "| in the workers | photometry_on_device=False |" in result.stdout and "| 1.00x |" in result.stdout
    assert all("final" not in run for run in report["runs"])  # no evaluation, only speed
