#!/usr/bin/env bash
# Extraction check for one GPU machine (issue 18), ~2 min on an H100/H200 with 16 cores:
# 12,000 frames in 16 videos at 640x360 and at 1280x720 through the whole `expr extract`
# pipeline vs the bare ViT-B/32, and the feed alone (null encoders) with 1 video and with 16;
# the default --geometry (auto: the device path on CUDA), and --geometry worker at 360p;
# at 720p the CPU decoders (--decoder cpu) and NVDEC (--decoder nvdec: needs PyNvVideoCodec,
# bash ../shared/tools/gpu-wheels.sh pynvvideocodec==2.2.4; a failing start-up probe is the
# one-line error its log ends with).
# Wav2Vec2-Base alone on 16 tracks of 10-40 s, one track at a time vs batched across tracks.
# Called from benchmarks/gpu_check.sh; alone: bash benchmarks/gpu_check_extract.sh [OUT_DIR]
# GPU_CHECK_TINY=1 runs the same steps in seconds on a CPU (proves they run; measures nothing).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:-$(mktemp -d -t gpu_check_extract.XXXXXX)}
mkdir -p "$out"
if [[ ${GPU_CHECK_TINY:-0} == 1 ]]; then
    device=cpu; common=(--frames 48 --videos 2 --batch-size 8 --repeat 1); workers=2 limit=300
    nvdec=auto  # no GPU: auto is the CPU decoders (proves the step runs)
    audio=(--audio-tracks 2 --audio-seconds 1,2)
else
    device=cuda; common=(--frames 12000 --videos 16 --batch-size 512 --repeat 1); workers=16 limit=150
    nvdec=nvdec
    if ! "$PY" -c "import PyNvVideoCodec" 2>/dev/null; then  # its wheel did not fit this copy (64 MiB carry)
        nvdec=auto
        echo "note: PyNvVideoCodec is not installed: pipeline_720p_nvdec runs --decoder auto (the CPU decoders, with the note why)"
    fi
    audio=(--audio-tracks 16 --audio-seconds 10,40)
fi
# the steps share their synthetic videos (bench_extract.make_videos): encoded once per size
export BENCH_VIDEO_CACHE=${BENCH_VIDEO_CACHE:-$out/videos}
mkdir -p "$BENCH_VIDEO_CACHE"
status=0
run() {  # run NAME ARGS...: one bench_extract.py step, its log in $out/NAME.log
    local name=$1; shift
    echo "== extract $name" >&2
    if timeout "$limit" "$PY" benchmarks/bench_extract.py "$@" > "$out/$name.log" 2>&1; then
        tail -n 14 "$out/$name.log"
    else
        echo "extract $name: FAILED or TIMEOUT (exit $?), see $out/$name.log: $(tail -n 1 "$out/$name.log")"; status=1
    fi
}
run pipeline_360p --device "$device" "${common[@]}" --workers "$workers"
run pipeline_720p --device "$device" "${common[@]}" --workers "$workers" --size 1280x720 --decoder cpu
run pipeline_720p_nvdec --device "$device" "${common[@]}" --workers "$workers" --size 1280x720 --decoder "$nvdec"
run feed_360p --device "$device" --null-encoder "${common[@]}" --workers "$workers"
# the default above is --geometry auto (device on CUDA behind its self-check: the log's
# "note:" line says when it fell back); the workers' own geometry for comparison
run pipeline_360p_worker_geometry --device "$device" "${common[@]}" --workers "$workers" --geometry worker
# Wav2Vec2 must keep up: at 12k frames/s of 30 fps video, 400 s of audio arrive per second
run audio_batched --device "$device" --audio "${audio[@]}"
exit $status
