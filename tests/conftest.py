from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
PEERS = FIXTURES / "peers"

# The commands that encode run eager fp32 in the tests, so their figures are exact and no test pays
# for measuring the inference paths; tests/test_inference_paths.py runs the default (auto).
os.environ.setdefault("CLIPFORGE_BACKEND", "torch")
os.environ.setdefault("CLIPFORGE_PRECISION", "fp32")

# Two threads at most: the CI machine has two cores and more threads only slow small ops down.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def peers() -> Path:
    return PEERS
