"""Suite-wide settings: CPU only, no hub access, no GUI backends."""

import os

# Tests never reach a model hub: fail fast instead of retrying for ~20-50 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
