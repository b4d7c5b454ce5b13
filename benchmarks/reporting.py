"""What the benchmark scripts share: how they time and measure (median wall-clock time with the device's queue
drained, peak memory), how a run is named (command line, device) and how its figures are published (JSON, the
printed table, the table's block in docs/benchmarks.md)."""

import json
import re
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def median_seconds(run: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 0) -> tuple[float, Any]:
    """The median wall-clock seconds of `run()` over `repeats` calls after `warmup` untimed ones, each call timed
    from an empty device queue to an empty one; and the last call's result."""
    times = []
    for call in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if call >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times), result


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak memory so far: CUDA `max_memory_allocated`, or the CPU peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def command_line() -> str:
    """The command that ran this benchmark, as the docs quote it: quoted, so that it runs again when pasted (a
    configuration name of `sweep.py --configs` has spaces)."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def publish(
    report: dict, text: str, output_json: str | Path | None, markdown: str | Path | None, section: str
) -> None:
    """Writes `report` to `output_json`, prints `text` and writes it into the `section` block of `markdown`."""
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(report, indent=2))
    print(text)
    if markdown:
        write_section(Path(markdown), section, text)


def save_figure(figure, path: Path) -> None:
    """Writes a matplotlib `figure` to `path` (its folder made if needed) and frees it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_section(markdown_path: Path, section: str, table: str) -> None:
    """Replaces (or appends) the block between `<!-- BEGIN {section} -->` and `<!-- END {section} -->`."""
    text = markdown_path.read_text() if markdown_path.exists() else "# Benchmarks\n"
    block = f"<!-- BEGIN {section} -->\n{table}\n<!-- END {section} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(section)} -->.*?<!-- END {re.escape(section)} -->", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    markdown_path.write_text(text)
