"""What the benchmark scripts share: writing their markdown tables into docs/benchmarks.md."""

import re
from pathlib import Path


def write_section(markdown_path: Path, section: str, table: str) -> None:
    """Replaces (or appends) the block between `<!-- BEGIN {section} -->` and `<!-- END {section} -->`."""
    text = markdown_path.read_text() if markdown_path.exists() else "# Benchmarks\n"
    block = f"<!-- BEGIN {section} -->\n{table}\n<!-- END {section} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(section)} -->.*?<!-- END {re.escape(section)} -->", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    markdown_path.write_text(text)
