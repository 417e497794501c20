"""Suite-wide settings: CPU only, no hub access, no GUI backends."""

import os

import pytest

# Tests never reach a model hub: fail fast instead of retrying for ~20-50 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: bit-identical runs need the same reduction
    order every time, and the CI machine's 2 cores are shared with other suites."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
