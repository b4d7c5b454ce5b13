import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


# The tests' models are tiny: one thread runs them hundreds of times faster than two threads fighting over the
# cores with the other processes of the suite.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PERA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real RS datasets beside the repository (../shared/data); tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real RS data not found at {SHARED_DATA} (set PERA_SHARED_DATA to its folder)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of 12 random 40x48 RGB PNG tiles: enough for a few steps of a tiny pretraining run."""
    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for index in range(12):
        Image.fromarray(generator.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"tile_{index:02d}.png")
    return folder
