"""The commands of README.md and docs/ work as written (in the environment the README sets up): every example script a
page runs accepts the flags it is given (parsed with the script's own parser, values checked), every other script
and config file it names exists and knows the flags, every `make` line is a valid make invocation, and every Python
block compiles and its imports resolve. Nothing heavy runs: the parse stops before any training or download."""

import ast
import collections
import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest


REPOSITORY = Path(__file__).resolve().parents[1]
PAGES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Lines that are not commands to check here: fragments ("... --flag"), the clone, the Hub login, activating .venv.
NOT_CHECKED = re.compile(r"\.\.\.|^git clone|^hf auth login|^source ")


def blocks(language: str) -> list[tuple[str, str]]:
    """(where, text) of the fenced blocks of `language` in the pages."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text[: match.start()].count("\n") + 1
                found.append((f"{page.relative_to(REPOSITORY)}:{line}", match.group(2)))
    return found


def shell_commands() -> list[tuple[str, list[str]]]:
    """Each command line of the bash blocks, continuation lines joined, comments dropped, split into words."""
    commands = []
    for where, text in blocks("bash"):
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#") and not NOT_CHECKED.search(line):
                commands.append((where, shlex.split(line)))
    return commands


def script_and_flags(words: list[str]) -> tuple[str, list[str]]:
    """The Python script a command runs (through python, accelerate launch or torchrun) and the words after it."""
    for index, word in enumerate(words):
        if word.endswith(".py"):
            return word, words[index + 1 :]
    raise AssertionError(f"no script in {shlex.join(words)}")


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # benchmarks import their siblings
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def help_text(module, script: str) -> str:
    """What `script --help` prints, in this process."""
    output = io.StringIO()
    saved_argv = sys.argv
    sys.argv = [script, "--help"]
    try:
        with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
            (module.parse_args if hasattr(module, "parse_args") else module.main)()
    finally:
        sys.argv = saved_argv
    assert exit_info.value.code in (0, None), f"{script} --help exited with {exit_info.value.code}"
    return output.getvalue()


COMMANDS = shell_commands()
SCRIPT_COMMANDS = [(where, words) for where, words in COMMANDS if words[0] != "make"]
MAKE_COMMANDS = [(where, words) for where, words in COMMANDS if words[0] == "make"]


def test_the_pages_have_commands_to_check():
    assert len(SCRIPT_COMMANDS) >= 8 and len(MAKE_COMMANDS) >= 3


@pytest.mark.parametrize("where, words", SCRIPT_COMMANDS, ids=[where for where, _ in SCRIPT_COMMANDS])
def test_a_documented_script_command_accepts_its_flags(where, words, tmp_path, monkeypatch):
    assert words[0] in ("python", "accelerate", "torchrun") or "=" in words[0], (
        f"{where}: {shlex.join(words)} does not start with `python` (the README's environment) or a launcher"
    )
    for index, word in enumerate(words[:-1]):
        if word == "--config_file":
            assert (REPOSITORY / words[index + 1]).is_file(), f"{where}: no config file {words[index + 1]}"
    script, flags = script_and_flags(words)
    path = REPOSITORY / script
    assert path.is_file(), f"{where}: no script {script}"
    monkeypatch.chdir(REPOSITORY)
    module = load_script(path)
    documented = help_text(module, script)
    for flag in (word.split("=")[0] for word in flags if word.startswith("--")):
        assert flag in documented, f"{where}: {script} has no flag {flag}"
    if script.startswith("examples/") and "--compare_to" not in flags:
        # The script's own parse: values and combinations checked as a user's run would check them at start
        module.parse_args(flags)


@pytest.mark.parametrize("where, words", MAKE_COMMANDS, ids=[where for where, _ in MAKE_COMMANDS])
def test_a_documented_make_command_is_valid(where, words, tmp_path):
    """`make -n` (print, do not run) accepts the target and the variables; the example commands it would run parse."""
    dry_run = subprocess.run(
        ["make", "-n", "-C", str(REPOSITORY), *words[1:], f"VENV={tmp_path / 'venv'}", f"DATA_DIR={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert dry_run.returncode == 0, f"{where}: {shlex.join(words)}: {dry_run.stderr}"
    for line in dry_run.stdout.splitlines():
        words = shlex.split(line)
        if words and words[0].endswith("/python") and "examples/run_" in line:
            script, flags = script_and_flags(words)
            if "--compare_to" not in flags:
                load_script(REPOSITORY / script).parse_args(flags)


PYTHON_BLOCKS = blocks("python")


# Packages of the optional extras (`make test` installs them), by the extra that brings them
OPTIONAL_PACKAGES = {"torchgeo": "torchgeo", "terratorch": "terratorch", "lightning": "terratorch"}


@pytest.mark.parametrize("where, text", PYTHON_BLOCKS, ids=[where for where, _ in PYTHON_BLOCKS])
def test_a_documented_python_block_compiles_and_its_imports_resolve(where, text):
    tree = ast.parse(text, filename=where)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    try:
        exec(compile(ast.Module(body=imports, type_ignores=[]), where, "exec"), {})
    except ImportError as error:
        missing = (error.name or getattr(error.__cause__, "name", None) or "").split(".")[0]
        if missing not in OPTIONAL_PACKAGES:
            raise
        pytest.skip(f"{where} needs the {OPTIONAL_PACKAGES[missing]} extra, not installed")


def test_the_readme_says_once_how_to_run_the_commands():
    readme = (REPOSITORY / "README.md").read_text()
    assert "source .venv/bin/activate" in readme
    for page in PAGES:
        assert ".venv/bin/python" not in page.read_text(), f"{page.name}: use `python` in the activated environment"


def test_the_quality_figures_of_the_main_job_are_the_committed_results():
    """docs/training.md's table of what `make pretrain` gives is generated from benchmarks/results (other pages link
    to it instead of quoting figures), so the pages cannot disagree with the JSON or with each other."""
    make_pretrain = load_script(REPOSITORY / "benchmarks" / "make_pretrain.py")
    training = (REPOSITORY / "docs" / "training.md").read_text()
    block = re.search(r"<!-- BEGIN make-pretrain -->\n(.*?)\n<!-- END make-pretrain -->", training, re.DOTALL)
    assert block is not None, "docs/training.md lacks the generated make-pretrain block"
    assert block.group(1) == make_pretrain.table(make_pretrain.committed_reports())


def test_the_architecture_page_draws_every_module_and_no_other():
    # docs/architecture.md draws the package module by module: adding, moving or renaming a module updates the page
    page = (REPOSITORY / "docs" / "architecture.md").read_text()
    drawn = collections.Counter(re.findall(r"^\s+(\w+\.py)\s", page, re.MULTILINE))
    package = REPOSITORY / "modeling_pera"
    modules = collections.Counter(path.name for path in package.rglob("*.py") if path.name != "__init__.py")
    assert not modules - drawn, f"modules missing from docs/architecture.md: {sorted(modules - drawn)}"
    stale = [name for name in drawn if not any(REPOSITORY.glob(f"**/{name}"))]
    assert not stale, f"docs/architecture.md draws modules that do not exist: {stale}"
