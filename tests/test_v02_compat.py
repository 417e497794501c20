"""A cache and a run folder written by expr v0.2 (tests/data/v02, made by
tests/data/make_v02_fixture.py at commit eaf74f0) still open, read and score with this expr."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cache_helpers import video_arrays
from expr.cache_format import BackboneRecords, open_cache, open_writer, validate_cache
from expr.evaluate import EvaluateConfig, evaluate_run
from expr.train_heads import load_run

V02 = Path(__file__).with_name("data") / "v02"


@pytest.fixture()
def v02(tmp_path) -> Path:
    shutil.copytree(V02, tmp_path / "v02")  # writers and evaluate write into it
    return tmp_path / "v02"


def _root_attrs(cache: Path) -> dict:
    return json.loads((cache / "zarr.json").read_text())["attributes"]


@pytest.mark.parametrize("name", ["synthetic/feats.zarr", "extracted.zarr"])
def test_a_v02_cache_opens_and_its_records_read_back_as_written(v02, name):
    path = v02 / name
    written = _root_attrs(path)["backbones"]
    assert validate_cache(path) == []
    with open_cache(path) as cache:
        assert cache.backbones.to_dict() == written  # typed records lose nothing (fingerprints hash them)
        assert BackboneRecords.from_dict(written, name) == cache.backbones
        assert cache.video_ids and all(cache.info(v).n_frames > 0 for v in cache.video_ids)
        for vid in cache.video_ids:
            attrs = json.loads((path / "videos" / vid / "zarr.json").read_text())["attributes"]
            extras = cache.info(vid).extra.to_dict()
            assert extras == {k: v for k, v in attrs.items() if k in extras}  # as written
    if name == "extracted.zarr":
        with open_cache(path) as cache:
            assert cache.backbones.visual.resize == "bicubic" and cache.backbones.visual.weights is None
            assert {cache.info(v).extra.visual_source for v in cache.video_ids} == {"video"}


def test_a_v02_cache_takes_new_videos_with_its_own_records(v02):
    path = v02 / "synthetic" / "feats.zarr"
    with open_cache(path) as cache:
        backbones, text, scale = cache.backbones, cache.text_embeddings(), cache.logit_scale
        visual_dim, audio_dim = cache.visual_dim, cache.audio_dim
    writer = open_writer(path, backbones=backbones, text_embeddings=text, logit_scale=scale)
    entry = video_arrays(0)
    entry = replace(entry, visual=entry.visual[:, :1].repeat(visual_dim, 1), audio=entry.audio[:, :1].repeat(audio_dim, 1))
    writer.write_video("added", entry)
    with open_cache(path) as cache:
        assert "added" in cache.video_ids and _root_attrs(path)["backbones"] == backbones.to_dict()


def test_a_v02_run_folder_loads_and_scores_its_v02_cache(v02):
    run = load_run(v02 / "run")
    assert run.model is not None and run.meta["cache"]["backbones"]["visual"]["name"] == "synthetic"
    report = evaluate_run(EvaluateConfig(run=v02 / "run", cache=v02 / "synthetic" / "feats.zarr",
                                         labels=v02 / "synthetic" / "labels", device="cpu"))
    assert report.json_path.is_file() and 0.0 <= report.data["protocols"]["window"]["macro_f1"] <= 1.0
    assert report.data["backbones"] == _root_attrs(v02 / "synthetic" / "feats.zarr")["backbones"]
