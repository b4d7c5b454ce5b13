import os
from pathlib import Path

import pytest
import torch


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
