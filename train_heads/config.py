"""Configuration of `expr train`: the head architecture, every training option, and the
option choices (str enums) that the CLI offers and the configs validate against.

Defaults are the reference method of DESIGN.md ("Facts about the reference method").
The architecture defaults are declared ONCE, in ``HeadConfig``; ``TrainConfig`` (and the
CLI, and `expr ablate`'s config) take theirs from it. ``TrainConfig`` mirrors the CLI
options of `expr train` 1:1 (a test checks it); it is saved as the run's config.json, so a
run can be rebuilt and resumed from its folder alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path

from expr.core.abaw import NUM_CLASSES
from expr.core.errors import ConfigError, as_choices, check_choice


class Fusion(StrEnum):
    """How the visual and audio streams meet (the CLI's --fusion choices)."""

    bica = "bica"       # both directions (the paper)
    v2a = "v2a"         # visual queries audio
    a2v = "a2v"         # audio queries visual
    concat = "concat"   # no attention: pooled streams concatenated


class Target(StrEnum):
    """Which label a training window learns (the CLI's --target choices)."""

    last = "last"          # its last frame (the reference)
    majority = "majority"  # the most frequent valid label
    # str.center is shadowed on members; harmless (members are never centred), and the
    # member name stays the CLI value
    center = "center"      # its centre frame  # pyright: ignore[reportAssignmentType]


class WindowRule(StrEnum):
    """Which windows a video yields (the CLI's --windows choices; see windows.py)."""

    reference = "reference"  # the authors' rule: fill <= 5 invalid frames, reset after, emit, drop stride
    grid = "grid"            # expr v0.1: ends every stride from frame 0, kept when the end frame is valid


class Preload(StrEnum):
    """Where the features live while training or scoring (the CLI's --preload choices)."""

    auto = "auto"  # gpu on a CUDA device when the bank takes at most half its free memory, else cpu
    cpu = "cpu"    # pinned host memory
    gpu = "gpu"    # the whole bank on the GPU
    none = "none"  # streamed from the cache in chunks (caches larger than memory)


class Compile(StrEnum):
    """The training step's fast path (the CLI's --compile choices); see train_heads/step.py."""

    auto = "auto"  # CUDA: torch.compile + CUDA graphs, fused AdamW; CPU: eager, foreach AdamW
    on = "on"      # torch.compile without CUDA graphs, on any device (on CPU compiling takes minutes)
    off = "off"    # the plain eager step with torch's default AdamW


class NoFace(StrEnum):
    """What per-frame inference shows for a no-face frame (the --no-face choices of evaluate/predict)."""

    fill = "fill"  # the last face frame's visual features, up to 5 no-face frames in a row (as training fills)
    raw = "raw"    # the cache's features (for a missing cropped-aligned jpg: a black image's)


class SmoothMode(StrEnum):
    """Filter of the per-frame probabilities (the --smooth-mode choices of evaluate/predict/ablate)."""

    median = "median"
    mean = "mean"


@dataclass
class HeadConfig:
    """Architecture of ExprHeadModel: the one place its defaults are declared."""

    visual_dim: int = 512       # cached visual feature size (CLIP ViT-B/32: 512)
    audio_dim: int = 768        # cached audio feature size (Wav2Vec2-Base: 768)
    channels: int = 512         # TCN channels = fusion width
    tcn_levels: int = 6         # temporal blocks, dilation 2**i
    tcn_kernel: int = 3         # causal convolution kernel
    heads: int = 8              # attention heads of each cross-attention
    num_classes: int = NUM_CLASSES  # ABAW EXPR classes
    text_dim: int = 512         # CLIP text embedding size (contrastive projection output)
    dropout_tcn: float = 0.4
    dropout_audio: float = 0.3
    dropout_attn: float = 0.2
    dropout_head: float = 0.5
    use_audio: bool = True      # False: visual stream only, classifier input = channels
    use_tcn: bool = True        # False: frame features go straight to fusion
    weight_norm: bool = False   # weight_norm on the TCN convs (Bai et al.; not the paper's authors)
    fusion: Fusion = Fusion.bica  # see Fusion

    def __post_init__(self) -> None:
        as_choices(self)
        check_choice("fusion", self.fusion, Fusion)
        if self.channels % self.heads:
            raise ConfigError(f"channels ({self.channels}) must be divisible by heads ({self.heads})")
        for name in ("visual_dim", "audio_dim", "channels", "tcn_levels", "tcn_kernel", "heads", "text_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: dict) -> "HeadConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# THE v0.1-defaults table: options that v0.1 run folders (config.json) and checkpoints (their
# head config) did not record, with the value those runs used: weight-normed, on grid windows.
# Readers merge it under what a file recorded (``RECORDED_SINCE_V01 | recorded``).
RECORDED_SINCE_V01 = {"weight_norm": True, "windows": WindowRule.grid}

# Field metadata of the TrainConfig options that do not change what is learned: where the run
# lies, how the data reaches the device, evaluation's batch size, the training step's fast path
# (--compile: compiled or eager, the same objective and updates; it rounds differently, see
# docs/train.md). --resume accepts other values of them (run_dir.py), and `expr ablate` reuses a
# cell trained with other values (evaluate/ablation.py).
NOT_LEARNED = {"learned": False}

# TrainConfig's architecture options with the same names as HeadConfig's fields; the two
# ablation switches are spelled as off-switches (--no-audio / --no-tcn read better).
ARCH_OPTIONS = ("channels", "tcn_levels", "tcn_kernel", "heads", "dropout_tcn", "dropout_audio",
                "dropout_attn", "dropout_head", "fusion", "weight_norm")


@dataclass
class TrainConfig:
    """Every option of `expr train` (field names = option names with '-' for '_')."""

    cache: Path                         # feature cache made by `expr extract` (.zarr or .h5)
    labels: Path                        # ABAW annotation dir (Train_Set/, Validation_Set/) or a flat dir
    out: Path = field(metadata=NOT_LEARNED)  # run directory: config.json, metrics.jsonl, *.safetensors
    window: int = 60                    # frames per window
    stride: int = 15                    # frames between training/validation windows
    target: Target = Target.last        # window label: last frame (reference), majority, center
    windows: WindowRule = WindowRule.reference  # which windows exist: reference (authors' rule) | grid (v0.1)
    train_list: Path | None = None      # text file of training video ids (one a line)
    val_list: Path | None = None        # text file of validation video ids
    epochs: int = 30
    lr: float = 1e-5
    weight_decay: float = 1e-2
    batch_size: int = 32                # windows per micro-batch
    accum: int = 2                      # micro-batches per optimiser step (32 x 2 = 64)
    grad_clip: float = 1.0              # max grad norm; 0 disables
    min_lr: float = 1e-6                # cosine annealing floor
    contrastive_weight: float = 0.1     # lambda of the text-guided InfoNCE; 0 disables it
    seed: int = 42
    channels: int = HeadConfig.channels
    tcn_levels: int = HeadConfig.tcn_levels
    tcn_kernel: int = HeadConfig.tcn_kernel
    heads: int = HeadConfig.heads
    dropout_tcn: float = HeadConfig.dropout_tcn
    dropout_audio: float = HeadConfig.dropout_audio
    dropout_attn: float = HeadConfig.dropout_attn
    dropout_head: float = HeadConfig.dropout_head
    no_audio: bool = not HeadConfig.use_audio   # ablation: visual stream only
    no_tcn: bool = not HeadConfig.use_tcn       # ablation: no temporal convolution
    fusion: Fusion = HeadConfig.fusion          # ablation: bica | v2a | a2v | concat
    weight_norm: bool = HeadConfig.weight_norm  # weight_norm on the TCN convs (off in the paper's code)
    # auto (gpu when it fits, else cpu), cpu (pinned RAM), gpu (whole cache on the GPU), none (stream)
    preload: Preload = field(default=Preload.auto, metadata=NOT_LEARNED)
    chunk_frames: int = field(default=1_000_000, metadata=NOT_LEARNED)     # --preload none: frames loaded at a time
    eval_batch_size: int = field(default=256, metadata=NOT_LEARNED)
    # the training step's fast path: auto | on | off (see Compile)
    compile: Compile = field(default=Compile.auto, metadata=NOT_LEARNED)
    device: str = field(default="auto", metadata=NOT_LEARNED)  # auto | cpu | cuda | cuda:N
    overwrite: bool = field(default=False, metadata=NOT_LEARNED)  # replace a non-empty run directory
    resume: bool = field(default=False, metadata=NOT_LEARNED)  # continue from last.safetensors in --out
    strict_labels: bool = False         # label files longer/shorter than the video (beyond a few frames): error

    def __post_init__(self) -> None:
        as_choices(self)

    def validate(self) -> None:
        """Raise ConfigError for options that cannot work; call once, at the edge."""
        check_choice("--target", self.target, Target)
        check_choice("--windows", self.windows, WindowRule)
        check_choice("--fusion", self.fusion, Fusion)
        check_choice("--preload", self.preload, Preload)
        check_choice("--compile", self.compile, Compile)
        checks = [
            (self.window >= 1, f"--window must be >= 1, got {self.window}"),
            (self.stride >= 1, f"--stride must be >= 1, got {self.stride}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1 and self.accum >= 1, "--batch-size and --accum must be >= 1"),
            (self.eval_batch_size >= 1, "--eval-batch-size must be >= 1"),
            (self.lr > 0 and self.min_lr >= 0, "--lr must be > 0 and --min-lr >= 0"),
            (self.contrastive_weight >= 0, "--contrastive-weight must be >= 0"),
            (self.grad_clip >= 0, "--grad-clip must be >= 0 (0 disables clipping)"),
            (self.chunk_frames >= self.window, "--chunk-frames must be >= --window"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name in ("dropout_tcn", "dropout_audio", "dropout_attn", "dropout_head"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        self.head_config(1, 1, 1)  # architecture checks (channels vs heads, ...)

    def head_config(self, visual_dim: int, audio_dim: int, text_dim: int) -> HeadConfig:
        arch = {name: getattr(self, name) for name in ARCH_OPTIONS}
        return HeadConfig(visual_dim=visual_dim, audio_dim=audio_dim, text_dim=text_dim,
                          use_audio=not self.no_audio, use_tcn=not self.no_tcn, **arch)

    @classmethod
    def not_learned(cls) -> frozenset[str]:
        """The options marked ``NOT_LEARNED``: a run with other values of them learns the same."""
        return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("learned") is False)

    def to_dict(self) -> dict:
        """The JSON of config.json: paths and choices as their strings."""
        return {k: (str(v) if isinstance(v, Path | Enum) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in (RECORDED_SINCE_V01 | data).items():
            if key not in fields:
                continue  # options of a newer expr: ignore rather than refuse an old run dir
            if key in ("cache", "labels", "out", "train_list", "val_list") and value is not None:
                value = Path(value)
            kwargs[key] = value
        return cls(**kwargs)
