"""Test-wide environment (Triton runs in its CPU interpreter, nothing may touch a model hub) and shared fixtures."""
import os

import pytest

# Must be set before any module imports triton-jitted kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for the module (small models: fewer threads are faster on a shared box)."""
    import torch  # here: the environment above must be set before anything imports torch or triton

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
