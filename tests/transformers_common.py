"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), fetched at test time.

The transformers wheel ships no tests; the sdist of the same version on the package index does. This helper (no tests
in it) downloads the sdist of the INSTALLED transformers version once, extracts the test modules we need and makes them
importable as the package `transformers_tests` (so it never clashes with our own `tests` folder), without committing
a copy of transformers' test code:

- `<repo>/.cache/transformers-sdist/transformers-<version>.tar.gz`: the sdist, from
  `python -m pip download --no-deps --no-binary :all: transformers==<version>` (or the file named by the environment
  variable `PERA_TRANSFORMERS_SDIST`, for machines without the index).
- `<repo>/.cache/transformers-tests/<version>/transformers_tests/`: `tests/test_modeling_common.py`,
  `tests/test_configuration_common.py` and every module of the sdist's `tests/` tree they import (followed through their
  relative imports), unmodified, plus small stand-ins, written by this module, for the three modules the sdist lacks.
  The folder is built beside its final place and renamed into it, so an interrupted or concurrent run never leaves a
  half-extracted copy; it is rebuilt when the stand-ins below change. Delete `.cache/` to refetch.

Usage in a test module (skips the whole module, with the reason, when the sdist cannot be fetched):

    from transformers_common import import_or_skip

    common = import_or_skip()
    ModelTesterMixin = common.test_modeling_common.ModelTesterMixin
"""

import ast
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import warnings
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import transformers


REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_ROOT = REPO_ROOT / ".cache"
SDIST_CACHE = CACHE_ROOT / "transformers-sdist"
TESTS_CACHE = CACHE_ROOT / "transformers-tests"
PACKAGE_NAME = "transformers_tests"
SDIST_ENV_VAR = "PERA_TRANSFORMERS_SDIST"
# The modules of transformers' `tests/` folder we use; whatever they import from that folder comes with them.
ENTRY_MODULES = ("test_modeling_common", "test_configuration_common")
DOWNLOAD_TIMEOUT_S = 600

# Stand-ins for the modules `tests/test_*_common.py` import from folders of transformers' test tree that the sdist
# leaves out. Keyed by dotted module name relative to the tests folder.
STAND_INS = {
    "generation.test_utils": '''
        """Stand-in written by modeling_pera's tests/transformers_common.py (the sdist lacks tests/generation/).

        `ModelTesterMixin` only checks `issubclass(test_class, GenerationTesterMixin)` against the models'
        `can_generate()`: a test class for models that cannot generate must NOT inherit from it, which this empty class
        keeps checkable. It carries none of transformers' `generate` tests.
        """


        class GenerationTesterMixin:
            pass
        ''',
    "exporters.test_export": '''
        """Stand-in written by modeling_pera's tests/transformers_common.py (the sdist lacks tests/exporters/).

        `ModelTesterMixin` derives from `ExportTesterMixin`, which holds transformers' export tests (ONNX, ExecuTorch,
        OpenVINO, dynamo, driven by `test_torch_exportable`). This stand-in adds no tests; export is tested by the
        model's own test module.
        """


        class ExportTesterMixin:
            pass
        ''',
    "utils.test_configuration_utils": '''
        """Stand-in written by modeling_pera's tests/transformers_common.py (the sdist lacks tests/utils/).

        `ConfigTester.check_config_arguments_init` builds a config from `config_common_kwargs` and checks that every
        one of them comes back as given (`dtype` as `torch.float16`). The keys are the arguments every
        `PreTrainedConfig` takes (its own dataclass fields, plus the `output_attentions` property); each value differs
        from the field's default, so a model config that drops, renames or overwrites a common argument fails.
        """

        config_common_kwargs = {
            "return_dict": False,
            "output_hidden_states": True,
            "output_attentions": True,
            "dtype": "float16",
            "chunk_size_feed_forward": 5,
            "architectures": ["BertModel"],
            "id2label": {0: "label"},
            "label2id": {"label": 0},
            "problem_type": "regression",
        }
        ''',
}


class TransformersTestsUnavailable(RuntimeError):
    """The sdist of the installed transformers could not be fetched or unpacked."""


def transformers_version() -> str:
    return transformers.__version__


def fetch_sdist(version: str) -> Path:
    """Path of the cached sdist of `transformers==version`, downloaded with pip if missing."""
    override = os.environ.get(SDIST_ENV_VAR)
    if override:
        path = Path(override)
        if not path.is_file() or path.name != f"transformers-{version}.tar.gz":
            raise TransformersTestsUnavailable(
                f"{SDIST_ENV_VAR}={override} is not the sdist transformers-{version}.tar.gz of the installed version"
            )
        return path
    sdist = SDIST_CACHE / f"transformers-{version}.tar.gz"
    if sdist.is_file():
        return sdist
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)
    # Download into a private folder, then move: a concurrent run never sees a partial archive.
    with tempfile.TemporaryDirectory(dir=SDIST_CACHE, prefix=".download-") as download_dir:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
            f"transformers=={version}", "-d", download_dir,
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise TransformersTestsUnavailable(f"`pip download` of transformers=={version} failed: {error}") from error
        archives = list(Path(download_dir).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or len(archives) != 1:
            last_lines = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise TransformersTestsUnavailable(
                f"could not download the sdist of transformers=={version} (pip exit code {result.returncode}): "
                f"{last_lines}"
            )
        os.replace(archives[0], sdist)
    return sdist


def _relative_imports(source: str, module: str) -> set[str]:
    """Dotted names (relative to the tests folder) of the modules that `module`'s source imports relatively."""
    package_parts = module.split(".")[:-1]
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package_parts[: len(package_parts) - (node.level - 1)]
            if node.module:
                imported.add(".".join([*base, node.module]))
            else:  # `from . import name`: each name is a module
                imported.update(".".join([*base, alias.name]) for alias in node.names)
    return imported


def _extract_tests(sdist: Path, target: Path) -> None:
    """Unpack the entry modules and their relative imports from `sdist` into the package folder `target`."""
    with tarfile.open(sdist, "r:gz") as archive:
        members = {}
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and len(parts) > 2 and parts[1] == "tests" and member.name.endswith(".py"):
                members[".".join(parts[2:])[: -len(".py")]] = member
        pending, done = list(ENTRY_MODULES), set()
        while pending:
            module = pending.pop()
            if module in done:
                continue
            done.add(module)
            if module in members:
                source = archive.extractfile(members[module]).read().decode("utf-8")
            elif module in STAND_INS:
                source = textwrap.dedent(STAND_INS[module]).lstrip()
            elif module + ".__init__" in members or any(name.startswith(module + ".") for name in STAND_INS):
                continue  # a package: its `__init__.py` is written below
            else:
                # an error, not a skip: a transformers upgrade must not silently switch the common tests off
                raise RuntimeError(
                    f"transformers' tests/{module.replace('.', '/')}.py is neither in the sdist {sdist.name} nor "
                    "stood in for by tests/transformers_common.py: add a stand-in to STAND_INS"
                )
            path = target.joinpath(*module.split(".")).with_suffix(".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source, encoding="utf-8")
            pending.extend(_relative_imports(source, module))
    # Every folder becomes a package (the sdist's tests tree has no `__init__.py` at its top).
    for folder in [target, *(path for path in target.rglob("*") if path.is_dir())]:
        (folder / "__init__.py").touch()


def _stand_ins_digest() -> str:
    return hashlib.sha256(repr(sorted(STAND_INS.items())).encode("utf-8")).hexdigest()[:16]


def prepare(version: str | None = None) -> Path:
    """The folder to put on `sys.path` so that `transformers_tests` is transformers' tests package of `version`."""
    version = version or transformers_version()
    root = TESTS_CACHE / version
    package = root / PACKAGE_NAME
    complete = root / ".complete"
    # the marker names the stand-ins the folder was built with: editing them here rebuilds it
    marker = f"transformers-{version} stand-ins {_stand_ins_digest()}\n"
    if complete.is_file() and complete.read_text(encoding="utf-8") == marker:
        return root
    sdist = fetch_sdist(version)
    TESTS_CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=TESTS_CACHE, prefix=f".{version}-"))
    try:
        _extract_tests(sdist, staging / PACKAGE_NAME)
        (staging / ".complete").write_text(marker, encoding="utf-8")
        if not (complete.is_file() and complete.read_text(encoding="utf-8") == marker):  # else another run was first
            if root.exists():  # outdated or incomplete: moved aside, so that the rename below is atomic
                root.rename(staging.with_name(staging.name + "-old"))
            staging.rename(root)
    except OSError as error:
        if not (complete.is_file() and complete.read_text(encoding="utf-8") == marker):
            raise TransformersTestsUnavailable(
                f"could not unpack transformers' tests from {sdist}: {error}"
            ) from error
        # else another run put the same folder in place first
    except (tarfile.TarError, UnicodeDecodeError) as error:
        raise TransformersTestsUnavailable(f"could not unpack transformers' tests from {sdist}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(staging.with_name(staging.name + "-old"), ignore_errors=True)
    if not package.is_dir():
        raise TransformersTestsUnavailable(f"{package} is missing after extraction")
    return root


def load(version: str | None = None) -> SimpleNamespace:
    """Import transformers' `test_modeling_common` and `test_configuration_common` (fetching them if needed)."""
    root = str(prepare(version))
    loaded = sys.modules.get(PACKAGE_NAME)
    if loaded is not None and Path(loaded.__file__).parent.parent != Path(root):
        raise TransformersTestsUnavailable(
            f"another `{PACKAGE_NAME}` package is already imported from {loaded.__file__}"
        )
    if root not in sys.path:
        sys.path.insert(0, root)
    with warnings.catch_warnings():
        # transformers registers its custom marks (`flash_attn_test`, ...) in a conftest.py we do not use
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        modules: dict[str, ModuleType] = {
            name: importlib.import_module(f"{PACKAGE_NAME}.{name}") for name in ENTRY_MODULES
        }
    return SimpleNamespace(**modules)


def import_or_skip(version: str | None = None) -> SimpleNamespace:
    """`load()`, or skip the calling test module (at collection) when transformers' tests cannot be fetched."""
    try:
        return load(version)
    except TransformersTestsUnavailable as error:
        pytest.skip(
            f"transformers' common tests unavailable (need the transformers=={version or transformers_version()} "
            f"sdist from the package index): {error}",
            allow_module_level=True,
        )
