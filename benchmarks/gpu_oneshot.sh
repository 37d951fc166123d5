#!/usr/bin/env bash
# One lent GPU, one shot, under 9 minutes of wall time (docs/gpu.md):
#
#   bash benchmarks/gpu_oneshot.sh [--tiny] [--out DIR] [--minutes M]
#
#   --out DIR     output folder (default: runs/gpu_oneshot); created
#   --minutes M   wall-clock budget of the whole script (default: 9); every step runs under `timeout`
#                 and the detector's training gets what the other steps leave
#   --tiny        the same steps at toy sizes, for a CPU in a few minutes: without CUDA the parity
#                 tests run CPU against CPU (KOCH_PARITY_DEVICE=cpu: checks the tests' code, not a
#                 device), 2-step throughput at 128 px, 48 phantoms packed in 4 MiB shards, one epoch,
#                 no card. Without --tiny and without CUDA the parity tests skip.
#
# Steps, each logged with timestamps to OUT/<step>.log:
#   parity      pytest -m cuda tests/test_cuda.py: detector, activation network, evidence maps, vessel
#               segmenter, generator and one step of each trainer, CPU vs CUDA, bf16 autocast off/on
#   throughput  benchmarks/bench_gpu_throughput.py: detector and synthesizer training steps/s and
#               images/s at 256 and 512 px (bf16 where the trainer uses it) -> OUT/throughput.json
#   pack        koch-explore data pack: EyePACS + APTOS at 256 px in safetensors shards <= 60 MiB
#   train       koch-explore detector train --packed: as many epochs as the time left allows
#               (estimated from the measured throughput), --max-minutes as the safety net
#   card        koch-explore detector card on the best weights (needs the EyePACS data; skipped
#               with --tiny, whose phantom run has no EyePACS training eyes to measure)
# and OUT/summary.json: each step's seconds and status, the throughput figures, the pack, the run.
# Exit status 0 when every step that ran succeeded; a failed step does not stop the later ones (the
# GPU time is spent either way), it makes the exit status 1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="runs/gpu_oneshot"
MINUTES=9
TINY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tiny) TINY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --minutes) MINUTES="$2"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_oneshot.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$REPO"
PY="python"
[[ -x .venv/bin/python ]] && PY="$REPO/.venv/bin/python"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONUNBUFFERED=1

START=$(date +%s)
# Seconds kept back at the end so the script is done before the budget, whatever the last step does.
SAFETY=15
DEADLINE=$(( START + $(awk -v m="$MINUTES" 'BEGIN {printf "%d", m * 60}') - SAFETY ))
# The card measures the weights on the CPU (validation splits, DRIVE, fit check): at least this long.
CARD_RESERVE=120
STEPS_TSV="$OUT/steps.tsv"
: > "$STEPS_TSV"
FAILED=0

log() { printf '%(%H:%M:%S)T gpu_oneshot: %s\n' -1 "$*" | tee -a "$OUT/gpu_oneshot.log"; }
left() { echo $(( DEADLINE - $(date +%s) )); }

# step NAME LIMIT_S CMD...: run CMD under `timeout LIMIT_S`, every output line timestamped into
# OUT/NAME.log (and echoed), its exit status and seconds appended to OUT/steps.tsv.
step() {
  local name="$1" limit="$2"; shift 2
  if (( limit < 5 )); then
    log "$name: skipped, no time left"
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" "0" "no time left" >> "$STEPS_TSV"
    return 0
  fi
  log "$name: start (limit ${limit}s): $*"
  local t0 rc
  t0=$(date +%s.%N)
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done \
    | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  local secs status
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  if (( rc == 0 )); then status="ok"; elif (( rc == 124 || rc == 137 )); then status="timeout"; else status="failed"; fi
  [[ "$status" == "ok" ]] || FAILED=1
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "rc=$rc" >> "$STEPS_TSV"
  log "$name: $status after ${secs}s (rc $rc)"
}

skip() {  # skip NAME REASON
  log "$1: skipped: $2"
  printf '%s\t%s\t%s\t%s\n' "$1" "skipped" "0" "$2" >> "$STEPS_TSV"
}

DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
log "repo $REPO, python $PY, device $DEVICE, budget ${MINUTES} min (deadline in $(left)s), tiny=$TINY, out $OUT"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.log" || true
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'threads', torch.get_num_threads())" | tee -a "$OUT/gpu_oneshot.log"

# -- (a) parity tests --------------------------------------------------------------------------
rm -f "$OUT/parity.jsonl"
if [[ "$DEVICE" != "cuda" && -z "${KOCH_PARITY_DEVICE:-}" ]]; then
  if (( TINY )); then
    # no GPU to compare with: run the same comparisons CPU against CPU, which checks the tests' own code
    export KOCH_PARITY_DEVICE=cpu
    log "parity: no CUDA device; --tiny runs the comparisons CPU against CPU (KOCH_PARITY_DEVICE=cpu)"
  else
    log "parity: no CUDA device, the cuda-marked tests will skip (KOCH_PARITY_DEVICE=cpu runs them CPU against CPU)"
  fi
fi
export KOCH_PARITY_REPORT="$OUT/parity.jsonl"  # each comparison's measured error, for the summary
# CPU against CPU (--tiny) computes both sides on the CPU: more time than one side beside a GPU
PARITY_LIMIT=$(( TINY ? 300 : 240 ))
step parity "$(( $(left) < PARITY_LIMIT ? $(left) : PARITY_LIMIT ))" \
  "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider

# -- (b) throughput ----------------------------------------------------------------------------
if (( TINY )); then
  step throughput "$(( $(left) < 120 ? $(left) : 120 ))" "$PY" benchmarks/bench_gpu_throughput.py --tiny --json-out "$OUT/throughput.json"
else
  step throughput "$(( $(left) < 150 ? $(left) : 150 ))" "$PY" benchmarks/bench_gpu_throughput.py --json-out "$OUT/throughput.json"
fi

# -- (c) pack ----------------------------------------------------------------------------------
PACK="$OUT/pack"
if (( TINY )); then
  PACK_ARGS=(--data phantom --phantom-count 48 --max-mib 4)
else
  PACK_ARGS=(--data eyepacs --max-mib 60)
fi
step pack "$(( $(left) < 180 ? $(left) : 180 ))" "$PY" -m koch_explore data pack --out "$PACK" --size 256 --quiet "${PACK_ARGS[@]}"

# -- (d) train ---------------------------------------------------------------------------------
# Epochs from the measured 256 px training rate and the pack's size, so the cosine schedule ends
# inside the budget; --max-minutes stops a slower run cleanly (the best epoch so far stays).
RESERVE=$(( TINY ? 5 : CARD_RESERVE ))
TRAIN_S=$(( $(left) - RESERVE ))
if [[ -f "$PACK/index.json" ]] && (( TRAIN_S > 90 )); then
  if (( TINY )); then
    EPOCHS=1; BATCH=8
  else
    BATCH=32
    EPOCHS=$("$PY" - "$OUT/throughput.json" "$PACK/index.json" "$TRAIN_S" <<'EOF'
import json, sys
from pathlib import Path
throughput, index, seconds = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), float(sys.argv[3])
# images/s of a training step at 256 px; without that measurement, a cautious guess for one modern GPU
measured = json.loads(throughput.read_text())["detector"].get("256", {}) if throughput.is_file() else {}
rate = float(measured.get("images_per_s") or 500.0)
n_train = index["splits"]["train"]["count"]
n_val = sum(s["count"] for k, s in index["splits"].items() if k != "train")
startup = 40.0                                  # interpreter, CUDA context, pack read and checked
epoch = n_train / rate + n_val / (4 * rate) + 3  # steps, validation (inference ~4x a training step), checkpoint
print(max(1, int((seconds - startup) / (1.15 * epoch))))  # 15% for the steps' variance
EOF
) || { log "train: could not estimate the epochs (throughput or index unreadable): 1 epoch"; EPOCHS=1; }
  fi
  MAX_MIN=$(awk -v s="$TRAIN_S" 'BEGIN {printf "%.2f", (s - 60) / 60}')  # startup and the last checkpoint fit in the other 60 s
  log "train: $EPOCHS epoch(s), batch $BATCH, --max-minutes $MAX_MIN (${TRAIN_S}s left for training)"
  step train "$TRAIN_S" "$PY" -m koch_explore detector train --packed "$PACK" --out "$OUT/detector" \
    --epochs "$EPOCHS" --batch-size "$BATCH" --max-minutes "$MAX_MIN" --checkpoint-minutes 60
else
  skip train "no pack or under 90 s left"
fi

# -- (e) card ----------------------------------------------------------------------------------
WEIGHTS="$OUT/detector/best.safetensors"
if (( TINY )); then
  skip card "--tiny trains on phantoms; the card measures EyePACS training and validation eyes"
elif [[ ! -f "$WEIGHTS" ]]; then
  skip card "no best.safetensors (training wrote no epoch)"
else
  step card "$(left)" "$PY" -m koch_explore detector card --weights "$WEIGHTS" --no-tta \
    --command "koch-explore detector train --packed PACK --epochs ${EPOCHS:-?} --batch-size ${BATCH:-?} (benchmarks/gpu_oneshot.sh)"
fi

# -- (f) summary -------------------------------------------------------------------------------
"$PY" - "$OUT" "$START" "$MINUTES" "$TINY" "$DEVICE" <<'EOF'
import json, os, sys, time
from pathlib import Path

out, start, minutes, tiny, device = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
read = lambda p: json.loads(p.read_text()) if p.is_file() else None
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, secs, note = line.split("\t")
    steps[name] = {"status": status, "seconds": float(secs), "note": note}
pack = read(out / "pack" / "index.json")
if pack:
    shards = [s for split in pack["splits"].values() for s in split["shards"]]
    pack = {"folder": str(out / "pack"), "size": pack["size"], "data": pack["graded_data"]["data"], "shards": len(shards),
            "largest_shard_mib": round(max(s["bytes"] for s in shards) / 2**20, 2),
            "counts": {k: v["count"] for k, v in pack["splits"].items()}}
parity = None
if (out / "parity.log").is_file():
    jsonl = out / "parity.jsonl"
    rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()] if jsonl.is_file() else []
    log = (out / "parity.log").read_text().strip().splitlines() or [""]
    parity = {"device": os.environ.get("KOCH_PARITY_DEVICE", "cuda"), "pytest": log[-1].split(" ", 1)[-1],
              "comparisons": len(rows), "closest_to_tolerance": sorted(rows, key=lambda r: -r["used"])[:5]}
history = read(out / "detector" / "history.json") or []
weights = out / "detector" / "best.safetensors"
summary = {
    "device": device, "tiny": tiny, "minutes_budget": minutes, "total_seconds": round(time.time() - start, 1),
    "steps": steps, "parity": parity, "throughput": read(out / "throughput.json"), "pack": pack,
    "train": {"epochs_done": len(history), "last": history[-1] if history else None,
              "best": max(history, key=lambda r: r["val"]["qwk_split_half"] + 0.5 * r["val"]["auc_referable"], default=None)},
    "weights": str(weights) if weights.is_file() else None,
    "card": str(weights.with_suffix(".md")) if weights.with_suffix(".md").is_file() else None,
}
tmp = out / "summary.json.tmp"
tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
os.replace(tmp, out / "summary.json")
print(f"summary: {out / 'summary.json'} ({summary['total_seconds']} s of {minutes * 60:.0f})")
EOF
log "done in $(( $(date +%s) - START ))s; failed steps: $FAILED"
exit "$FAILED"
