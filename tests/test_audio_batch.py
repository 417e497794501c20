"""Wav2Vec2 batched across tracks (issue 18 item 3) equals one forward per piece."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expr.extract import specs as S, weights as W
from expr.extract.audio_batch import conv_steps, forward_padded, plan_batches
from expr.extract.audio_features import AudioEncoder, decide_batching

TINY = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
            conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
# What fp32 CPU gives (measured ~1e-6: reduction order only); naive zero padding is off by >1e-2.
ATOL = 1e-4


def _model(norm: str):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    # "layer" models (large-lv60 style) come with the stable-layer-norm encoder
    config = Wav2Vec2Config(**TINY, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")  # pyright: ignore[reportArgumentType] - TINY's values are ints and lists
    return Wav2Vec2Model(config).eval().requires_grad_(False)


def _tracks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = [399,  # shorter than one step: None
               400,  # exactly one step
               16080,  # exactly one chunk of 50 steps (chunk_seconds=1.0)
               7000, 52000, 16081, 33333, 2500]  # several chunks, and short tracks between them
    return [(rng.standard_normal(n) * 0.1 + np.sin(np.arange(n) / (7 + i))).astype(np.float32)
            for i, n in enumerate(lengths)]


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_encode_many_equals_one_track_at_a_time(norm):
    spec = S.get_spec("test-tiny-wav2vec2", "audio")
    enc = AudioEncoder(_model(norm), spec, chunk_seconds=1.0, context_seconds=0.5, batch_seconds=3.0, batching="on")
    tracks = _tracks()
    assert enc.n_steps(16080) == enc.chunk_steps == 50  # the "exactly one chunk" track is one
    want = [enc(t) for t in tracks]
    got = enc.encode_many(tracks)
    assert got[0] is None and want[0] is None
    worst = 0.0
    for g, w, t in zip(got[1:], want[1:], tracks[1:]):
        assert g is not None and w is not None
        assert g.shape == w.shape == ((len(t) - 400) // 320 + 1, 24) and g.dtype == np.float32
        worst = max(worst, float(np.abs(g - w).max()))
    assert worst < ATOL, worst


def test_naive_zero_padding_would_be_wrong():
    """Why the first layer's GroupNorm is masked: padding shifts its per-channel statistics."""
    model = _model("group")
    short, long = (torch.from_numpy(t) for t in _tracks()[3:5])
    n = conv_steps(model, len(short))
    with torch.inference_mode():
        alone = model(short[None]).last_hidden_state[0]
        padded = torch.zeros(2, len(long))
        padded[0, : len(short)], padded[1] = short, long
        naive = model(padded).last_hidden_state[0, :n]
        ours = forward_padded(model, [short, long])[0]
    assert float((naive - alone).abs().max()) > 1e-2
    assert float((ours - alone).abs().max()) < ATOL


def test_a_track_passed_twice_is_encoded_once(monkeypatch):
    from expr.extract import audio_batch

    spec = S.get_spec("test-tiny-wav2vec2", "audio")
    enc = AudioEncoder(_model("group"), spec, chunk_seconds=1.0, context_seconds=0.5, batching="on")
    track = _tracks()[3]
    seen = []
    real = audio_batch.encode_pieces

    def counting(model, pieces, *args, **kwargs):
        seen.append(len(pieces))
        return real(model, pieces, *args, **kwargs)

    monkeypatch.setattr(audio_batch, "encode_pieces", counting)
    a, b = enc.encode_many([track, track[:]])  # same memory, same length (a view)
    assert seen == [1] and a is not None and a is b


def test_auto_batching_is_off_on_cpu_so_features_stay_bit_identical(monkeypatch):
    """A resumed run's cache equals a clean run's bit for bit on CPU: a track's features must
    not depend on which tracks share its batch."""
    from expr.extract import audio_batch

    spec = S.get_spec("test-tiny-wav2vec2", "audio")
    enc = AudioEncoder(_model("group"), spec, chunk_seconds=1.0, context_seconds=0.5)
    tracks = _tracks()[2:5]
    want = [enc(t) for t in tracks]
    monkeypatch.setattr(audio_batch, "encode_pieces", lambda *a, **k: pytest.fail("batched on CPU"))
    got = enc.encode_many(tracks)
    assert enc.batching == "off" and enc.note is None
    assert all(g is not None and w is not None and np.array_equal(g, w) for g, w in zip(got, want))


def test_the_start_up_check_passes_on_a_real_model_and_catches_a_padding_leak(monkeypatch):
    from expr.extract import audio_batch

    spec = S.get_spec("test-tiny-wav2vec2", "audio")
    enc = AudioEncoder(_model("group"), spec)
    assert enc.check_batching() is None
    # inject the bug the masking prevents: the first layer's norm over the padding too
    monkeypatch.setattr(audio_batch, "_group_norm_conv", lambda layer, x, valid: layer(x))
    assert "differ from one track at a time" in (enc.check_batching() or "")
    monkeypatch.setattr(audio_batch, "forward_padded", lambda *a: 1 / 0)
    assert "ZeroDivisionError" in (enc.check_batching() or "")


def test_auto_batching_decision():
    assert decide_batching("cpu", lambda: pytest.fail("no check on CPU")) == ("off", None)
    assert decide_batching("cuda", lambda: None) == ("on", None)
    mode, note = decide_batching("cuda", lambda: "RuntimeError: boom")
    assert mode == "off" and note is not None and "RuntimeError: boom" in note and "one at a time" in note


def test_batches_are_longest_first_within_the_budget():
    assert plan_batches([5, 10, 3, 10, 1], budget=20) == [[1, 3], [0, 2, 4]]
    assert plan_batches([50, 4], budget=20) == [[0], [1]]  # too long for the budget: alone
    assert plan_batches([], budget=20) == []


@pytest.mark.slow  # the full-size Wav2Vec2-Base (95 M parameters), random weights
def test_full_size_wav2vec2_base_batched_equals_one_at_a_time():
    spec = S.get_spec("facebook/wav2vec2-base", "audio")
    model = W.build_wav2vec2(spec, W.WeightSource("none", None))
    assert model.config.feat_extract_norm == "group"
    enc = AudioEncoder(model, spec, chunk_seconds=2.0, context_seconds=0.5, batching="on")
    rng = np.random.default_rng(1)
    tracks = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 8000, 52000, 30000)]
    got, want = enc.encode_many(tracks), [enc(t) for t in tracks]
    assert all(g is not None and w is not None and g.shape == w.shape for g, w in zip(got, want))
    worst = max(float(np.abs(g - w).max()) for g, w in zip(got, want) if g is not None and w is not None)
    assert worst < 1e-3, worst  # measured 3.9e-6
