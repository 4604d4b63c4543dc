from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PEERS = FIXTURES / "peers"

# Two threads at most: the CI machine has two cores and more threads only slow small ops down.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def peers() -> Path:
    return PEERS
