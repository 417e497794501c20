"""--preload auto (issue 17): the bank goes to the GPU on CUDA when it fits in half the free
memory, else it stays in host memory. The decision is pure; a CUDA device is only named here."""

import torch

from expr.train_heads.data import GPU_SHARE, bank_nbytes, load_bank, resolve_preload
from cache_helpers import new_writer, write_videos

GB = 1 << 30


def test_auto_puts_a_bank_that_fits_on_a_cuda_device():
    assert resolve_preload("auto", torch.device("cuda", 0), 9 * GB, free_bytes=139 * GB) == "gpu"


def test_auto_keeps_a_bank_over_the_share_of_free_memory_in_host_memory():
    free = 16 * GB
    assert resolve_preload("auto", "cuda", int(GPU_SHARE * free) + 1, free_bytes=free) == "cpu"
    assert resolve_preload("auto", "cuda", int(GPU_SHARE * free), free_bytes=free) == "gpu"


def test_auto_on_cpu_is_cpu_and_explicit_choices_pass_through():
    assert resolve_preload("auto", "cpu", 1, free_bytes=100 * GB) == "cpu"
    for setting in ("cpu", "gpu", "none"):
        assert resolve_preload(setting, "cuda", 100 * GB, free_bytes=1) == setting


def test_bank_nbytes_counts_float16_visual_and_audio_rows_with_the_zero_row():
    assert bank_nbytes(10, 4, 512, 768) == 2 * (10 * 512 + 5 * 768)


def test_load_bank_with_auto_on_cpu_gives_a_host_bank(tmp_path):
    ids = ["a", "b"]
    write_videos(new_writer(tmp_path / "c.zarr"), ids)
    bank = load_bank(tmp_path / "c.zarr", ids, None, preload="auto", device="cpu")
    assert bank.visual.device.type == "cpu" and bank.visual.shape == (80, 16)
