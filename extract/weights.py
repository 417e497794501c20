"""Where a backbone's weights come from, and loading them.

One pure function, ``resolve_weights``, decides the source: a local file or directory beats
a hub tag, and ``none`` builds the same architecture with random weights (recorded as
``weights: null`` in the cache; ``backbone_record`` is that record).

Hub loading goes through open_clip's and transformers' own loaders (their caches). Offline,
those loaders retry for 20-50 s before failing; ``prepare_hub`` probes the network for 2 s
first and switches the hub client to offline mode, so a missing cache fails in seconds with
a ``WeightsNotFoundError`` that says how to get the weights.

Heavy imports (torch, open_clip, transformers) happen inside the build functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expr.cache_format.schema import BackboneRecord
from expr.core.errors import ConfigError, WeightsNotFoundError
from expr.extract.specs import SPECS_FILE, AudioSpec, BackboneSpec, VisualSpec

HUB_HOST = ("huggingface.co", 443)
RANDOM = "none"
_LOCAL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's weights come from: "local" path, "hub" tag, or "none" (random)."""

    kind: str
    value: str | None  # absolute path, tag, or None

    @property
    def where(self) -> str:
        """The path ("local") or tag ("hub"); a "none" source has neither."""
        if self.value is None:
            raise ValueError(f"a {self.kind!r} weight source has no path or tag")
        return self.value

    @property
    def recorded(self) -> str | None:
        """What the cache records in backbones.<stream>.weights (null = random)."""
        return self.value if self.kind != "none" else None



def resolve_weights(spec: BackboneSpec, weights_arg: str | None) -> WeightSource:
    """Decide where ``spec``'s weights come from: local file/dir > hub tag > none (random).

    Pure apart from checking whether ``weights_arg`` names an existing path.
    """
    arg = spec.default_weights if weights_arg in (None, "") else str(weights_arg)
    path = Path(arg).expanduser()
    if path.exists():
        return WeightSource("local", str(path.resolve()))
    if arg == RANDOM:
        return WeightSource("none", None)
    if arg in spec.tags:
        return WeightSource("hub", arg)
    valid = [*spec.tags, RANDOM, "a local file or directory"]
    if os.sep in arg or arg.endswith(_LOCAL_SUFFIXES):
        raise WeightsNotFoundError(
            f"{spec.name}: weights file {arg} does not exist; pass an existing path or one of: "
            + ", ".join(valid)
        )
    raise ConfigError(f"{spec.name}: unknown weights {arg!r}; valid: {', '.join(valid)}")


# -- hub connectivity -----------------------------------------------------------------------
def hub_reachable(timeout: float = 2.0) -> bool:
    """True if a TCP connection to the Hugging Face hub opens within ``timeout`` seconds.

    Runs in a thread because DNS resolution ignores socket timeouts.
    """
    result = []

    def probe() -> None:
        try:
            socket.create_connection(HUB_HOST, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _offline_requested() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def prepare_hub() -> bool:
    """Return True if the hub may be contacted; else switch the hub client to offline mode.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the constant is set as well as
    the environment (which worker processes inherit).
    """
    if not _offline_requested() and hub_reachable():
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants as hf_constants

    hf_constants.HF_HUB_OFFLINE = True
    return False


def _how_to_get(spec: VisualSpec | AudioSpec) -> str:
    if isinstance(spec, VisualSpec):
        repo = next(iter(spec.tags.values()), "").rstrip("/")
        return (f"run once with network access, or download open_clip_pytorch_model.bin from "
                f"https://huggingface.co/{repo} and pass --visual-weights PATH")
    return (f"run once with network access, or `hf download {spec.repo} --local-dir DIR` on a "
            f"machine with network access and pass --audio-weights DIR")


def _load_failed(spec: VisualSpec | AudioSpec, source: WeightSource, online: bool, exc: Exception) -> WeightsNotFoundError:
    detail = " ".join(str(exc).split())
    if source.kind == "local" and detail.startswith("Weights only load failed"):
        # torch.load refused a pickle that imports code; its message (cut, it ended mid-sentence)
        # suggests weights_only=False, which would run that code.
        found = re.search(r"GLOBAL (\S+)", detail)
        return WeightsNotFoundError(
            f"{spec.name}: refused to load {source.value}: it is a pickle that imports code "
            f"({found.group(1) if found else 'not only tensors'}) and could run it; pass a .safetensors "
            "checkpoint, or a plain state dict, from a source you trust"
        )
    if len(detail) > 300:
        detail = detail[:300].rsplit(" ", 1)[0] + " ..."
    if source.kind == "local":
        return WeightsNotFoundError(
            f"{spec.name}: could not load weights from {source.value}: {detail}; "
            "pass a checkpoint of this architecture"
        )
    if online:
        why = f"could not fetch the weights ({detail})"
    else:
        why = ("offline (HF_HUB_OFFLINE set, or huggingface.co unreachable) and the weights are "
               "not in the local cache")
    return WeightsNotFoundError(
        f"{spec.name} weights {source.value!r}: {why}; {_how_to_get(spec)}; or pass `none` for random weights"
    )


def build_all(builders: dict[str, Any]) -> dict[str, Any]:
    """Call every builder (stream -> no-argument function) and return their models.

    A WeightsNotFoundError of one does not stop the others: when several streams lack their
    weights (offline, nothing cached) the ONE error raised names all of them, so the user
    fixes both in one round trip instead of discovering the second after fixing the first.
    """
    built, missing = {}, []
    for stream, build in builders.items():
        try:
            built[stream] = build()
        except WeightsNotFoundError as exc:
            missing.append(exc)
    if len(missing) == 1:
        raise missing[0]
    if missing:
        raise WeightsNotFoundError(
            f"the weights of {len(missing)} backbones are missing: "
            + " AND ".join(f"({i}) {e}" for i, e in enumerate(missing, 1))
        ) from missing[0]
    return built


# -- visual (open_clip) ---------------------------------------------------------------------
@contextlib.contextmanager
def _seeded(source: WeightSource):
    """Random weights (``none``) come from a fixed seed: a rerun, a resumed run and every
    torchrun rank must compute the same features, or one cache would mix random models."""
    if source.kind != "none":
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@contextlib.contextmanager
def _initialised(source: WeightSource):
    """How a model's weights start: from a fixed seed for random weights (``none``); not at all
    when a checkpoint is loaded over them (open_clip loads it strictly: a weight it lacks fails).

    Why: open_clip initialises every weight at random, then loads the checkpoint over them:
    0.6 s of the 1.1 s a ViT-B/32 took to build from a local file on the 2-core machine, on the
    path to the first batch. transformers' own ``no_init_weights`` (its from_pretrained runs
    Wav2Vec2 under it) skips that; with a transformers without it, the build is only slower."""
    if source.kind == "none":
        with _seeded(source):
            yield
        return
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        yield
        return
    with no_init_weights():
        yield


def _register_arch(spec: VisualSpec) -> None:
    import open_clip

    if spec.arch_file and spec.arch not in open_clip.list_models():
        open_clip.add_model_config(SPECS_FILE.with_name(spec.arch_file))


def checkpoint_kind(path: Path) -> str | None:
    """"safetensors", "torch zip", "torch pickle" from the first bytes of ``path``, else None.

    Loaders fed anything else fail with whatever their parser trips on: a text file read as a
    pickle gave "KeyError: 101", or "a pickle that imports code" when it starts with 'c' (the
    GLOBAL opcode), and /etc/passwd "list index out of range".
    """
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "torch zip"  # torch.save since 1.6 (open_clip's .bin files)
    if len(head) == 2 + 7 and head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "torch pickle"  # legacy torch.save: a pickle, protocol 2-5
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"  # 8-byte header length, then the JSON header
    return None


def _describe(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "an empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # (a multi-byte character cut at byte 512 is rare enough)
        return "a binary file of another format"
    printable = all(c.isprintable() or c in "\t\r\n" for c in text)
    return "a text file" if printable else "a binary file of another format"


def _local_checkpoint(path: Path, spec: BackboneSpec) -> str:
    if path.is_file():
        try:
            kind = checkpoint_kind(path)
            what = _describe(path) if kind is None else ""
        except OSError as exc:
            raise WeightsNotFoundError(f"{spec.name}: cannot read the weights file {path} ({exc.strerror})") from exc
        if kind is None:
            raise WeightsNotFoundError(
                f"{spec.name}: {path} is not a checkpoint ({what}, neither .safetensors nor a torch.save "
                "file); pass the checkpoint file of this architecture"
            )
        return str(path)
    for pattern in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin",
                    *(f"*{s}" for s in _LOCAL_SUFFIXES)):
        found = sorted(path.glob(pattern))
        if found:
            return _local_checkpoint(found[0], spec)
    raise WeightsNotFoundError(
        f"{spec.name}: no checkpoint (*.safetensors, *.bin, *.pt) in {path}; pass the file itself"
    )


def build_clip(spec: VisualSpec, source: WeightSource):
    """The open_clip model of ``spec`` on CPU in eval mode, weights from ``source``."""
    import open_clip

    _register_arch(spec)
    pretrained = None
    online = True
    if source.kind == "hub":
        online = prepare_hub()
        pretrained = source.value
    elif source.kind == "local":
        pretrained = _local_checkpoint(Path(source.where), spec)
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)  # open_clip logs to the root logger what we raise below
    try:
        # spec.arch carries QuickGELU: OpenAI weights in a plain GELU model load without
        # complaint and give wrong features.
        with _initialised(source):
            model = open_clip.create_model(spec.arch, pretrained=pretrained, device="cpu")
    except Exception as exc:  # open_clip wraps hub and file errors in RuntimeError and others
        raise _load_failed(spec, source, online, exc) from exc
    finally:
        logging.disable(previous)
    return model.eval().requires_grad_(False)


# -- audio (transformers) -------------------------------------------------------------------
def build_wav2vec2(spec: AudioSpec, source: WeightSource):
    """The Wav2Vec2Model of ``spec`` on CPU in eval mode, weights from ``source``."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    from transformers.utils import logging as hf_logging

    if source.kind == "none":
        with _seeded(source):
            return Wav2Vec2Model(Wav2Vec2Config(**spec.config)).eval().requires_grad_(False)
    if source.kind == "local" and not Path(source.where).is_dir():
        raise WeightsNotFoundError(
            f"{spec.name}: --audio-weights {source.value} is a file; pass the folder that holds "
            "config.json and the weights (as saved by save_pretrained or downloaded from the hub)"
        )
    online = prepare_hub() if source.kind == "hub" else True
    where = spec.tags[source.where] if source.kind == "hub" else source.where
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: masked_spec_embed" notes
    try:
        model = Wav2Vec2Model.from_pretrained(where)
    except Exception as exc:  # OSError offline, ValueError/RuntimeError on a bad folder
        raise _load_failed(spec, source, online, exc) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval().requires_grad_(False)


def backbone_record(spec: VisualSpec | AudioSpec, source: WeightSource, resize: str | None = None) -> BackboneRecord:
    """The cache's record ``backbones.<stream>`` for this backbone; ``resize``: how frames reach
    the visual input size."""
    if isinstance(spec, VisualSpec):
        return BackboneRecord(name=spec.name, weights=source.recorded, dim=spec.dim, image_size=spec.image_size,
                              mean=tuple(spec.mean), std=tuple(spec.std), resize=resize)
    return BackboneRecord(name=spec.name, weights=source.recorded, dim=spec.dim, sample_rate=spec.sample_rate,
                          hop=spec.hop, receptive_field=spec.receptive_field, normalize=spec.normalize)
