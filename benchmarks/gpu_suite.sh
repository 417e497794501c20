#!/usr/bin/env bash
# Every GPU measurement of expr in one run (issue 12), about 6 minutes on one H100/H200,
# ending in ONE table (paste it into the README's GPU column with the card and the date):
#   extraction: bare ViT-B/32 vs the whole pipeline, raw video and jpg folders, feed rate;
#   stage two at Aff-Wild2 scale: training steps at batch 32 x 2 (windows/s, batch-building
#   share), epoch time, per-frame scoring frames/s, projected Table 1 time.
#
#   bash ../shared/tools/gpu-wheels.sh            # here, before copying the checkout over
#   bash benchmarks/gpu_suite.sh                  # on the GPU machine, from the repo root
#   bash benchmarks/gpu_suite.sh --device cpu --tiny   # end-to-end smoke run on a CPU
#
# Logs of each step stay in $SUITE_OUT (default: a temp dir) and are named in the table.
# A step that fails or runs out of time shows as FAILED/TIMEOUT; the others still report.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda tiny=0
while (($#)); do
    case $1 in
        --device) device=$2; shift 2 ;;
        --tiny) tiny=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (use --device cpu|cuda, --tiny)" >&2; exit 2 ;;
    esac
done

if [[ -d .whl ]]; then
    # shellcheck disable=SC1091
    source .whl/setup.sh || { echo "source .whl/setup.sh failed" >&2; exit 1; }
fi
PY=${PYTHON:-python3}
out=${SUITE_OUT:-$(mktemp -d -t gpu_suite.XXXXXX)}
mkdir -p "$out"
table=$out/table.tsv
: > "$table"

if ((tiny)); then  # seconds on a CPU: proves every step runs, measures nothing useful
    extract_args=(--frames 16 --batch-size 8 --videos 1 --workers 1 --repeat 1)
    null_args=(--frames 64 --batch-size 16 --videos 1 --workers 1 --repeat 1)
    train_args=(--scale-fraction 0.004 --head tiny --train-batches 2 --score-frames 100 --epochs 1)
    limit=300 train_limit=300
else  # sized for ~6 min on one H100; compiling the training step (cold) is ~1 min of it
    extract_args=(--frames 2000 --batch-size 512 --videos 4 --workers 8 --repeat 1)
    null_args=(--frames 4000 --batch-size 512 --videos 4 --workers 8 --repeat 1)
    train_args=(--scale-fraction 0.1 --train-batches 100 --score-frames 100000 --epochs 2)
    limit=90 train_limit=300
fi

row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$table"; }

# step NAME COMMAND...: run within $limit seconds, log to $out/NAME.log; a failure becomes a row
step() {
    local name=$1; shift
    echo "== $name: $*" >&2
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    if ((rc == 124)); then row "$name" "TIMEOUT" "after ${limit}s, see $out/$name.log"; return 1; fi
    if ((rc != 0)); then row "$name" "FAILED (exit $rc)" "see $out/$name.log"; return 1; fi
}

# pick LOG PREFIX LABEL...: bench_extract's table rows starting with LABEL, as table rows
pick() {
    local log=$1 prefix=$2; shift 2
    for label in "$@"; do
        grep -F -- "$label" "$log" | head -1 | sed -E 's/  +/\t/g' \
            | awk -F'\t' -v OFS='\t' -v p="$prefix" '{print p $1, $2, $3}' >> "$table"
    done
}

# -- extraction ---------------------------------------------------------------------------
if step extract_video "$PY" benchmarks/bench_extract.py --device "$device" "${extract_args[@]}"; then
    pick "$out/extract_video.log" "video: " "bare ViT-B/32" "pipeline, visual" "pipeline, end to end" \
        "pipeline, the whole run_extract call" "Wav2Vec2-Base audio"
fi
if step extract_jpg "$PY" benchmarks/bench_extract.py --device "$device" --source jpg "${extract_args[@]}"; then
    pick "$out/extract_jpg.log" "jpg: " "bare ViT-B/32" "pipeline, visual" "pipeline, end to end" \
        "pipeline, the whole run_extract call"
fi
for source in video jpg; do
    if step "feed_$source" "$PY" benchmarks/bench_extract.py --device "$device" --null-encoder --source "$source" \
            "${null_args[@]}"; then
        rate=$(grep -oE 'steady feed rate [0-9,.]+ frames/s' "$out/feed_$source.log" | grep -oE '[0-9,.]+ frames/s')
        row "feed rate, $source (null encoders)" "${rate:-?}" "decode + batching without model cost"
    fi
done

# -- stage two at Aff-Wild2 scale -------------------------------------------------------
limit=$train_limit
rm -f "$out/train_scale.json"  # never report an earlier run's numbers
# Its rows print even when a part fails: bench_train writes the step rows first, and a setting
# that fails is a FAILED row of its own.
step train_scale "$PY" benchmarks/bench_train.py --scale affwild2 --device "$device" "${train_args[@]}" \
        --json "$out/train_scale.json"
if [[ -s $out/train_scale.json ]]; then
    "$PY" - "$out/train_scale.json" >> "$table" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rows = []
for setting, s in r["steps"].items():
    if "error" in s:
        rows.append((f"train steps, --compile {setting}", "FAILED", s["error"]))
        continue
    fell_back = f"; FELL BACK to eager: {s['note']}" if "note" in s else ""
    rows.append((f"train steps, --compile {setting}", f"{s['windows_per_s']:,.0f} windows/s",
                 f"batch 32 x 2, window 60; batch building {100 * s['batch_building_share']:.1f}% of wall time"
                 + fell_back))
for w, e in r.get("epochs", {}).items():
    rows.append((f"epoch at Aff-Wild2 size, window {w}", f"{e['epoch_s'] * r['scale']:,.1f} s",
                 f"train + validation; measured {e['epoch_s']:.1f} s on 1/{r['scale']:.0f} of it"))
for w, f in r.get("per_frame", {}).items():
    rows.append((f"per-frame scoring, window {w}", f"{f:,.0f} frames/s", "one causal window per frame"))
if "table1" in r:
    t = r["table1"]
    rows.append(("Table 1 projected (windows 30+60, 30 epochs)", f"{t['total_s'] / 60:,.1f} min",
                 ", ".join(f"window {w}: {s / 60:.1f} min" for w, s in t["per_window_s"].items())))
print("\n".join("\t".join(x) for x in rows))
PY
fi

# -- the table ----------------------------------------------------------------------------
name=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if '$device' == 'cuda' else 'CPU')" 2>/dev/null)
echo
echo "expr GPU suite: $name, $(date +%Y-%m-%d), torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)$( ((tiny)) && echo ', --tiny')"
awk -F'\t' '{ printf "%-46s %-22s %s\n", $1, $2, $3 }' "$table"
echo "logs: $out"
! grep -qP '\t(FAILED|TIMEOUT)' "$table"
