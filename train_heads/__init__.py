"""Stage two: the paper's temporal heads, trained from a feature cache only.

The public interface (what the CLI, ``expr.evaluate`` and the README's Python API use) is
``__all__``. Modules: config (TrainConfig, HeadConfig and the option choices), labels (ABAW
annotation files), data (FeatureBank, vectorised batch gathering), windows (WindowSpec; which
windows a video and a bank yield), batch_feeder (batches on the device: pinned staging to a GPU), step
(the training step and its fast path), model
(ExprHeadModel), loop (train), inference (logits and probabilities of windows and frames),
run_dir (the run folder and every file name in it), checkpoint (safetensors + JSON, and load_run: a run's model with its configs),
macro_f1 (the task's score), synthetic (a learnable test cache).

Importing this package is cheap: the config names are plain dataclasses and enums; the
rest (torch) loads on first use. It never imports open_clip or transformers.
"""

from typing import TYPE_CHECKING

from expr.core.lazy import lazy_getattr
from expr.train_heads.config import (Compile, Fusion, HeadConfig, NoFace, Preload, SmoothMode, Target, TrainConfig,
                                     WindowRule)

__getattr__ = lazy_getattr(__name__)  # the names of the TYPE_CHECKING block below, on first use

if TYPE_CHECKING:  # THE list of lazy names: pyright and editors see them, lazy_getattr reads it
    from expr.train_heads.checkpoint import LoadedRun, load_run, resumable_epoch
    from expr.train_heads.batch_feeder import BatchFeeder
    from expr.train_heads.data import FeatureBank, gather, load_bank, to_device
    from expr.train_heads.inference import (frame_probabilities, frame_queries, predict_logits,
                                            smooth_probabilities, split_by_video, window_probabilities,
                                            with_face_fill)
    from expr.train_heads.labels import load_split, read_id_list, read_label_file
    from expr.train_heads.loop import TrainResult, lr_at, train
    from expr.train_heads.loss import class_weights
    from expr.train_heads.macro_f1 import confusion_from_pairs, macro_f1_accuracy
    from expr.train_heads.model import ExprHeadModel
    from expr.train_heads.run_dir import Checkpoint, RunDir, read_metrics
    from expr.train_heads.synthetic import SyntheticDataset, write_synthetic_dataset
    from expr.train_heads.windows import BankWindows, WindowSpec, bank_windows, with_sources

__all__ = [
    "Compile", "Fusion", "HeadConfig", "NoFace", "Preload", "SmoothMode", "Target", "TrainConfig", "WindowRule",
    "load_split", "read_id_list", "read_label_file", "FeatureBank", "load_bank", "WindowSpec", "BankWindows",
    "bank_windows", "with_sources", "gather", "to_device", "BatchFeeder", "ExprHeadModel", "TrainResult", "train", "lr_at",
    "class_weights", "predict_logits", "window_probabilities", "frame_probabilities", "with_face_fill",
    "frame_queries", "smooth_probabilities", "split_by_video", "Checkpoint", "RunDir", "LoadedRun", "load_run",
    "resumable_epoch",
    "read_metrics", "macro_f1_accuracy", "confusion_from_pairs", "SyntheticDataset", "write_synthetic_dataset",
]
