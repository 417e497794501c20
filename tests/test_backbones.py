"""Backbone specs, weight resolution, offline failure, and the CLIP / Wav2Vec2 encoders.

Everything runs on the tiny random-init specs (same open_clip / transformers classes);
nothing touches a model hub.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from expr.core.errors import ConfigError, WeightsNotFoundError
from expr.extract import specs as S, visual_features as V, weights as W
from expr.core.abaw import audio_steps as output_steps
from expr.extract.audio_features import AudioEncoder, normalise_waveform, plan_chunks


@pytest.fixture(scope="module")
def tiny_clip():
    spec = S.get_spec("test-tiny-clip", "visual")
    torch.manual_seed(0)
    return spec, W.build_clip(spec, W.resolve_weights(spec, "none"))


@pytest.fixture(scope="module")
def tiny_w2v():
    spec = S.get_spec("test-tiny-wav2vec2", "audio")
    torch.manual_seed(0)
    return spec, W.build_wav2vec2(spec, W.resolve_weights(spec, "none"))


def tone(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.2 * np.sin(t))) + 0.05 * noise).astype(np.float32)


# -- the spec table -----------------------------------------------------------------------
def test_spec_table_has_the_named_backbones_with_their_geometry():
    specs = S.load_specs()
    for name in ("ViT-B-32", "test-tiny-clip"):
        s = specs[name]
        assert isinstance(s, S.VisualSpec)  # the spec's class follows its stream
        assert s.stream == "visual" and s.library == "open_clip"
        assert len(s.mean) == len(s.std) == 3 and s.image_size > 0
    assert S.get_spec("ViT-B-32", "visual").dim == 512 and S.get_spec("ViT-B-32", "visual").image_size == 224
    for name in ("facebook/wav2vec2-base", "facebook/wav2vec2-base-960h", "test-tiny-wav2vec2"):
        s = specs[name]
        assert isinstance(s, S.AudioSpec)
        assert (s.stream, s.sample_rate, s.hop, s.receptive_field) == ("audio", 16000, 320, 400)
    assert specs["facebook/wav2vec2-base"].dim == 768
    assert S.get_spec("facebook/wav2vec2-base-960h", "audio").repo == "facebook/wav2vec2-base-960h"


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="ViT-B-32") as err:
        S.get_spec("ViT-L-14", "visual")
    assert "test-tiny-clip" in str(err.value)
    with pytest.raises(ConfigError, match="facebook/wav2vec2-base"):
        S.get_spec("ViT-B-32", "audio")  # a visual name is not an audio model


def test_openai_weights_get_quickgelu():
    """OpenAI's weights in a plain-GELU ViT-B-32 give wrong features silently."""
    import open_clip

    spec = S.get_spec("ViT-B-32", "visual")
    cfg = open_clip.get_model_config(spec.arch)
    assert cfg is not None and cfg["quick_gelu"] is True and cfg["vision_cfg"]["patch_size"] == 32


# -- resolve_weights ----------------------------------------------------------------------
def test_resolve_weights_order_and_defaults(tmp_path, monkeypatch):
    vit = S.get_spec("ViT-B-32", "visual")
    w2v = S.get_spec("facebook/wav2vec2-base", "audio")
    assert W.resolve_weights(vit, None) == W.WeightSource("hub", "openai")
    assert W.resolve_weights(w2v, None) == W.WeightSource("hub", "hub")
    none = W.resolve_weights(vit, "none")
    assert none.kind == "none" and none.recorded is None
    ckpt = tmp_path / "clip.bin"
    ckpt.write_bytes(b"x")
    assert W.resolve_weights(vit, str(ckpt)) == W.WeightSource("local", str(ckpt.resolve()))
    # a local path wins over a tag of the same name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").mkdir()
    assert W.resolve_weights(vit, "openai").kind == "local"


def test_resolve_weights_errors_list_valid_choices(tmp_path):
    vit = S.get_spec("ViT-B-32", "visual")
    with pytest.raises(ConfigError) as err:
        W.resolve_weights(vit, "laion9000")
    assert "openai" in str(err.value) and "none" in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        W.resolve_weights(vit, str(tmp_path / "missing.pt"))


# -- offline behaviour --------------------------------------------------------------------
@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A hub client that believes it is online, with an empty cache, and an unreachable hub."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(W, "hub_reachable", lambda timeout=2.0: False)
    return hf_constants


@pytest.mark.parametrize("name,stream,flag", [
    ("ViT-B-32", "visual", "--visual-weights"),
    ("facebook/wav2vec2-base", "audio", "--audio-weights"),
])
def test_offline_without_cached_weights_fails_fast_and_clearly(empty_hub, name, stream, flag):
    spec = S.get_spec(name, stream)
    build = W.build_clip if stream == "visual" else W.build_wav2vec2
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as err:
        build(spec, W.resolve_weights(spec, None))
    assert time.monotonic() - start < 15
    msg = str(err.value)
    assert "offline" in msg and flag in msg and "none" in msg and name in msg
    assert empty_hub.HF_HUB_OFFLINE is True  # the probe switched the client to offline mode


def test_user_offline_setting_skips_the_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def probe(timeout=2.0):
        raise AssertionError("probed the network although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(W, "hub_reachable", probe)
    assert W.prepare_hub() is False


# -- loading local weights ----------------------------------------------------------------
def test_clip_local_file_and_dir_load_the_same_weights(tiny_clip, tmp_path):
    spec, model = tiny_clip
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    folder = tmp_path / "snapshot"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    x = torch.rand(2, 3, spec.image_size, spec.image_size)
    with torch.inference_mode():
        want = model.encode_image(x)
        for arg in (tmp_path / "tiny.pt", folder):
            src = W.resolve_weights(spec, str(arg))
            assert src.recorded == str(arg.resolve())
            clip: Any = W.build_clip(spec, src)  # open_clip's models are untyped
            assert torch.equal(clip.encode_image(x), want)


def test_clip_from_a_checkpoint_skips_random_init_and_has_every_weight_and_buffer_of_it(tiny_clip, tmp_path,
                                                                                       monkeypatch):
    """open_clip's random init before the load is skipped (0.6 s of 1.1 s for ViT-B/32); what the
    model holds afterwards is the checkpoint's, every parameter and buffer, as with the init."""
    spec, model = tiny_clip
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    source = W.resolve_weights(spec, str(tmp_path / "tiny.pt"))
    calls: list[str] = []
    real = torch.nn.init.normal_
    monkeypatch.setattr(torch.nn.init, "normal_", lambda t, *a, **k: calls.append("normal_") or real(t, *a, **k))
    counting = torch.nn.init.normal_
    skipped: Any = W.build_clip(spec, source)
    assert calls == []  # no random init ran
    assert torch.nn.init.normal_ is counting  # and torch's init is back after the build
    W.build_clip(spec, W.WeightSource("none", None))
    assert calls  # random weights are initialised (from the seed)
    monkeypatch.setattr(W, "_initialised", lambda source: W._seeded(source))  # the init, as before
    initialised: Any = W.build_clip(spec, source)
    want = {**dict(initialised.named_parameters()), **dict(initialised.named_buffers())}
    got = {**dict(skipped.named_parameters()), **dict(skipped.named_buffers())}
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    x = torch.rand(2, 3, spec.image_size, spec.image_size)
    with torch.inference_mode():
        assert torch.equal(skipped.encode_image(x), model.encode_image(x))


def test_clip_local_file_of_another_architecture_is_a_clear_error(tmp_path):
    spec = S.get_spec("test-tiny-clip", "visual")
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(WeightsNotFoundError, match="other.pt"):
        W.build_clip(spec, W.resolve_weights(spec, str(tmp_path / "other.pt")))


def test_wav2vec2_local_folder_loads_and_a_file_is_refused(tiny_w2v, tmp_path):
    spec, model = tiny_w2v
    model.save_pretrained(tmp_path / "w2v")
    loaded = W.build_wav2vec2(spec, W.resolve_weights(spec, str(tmp_path / "w2v")))
    x = torch.from_numpy(tone(0.5))[None]
    with torch.inference_mode():
        assert torch.equal(loaded(x).last_hidden_state, model(x).last_hidden_state)
    weights = next((tmp_path / "w2v").glob("*.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="folder"):
        W.build_wav2vec2(spec, W.resolve_weights(spec, str(weights)))


# -- visual encoder and text --------------------------------------------------------------
def test_visual_encoder_normalises_uint8_and_matches_encode_image(tiny_clip):
    spec, model = tiny_clip
    pixels = np.random.default_rng(0).integers(0, 256, (5, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    feats = V.VisualEncoder(model, spec, "cpu")(pixels)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        want = model.encode_image(x, normalize=False).numpy()
    assert feats.shape == (5, spec.dim) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5)


def test_text_embeddings_and_logit_scale(tiny_clip):
    from expr.cache_format import CLASS_NAMES, PROMPT_TEMPLATE

    spec, model = tiny_clip
    prompts = [PROMPT_TEMPLATE.format(c) for c in CLASS_NAMES]
    text, scale = V.clip_text_embeddings(model, spec.arch, prompts)
    assert text.shape == (8, spec.dim) and text.dtype == np.float32 and np.isfinite(text).all()
    assert len({row.tobytes() for row in text}) == 8  # one distinct embedding per class
    assert scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init of exp(logit_scale)


def test_backbone_record_records_random_weights_as_null():
    vit = S.get_spec("ViT-B-32", "visual")
    attrs = W.backbone_record(vit, W.WeightSource("none", None), resize="bicubic").to_dict()
    assert attrs["weights"] is None and attrs["dim"] == 512 and attrs["image_size"] == 224
    assert attrs["resize"] == "bicubic" and "sample_rate" not in attrs  # a visual record has no audio keys
    w2v = S.get_spec("facebook/wav2vec2-base", "audio")
    attrs = W.backbone_record(w2v, W.WeightSource("hub", "hub")).to_dict()
    assert (attrs["weights"], attrs["sample_rate"], attrs["hop"], attrs["receptive_field"]) == ("hub", 16000, 320, 400)


# -- audio features -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [399, 400, 719, 720, 16000, 16001])
def test_output_steps_matches_the_model(tiny_w2v, n):
    _, model = tiny_w2v
    want = (n - 400) // 320 + 1 if n >= 400 else 0
    assert output_steps(n) == want
    if n >= 400:
        with torch.inference_mode():
            assert model(torch.zeros(1, n) + 0.1).last_hidden_state.shape[1] == want


def test_plan_chunks_tiles_the_steps_exactly():
    for n, size, ctx in [(1, 5, 2), (149, 50, 25), (150, 50, 0), (1000, 7, 3)]:
        chunks = plan_chunks(n, size, ctx)
        assert chunks[0].start == 0 and chunks[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
        assert all(0 <= c.ctx_start <= c.start < c.stop <= c.ctx_stop <= n for c in chunks)
        assert all(c.start - c.ctx_start == min(ctx, c.start) for c in chunks)


def test_audio_shorter_than_one_step_gives_no_features(tiny_w2v):
    spec, model = tiny_w2v
    assert AudioEncoder(model, spec)(np.zeros(399, np.float32)) is None


def test_audio_within_one_chunk_is_bit_identical_to_one_shot(tiny_w2v):
    spec, model = tiny_w2v
    x = tone(1.3)
    feats = AudioEncoder(model, spec, chunk_seconds=2.0)(x)
    assert feats is not None
    with torch.inference_mode():
        want = model(torch.from_numpy(normalise_waveform(x))[None]).last_hidden_state[0].numpy()
    assert feats.shape == (output_steps(len(x)), spec.dim)
    assert np.array_equal(feats, want)


def test_chunked_audio_has_exact_length_and_stays_close_to_one_shot(tiny_w2v):
    """What chunking can and cannot promise (see audio_features' docstring).

    Exact: the length, and each stitched chunk is exactly the model's output on its context
    window. Approximate: closeness to one-shot, because attention and the first layer's
    GroupNorm see the whole input; the context is what keeps the error small, so we assert
    both a bound and that adding context shrinks the error.
    """
    spec, model = tiny_w2v
    x = tone(6.0)
    n = output_steps(len(x))
    one_shot = AudioEncoder(model, spec, chunk_seconds=60.0)(x)
    no_ctx = AudioEncoder(model, spec, chunk_seconds=1.0, context_seconds=0.0)(x)
    enc = AudioEncoder(model, spec, chunk_seconds=2.0, context_seconds=2.0)
    chunked = enc(x)
    assert one_shot is not None and no_ctx is not None and chunked is not None
    assert one_shot.shape == no_ctx.shape == chunked.shape == (n, spec.dim)

    xn = normalise_waveform(x)
    for c in plan_chunks(n, enc.chunk_steps, enc.context_steps):
        piece = xn[c.ctx_start * 320: (c.ctx_stop - 1) * 320 + 400]
        with torch.inference_mode():
            direct = model(torch.from_numpy(piece)[None]).last_hidden_state[0].numpy()
        assert np.array_equal(chunked[c.start:c.stop], direct[c.start - c.ctx_start: c.stop - c.ctx_start])

    def cosine(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    assert cosine(chunked, one_shot).mean() > 0.995 and cosine(chunked, one_shot).min() > 0.95
    assert np.abs(chunked - one_shot).mean() < 0.5 * np.abs(no_ctx - one_shot).mean()


@pytest.mark.slow  # builds the full-size models (~240 M parameters)
def test_full_size_backbones_build_without_weights():
    import open_clip.transformer

    vit = S.get_spec("ViT-B-32", "visual")
    clip: Any = W.build_clip(vit, W.WeightSource("none", None))
    assert isinstance(clip.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    feats = V.VisualEncoder(clip, vit)(np.zeros((2, 224, 224, 3), np.uint8))
    assert feats.shape == (2, 512)
    w2v = S.get_spec("facebook/wav2vec2-base", "audio")
    audio = AudioEncoder(W.build_wav2vec2(w2v, W.WeightSource("none", None)), w2v)(tone(1.0))
    assert audio is not None and audio.shape == (output_steps(16000), 768) == (49, 768)
