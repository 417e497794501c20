"""Where a report's numbers come from: random-weights banners and the provenance block.

A score from randomly initialised backbones (``--visual-weights none``, or the demo without
the pretrained weights) looks like any other score. Every report, and evaluate's and
predict's terminal output, says so in a banner (``random_weights_banner``). The provenance
block (``run_provenance``) lists what a reader needs to trust or redo a number: date, expr
version and commit, device, training time, cache fingerprint, the backbones and the window
rule. Plain dicts in (config.json, eval_<split>.json, metrics.jsonl records), plain data out.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from expr import now_utc

STREAMS = ("visual", "audio")
# Shown by the demo's report beside the random-weights banner (and in place of it with
# pretrained weights): six clips of one actor, scored on the held-out end of the same clips.
DEMO_CAVEAT = ("Demo, not a benchmark: six CREMA-D clips of one actor, trained and scored on parts of the same "
               "clips. It shows the pipeline working end to end; the scores say nothing about the method.")
NOT_RECORDED = "not recorded"


def random_streams(backbones: Mapping | None) -> list[str]:
    """The streams whose features came from random (or no real) backbone weights, as
    ``"visual (clip-vit-b-32)"``; weights null in the cache's record means random."""
    out = []
    for stream in STREAMS:
        spec = (backbones or {}).get(stream)
        if isinstance(spec, Mapping) and spec.get("weights") is None:
            out.append(f"{stream} ({spec.get('name', '?')})")
    return out


def random_weights_banner(backbones: Mapping | None) -> str | None:
    """One sentence for a banner when any backbone had random weights; None otherwise."""
    streams = random_streams(backbones)
    if not streams:
        return None
    return (f"RANDOM BACKBONE WEIGHTS: the {' and '.join(streams)} features come from randomly initialised "
            "backbones (weights: none), so these scores say nothing about the method. Not a benchmark: "
            "extract with pretrained weights for real numbers.")


def backbone_text(spec: Mapping | None, face_crop: str | None = None) -> str:
    """``clip-vit-b-32 · weights RANDOM (none) · resize bicubic · face crop haar · 512-d``;
    ``face_crop``: what the evaluated videos recorded, when the backbone record has none."""
    if not isinstance(spec, Mapping):
        return NOT_RECORDED
    weights = spec.get("weights")
    parts = [str(spec.get("name", "?")), "weights RANDOM (none)" if weights is None else f"weights {weights}"]
    if "resize" in spec:
        parts.append(f"resize {spec['resize']}")
    if "face_crop" in spec or face_crop is not None:
        parts.append(f"face crop {spec.get('face_crop', face_crop)}")
    if "dim" in spec:
        parts.append(f"{spec['dim']}-d")
    extra = {k: v for k, v in spec.items() if k not in ("name", "weights", "resize", "face_crop", "dim")}
    if extra:
        parts.append(json.dumps(extra, sort_keys=True, default=str))
    return " · ".join(parts)


def window_rule_text(train: Mapping | None) -> str:
    """``reference rule · window 60 · stride 15 · target last`` from a run's train config."""
    if not train or "window" not in train:
        return NOT_RECORDED
    return (f"{train.get('windows', 'grid')} rule · window {train['window']} · stride {train.get('stride', '?')}"
            f" · target {train.get('target', '?')}")


def training_time(records: Sequence[Mapping]) -> str:
    """``12.3 s over 4 epochs`` from metrics.jsonl records (their ``seconds``)."""
    seconds = [float(r["seconds"]) for r in records if isinstance(r.get("seconds"), (int, float))]
    if not seconds:
        return NOT_RECORDED
    return f"{sum(seconds):.1f} s over {len(seconds)} epoch{'s' if len(seconds) != 1 else ''}"


def run_provenance(config: Mapping, evaluation: Mapping | None = None,
                   records: Sequence[Mapping] = ()) -> dict[str, str]:
    """The provenance block of one run: label -> text, in display order."""
    from expr import version_text

    evaluation = evaluation or {}
    cache = config.get("cache") or {}
    trained = config.get("provenance") or {}   # what `expr train` recorded about itself
    backbones = cache.get("backbones") or evaluation.get("backbones") or {}
    out = {
        "report written": now_utc(),
        "written by": version_text(),
    }
    if evaluation.get("evaluated_at"):
        out["evaluated"] = f"{evaluation['evaluated_at']} with {evaluation.get('expr', 'expr ?')}"
    if trained.get("started"):
        out["trained"] = f"{trained['started']} with {trained.get('expr', 'expr ?')}"
    out["device"] = "; ".join(f"{what} on {dev}" for what, dev in (("trained", trained.get("device")),
                                                                   ("evaluated", evaluation.get("device"))) if dev
                              ) or NOT_RECORDED
    out["training time"] = training_time(records)
    out["cache"] = f"{cache.get('path', evaluation.get('cache', '?'))} (fingerprint {cache.get('fingerprint', '?')})" \
        if cache or evaluation.get("cache") else NOT_RECORDED
    crops = [c for c in evaluation.get("face_crop") or [] if c != "None"]
    face_crop = (" + ".join(crops) + (" (MIXED)" if len(crops) > 1 else "")) if crops else (
        "not recorded" if "face_crop" in evaluation else None)
    out["visual backbone"] = backbone_text(backbones.get("visual"), face_crop)
    out["audio backbone"] = backbone_text(backbones.get("audio"))
    out["window rule"] = window_rule_text(config.get("train"))
    if "no_face" in evaluation:
        out["frames without a face"] = _compact(evaluation["no_face"])
    return out


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (Mapping, list)) else str(value)
