"""A disk that fills up during `expr extract` (issue 22.5), on a real full tmpfs in a private
mount namespace: one line per failed video with what to do, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import media_fixtures as F

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
set -u
mount -t tmpfs -o size=1m tmpfs "$MNT" || exit 99
X="$PY -m expr extract --videos $VIDEOS --out $MNT/f.zarr --visual-model test-tiny-clip --audio-model test-tiny-wav2vec2 --workers 0 --batch-size 8"
$X --limit 1 > /dev/null || exit 98
# Reopening a cache rewrites its root without the snapshot: do that now, so that the run
# below opens the cache on a full disk and its video writes are what fails.
$PY -c "
from pathlib import Path; from expr.cache_format.writer import drop_consolidated
p = Path('$MNT/f.zarr'); drop_consolidated(p); (p / '_staging').mkdir(exist_ok=True); (p / '_staging/.lock').touch()"
dd if=/dev/zero of="$MNT/filler" bs=4k 2>/dev/null
COLUMNS=400 $X
echo "rc=$?"
ls "$MNT/f.zarr/_staging" "$MNT/f.zarr/videos"
"""


def test_a_disk_that_is_full_during_extract_fails_each_video_in_one_line(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here")
    videos, mnt = tmp_path / "videos", tmp_path / "mnt"
    mnt.mkdir()
    for i in range(3):
        F.make_video(videos / f"v{i}.mp4", n_frames=30, size=(64, 48))
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "MNT": str(mnt), "VIDEOS": str(videos)}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert "rc=1" in out, out[-3000:]
    assert "Traceback" not in out
    for vid in ("v1", "v2"):
        assert (f"failed {vid}: {mnt}/f.zarr: cannot write video '{vid}' into the cache: No space left on "
                "device; the disk is full: free space or write to another disk") in out, out[-3000:]
    assert "cannot consolidate the cache metadata" in out and f"expr cache consolidate {mnt}/f.zarr" in out
    assert "after every shard finished" not in out  # not a sharded run: the note says why
    # nothing half-written left behind: the staging folder holds only the lock, videos/ only v0
    assert out.rstrip().endswith("videos:\nv0\nzarr.json"), out[-500:]
