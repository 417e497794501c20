"""CLIP's geometry as one batched torch op on the encoder's device, from native frames.

Why: per frame, a decode worker spends about as much CPU on the RGB conversion and the
resize as on decoding (issue 18: 360p decord RGB 1,072 us + ``clip_geometry`` 363 us, against
PyAV's decode to yuv420p 549 us). With ``--geometry device`` the workers only decode and send
native frames (``NativeLayout``); this module turns a batch of them into what the worker path
gives: (N, S, S, 3) uint8, shortest side to S (bicubic, antialiased) and centre crop, so the
encoder, its batches and its mean/std normalisation are the same on both paths.

The colour conversion follows the stream's metadata: BT.709 when tagged so, else BT.601;
limited (MPEG) range unless the stream says full (JPEG). Chroma is upsampled bilinearly with
centred siting. Measured against the worker path (decord/swscale RGB + ``clip_geometry``):
mean absolute difference <= 1.0 on the 0-255 scale (tests/test_geometry_device.py), not
bit-identical: a cache records which path made it (``options.geometry``) and never mixes them.

``--frames`` jpgs come native too (``frames_dir.py``: ``NativeLayout.square``) and get their own
rule here, a plain ``--jpg-resize`` resize to S x S without crop (``square_resize``), equal to
the workers' uint8 resize on 112x112 jpgs (tests/test_jpg_device.py).

Everything here is plain torch on whatever device the tensors are on, so it is tested on CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from expr.extract.config import Geometry

MAD_LIMIT = 1.0  # the start-up self-check's tolerance, mean absolute difference on 0-255
# Kr, Kb of the two matrices (ITU-R BT.601 and BT.709)
_MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
# swscale's integer yuv->rgb (what decord, i.e. the worker path, uses) comes out 1-2 levels
# below the exact formula (measured on H.264 640x360: +1.10 / +1.66 / +1.50 mean for R / G / B,
# MAD 1.40 at full size); subtracting 1.0 before the resize brings the device path to MAD
# ~0.4 of the worker path's pixels instead of ~1.2.
_SWSCALE_BIAS = 1.0


@dataclass(frozen=True)
class NativeLayout:
    """How a batch of native frames lies in memory (one per ``FrameBatch``, travels with it).

    ``fmt`` "yuv420p": each frame is PyAV's ``to_ndarray(format="yuv420p")``, (H * 3 / 2, W):
    the Y plane, then U and V at half width and height; "rgb24": (H, W, 3) from decord.
    """

    fmt: str  # "yuv420p" | "rgb24"
    height: int
    width: int
    matrix: str = "bt601"  # "bt601" | "bt709" (yuv420p only)
    full_range: bool = False  # JPEG (0-255) range instead of MPEG (16-235 / 16-240)
    # None: CLIP's geometry (shortest side, bicubic, centre crop). "bilinear" | "bicubic": the
    # --frames jpgs' own rule (frames_dir.resize_square): a plain antialiased resize to S x S
    # with that mode, no crop (an ABAW face is square already)
    square: str | None = None

    def frame_shape(self) -> tuple[int, ...]:
        if self.fmt == "yuv420p":
            return (self.height * 3 // 2, self.width)
        return (self.height, self.width, 3)


def colour_of(frame) -> tuple[str, bool]:
    """(matrix, full range) of a PyAV VideoFrame from its tags: BT.709 only when tagged so."""
    space = int(getattr(frame, "colorspace", 2) or 2)
    rng = int(getattr(frame, "color_range", 0) or 0)
    full = rng == 2 or str(getattr(frame.format, "name", "")).startswith("yuvj")
    return ("bt709" if space == 1 else "bt601"), full


def yuv420_to_rgb(planes, layout: NativeLayout):
    """(N, H*3/2, W) uint8 tensor of yuv420p frames -> (N, 3, H, W) float RGB on 0-255 (clamped)."""
    import torch
    import torch.nn.functional as F

    n, h, w = planes.shape[0], layout.height, layout.width
    flat = planes.reshape(n, -1)
    y = flat[:, : h * w].reshape(n, 1, h, w).float()
    q = (h // 2) * (w // 2)
    uv = torch.stack([flat[:, h * w: h * w + q], flat[:, h * w + q: h * w + 2 * q]], 1)
    uv = uv.reshape(n, 2, h // 2, w // 2).float()
    uv = uv.repeat_interleave(2, 2).repeat_interleave(2, 3)  # (N, 2, H, W)
    kr, kb = _MATRICES[layout.matrix]
    kg = 1.0 - kr - kb
    if layout.full_range:
        luma, cu, cv = y, uv[:, :1] - 128.0, uv[:, 1:] - 128.0
    else:
        luma, cu, cv = (y - 16.0) * (255.0 / 219.0), (uv[:, :1] - 128.0) * (255.0 / 224.0), (uv[:, 1:] - 128.0) * (255.0 / 224.0)
    r = luma + 2.0 * (1.0 - kr) * cv
    b = luma + 2.0 * (1.0 - kb) * cu
    g = luma - (2.0 * kb * (1.0 - kb) / kg) * cu - (2.0 * kr * (1.0 - kr) / kg) * cv
    return (torch.cat([r, g, b], 1) - _SWSCALE_BIAS).clamp_(0.0, 255.0)  # (N, 3, H, W)


def crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left): shortest side to S, centre crop, exactly as ``clip_geometry``."""
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def device_geometry(native, layout: NativeLayout, size: int, out=None):
    """Native frames (a uint8 tensor, on any device) -> (N, S, S, 3) uint8 tensor on that device
    (``out``, an (N, S, S, 3) uint8 tensor there, e.g. a slice of the encoder's input buffer).

    One batched op: colour conversion (yuv420p), antialiased bicubic resize of the shortest
    side to S, centre crop, rounding to uint8 (what the worker path hands the encoder). With
    ``layout.square`` (jpgs): antialiased resize to S x S in that mode, no crop.
    """
    import torch
    import torch.nn.functional as F

    if layout.fmt == "yuv420p":
        x = yuv420_to_rgb(native, layout)
    elif layout.fmt == "rgb24":
        x = native.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    else:
        raise ValueError(f"unknown native frame format {layout.fmt!r}")
    if layout.square is not None:  # the jpg rule: S x S, no crop (whole levels already)
        x = square_resize(x, size, layout.square)
    else:
        new_h, new_w, top, left = crop_box(layout.height, layout.width, size)
        if (new_h, new_w) != (layout.height, layout.width):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = x[:, :, top: top + size, left: left + size].round_().clamp_(0.0, 255.0)
    if out is None:
        return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    if tuple(out.shape) != (len(x), size, size, 3) or out.dtype != torch.uint8:
        raise ValueError(f"geometry output {tuple(out.shape)} {out.dtype}, expected ({len(x)}, {size}, {size}, 3) uint8")
    return out.copy_(x.permute(0, 2, 3, 1))  # the same cast as .to(uint8)


def to_device(pixels: np.ndarray, device, stream=None):
    """A message's native frames (a host array: a decode pool slot) -> (uint8 tensor on
    ``device``, fence). The fence is what to wait on (``query()`` / ``synchronize()``) before
    the host memory may be written again; None: at once.

    From page-locked memory on CUDA (the registered slots) it is ONE asynchronous copy on
    ``stream`` (the geometry's), and the fence a CUDA event recorded after it there: the
    caller goes on while the DMA runs. From pageable memory the copy is synchronous, as
    before (page-locking failed, or the pool copied the frames out). On CPU the tensor IS the
    host memory (no copy; what reads it runs before the call that follows returns)."""
    import torch

    host = torch.from_numpy(pixels)
    if torch.device(device).type != "cuda" or not host.is_pinned():
        return host.to(device), None
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        x = host.to(device, non_blocking=True)
        fence = torch.cuda.Event()
        fence.record(torch.cuda.current_stream(device))  # ``stream``: done once the copy has read the slot
    return x, fence


def square_resize(x, size: int, mode: str):
    """(N, 3, h, w) float on 0-255 -> (N, 3, S, S) float of whole levels: the jpgs' rule
    (``frames_dir.resize_square``), computed as the worker path's uint8 kernel (and PIL) do.

    Width first, then height, each pass rounded half up and clamped to 0-255, as they store the
    intermediate. Measured against ``resize_square`` on 112x112 noise: one float pass rounded
    half-to-even was up to 14-22 levels off with bicubic (its overshoot, clamped only at the
    end; MAD 0.12-0.29), two passes half-to-even 2 (MAD 0.002-0.25), two passes half up 0 for
    bilinear and 1 for bicubic (MAD 0.0000 / 0.0002; other sizes MAD <= 0.015, max 2). An
    S x S jpg is left as it is, as there. tests/test_jpg_device.py."""
    import torch.nn.functional as F

    h, w = x.shape[2:]
    if w != size:
        x = F.interpolate(x, size=(h, size), mode=mode, antialias=True, align_corners=False)
        x = x.add_(0.5).floor_().clamp_(0.0, 255.0)
    if h != size:
        x = F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)
        x = x.add_(0.5).floor_().clamp_(0.0, 255.0)
    return x


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 arrays on the 0-255 scale."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def joined_message(exc: BaseException) -> str:
    """An exception's whole message joined onto one line, at most 200 characters (its type when it has
    none); ``probe.short_error`` keeps only the first line of a decoder's message, prefixes stripped."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def self_check_problem(check, versus: str, on_import_error: str | None = None) -> str | None:
    """What is wrong with a start-up self-check's fast path, in words, or None when ``check()``
    (its MAD on 0-255 against ``versus``, the plain path) is within ``MAD_LIMIT``.

    Any exception counts as a failure: whatever breaks, the plain path still works.
    ``on_import_error``: the words for an ImportError (an optional package that is missing),
    with ``{error}`` where its message goes."""
    try:
        diff = float(check())
    except ImportError as exc:
        if on_import_error is None:
            return f"failed (ImportError: {joined_message(exc)})"
        return on_import_error.format(error=joined_message(exc))
    except Exception as exc:  # noqa: BLE001
        return f"failed ({type(exc).__name__}: {joined_message(exc)})"
    return None if diff <= MAD_LIMIT else f"differs from {versus} by MAD {diff:.2f} > {MAD_LIMIT:g}"


def choose_geometry(requested: str, device_type: str, recorded: str | None, eligible: bool,
                    check) -> tuple[str, str | None]:
    """The geometry path of a run, and at most ONE ``note:`` line for the user.

    ``recorded``: what an existing cache says ("worker" for a cache made before the record
    existed), None for a new cache. ``eligible``: whether any frames could take the device
    path (not --face-crop haar). ``check()``: the start-up self-check,
    returns the MAD of device vs worker pixels on the same real frames, or raises.

    - worker: always the worker path.
    - device: the device path; a failing check is an error (the user asked for it).
    - auto: the cache's own path if it has one; else the device path on CUDA, behind the
      check (an exception or a MAD above ``MAD_LIMIT`` falls back with a note); else worker.
    """
    from expr.core.errors import ConfigError, check_choice

    check_choice("--geometry", requested, Geometry)  # callers outside ExtractConfig.validate too
    if requested == "worker" or not eligible:
        return "worker", None
    if requested == "auto" and (recorded == "worker" or (recorded is None and device_type != "cuda")):
        return "worker", None
    problem = self_check_problem(check, "the worker path")
    if problem is None:
        return "device", None
    if requested == "device":
        raise ConfigError(f"--geometry device: the start-up self-check {problem}; use --geometry worker")
    return "worker", (f"note: geometry on the {device_type} device {problem}; the decode workers do it "
                      "instead (slower, same features)")


def page_lock(buffer, cudart=None):
    """Register ``buffer`` (the decode pool's shared-memory block) as page-locked for CUDA, so
    that frames go to the device by DMA without a staging copy. Returns (unlock, note): an
    ``unlock()`` to call before the block is unmapped, or None and one line saying why not
    (the frames then go from pageable memory: slower, same features). ``cudart``: test stand-in
    for ``torch.cuda.cudart()``."""
    try:
        if cudart is None:
            import torch

            cudart = torch.cuda.cudart()
        assert cudart is not None
        view = np.frombuffer(buffer, np.uint8)
        ptr, size = view.ctypes.data, view.nbytes
        del view  # no export of the block may outlive this call (it must stay closable)
        code = int(cudart.cudaHostRegister(ptr, size, 1))  # 1: cudaHostRegisterPortable
        if code != 0:
            raise RuntimeError(f"cudaHostRegister returned error {code}")
    except Exception as exc:  # noqa: BLE001 - pinning is an optimisation, never a failure
        return None, (f"the frame slots could not be page-locked ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:200]}); frames go to the device from pageable memory "
                      "(slower, same features)")

    def unlock() -> None:
        try:
            cudart.cudaHostUnregister(ptr)  # pyright: ignore[reportOptionalMemberAccess] - set above
        except Exception:  # noqa: BLE001 - the block is unmapped next either way
            pass

    return unlock, None
