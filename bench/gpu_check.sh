#!/usr/bin/env bash
# Every GPU figure docs/PERFORMANCE.md owes, in one run on one GPU that ends within 8 minutes
# (about 5-6 on an H100/H200-class GPU, most of it the bench itself):
#
#   bash bench/gpu_check.sh              # on the GPU machine
#   bash bench/gpu_check.sh --dry-run    # the same steps on CPU, tiny encoders, under a minute (or DRY_RUN=1)
#   bash bench/gpu_check.sh --out DIR    # figures to DIR (default: $OUT if set, else bench/results/)
#
# Steps, each under its own time budget and all under one deadline; a step that fails or runs
# out of time is reported and the others still run:
#   env      torch, CUDA and the GPU
#   prepare  the bench corpus (IEMOCAP's durations) and random wav2vec2-base-size encoders,
#            built once under data/bench/ (BENCH_DIR); timed apart from the measurements
#   main     base-size mmer, bf16: upstream configuration vs ours (speedup_vs_upstream_config),
#            ours + --gradient_checkpointing (peak GPU memory with and without), ours +
#            --cache_conv_features wherever run.py accepts it for wav2vec2-base; the measured
#            matmul peak and each row's fraction of it (MFU); evaluation exact vs padded; one
#            IEMOCAP fold-epoch and the 5 folds x 100 epochs protocol PROJECTED from the measured
#            training and evaluation throughputs (no IEMOCAP-sized epoch is timed)
#   cache    the layer-norm twin of wav2vec2-base: ours + --cache_conv_features
#   compile  ours + --compile (the warm-up steps compile)
#   ladder   one row per optimisation, upstream to ours (only with the time left)
# then a summary block, and gpu_check.json (every figure) and gpu_check.log in the output folder.
set -u
CALLER_DIR=$PWD
SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/.."

# folders given relative ($OUT, --out, BENCH_DIR) are taken from where the script was called
absolute() { (cd "$CALLER_DIR" && realpath -m "$1"); }
DRY_RUN=${DRY_RUN:-0}
OUT_DIR=bench/results
[ -n "${OUT:-}" ] && OUT_DIR=$(absolute "$OUT")
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT_DIR=$(absolute "${2:?--out needs a folder}"); shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$SCRIPT" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (use --dry-run, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BENCH_DIR=${BENCH_DIR:+$(absolute "$BENCH_DIR")}
BENCH_DIR=${BENCH_DIR:-data/bench}
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
: > "$WORK/steps.tsv"
export PYTHONUNBUFFERED=1

BENCH="bench/train_throughput.py"
if [ "$DRY_RUN" = 1 ]; then
    # CPU, tiny encoders, 10 utterances of a 60-utterance corpus: the steps and the summary, no figures
    DEADLINE=${GPU_CHECK_DEADLINE_S:-58}
    COMMON=(--device cpu --size tiny --eval_size tiny --runs mmer --bench_dir "$BENCH_DIR" --corpus_per_session 12
            --utterances 10 --rtf_utterances 0 --no_flops --threads 1 --matmul_size 256 --warmup_steps 1 --rounds 1
            --no-cpu_bf16_row)
    MAIN=(--eval_utterances 4)
    SHORT=(--steps 1)
    BUDGET_PREPARE=25 BUDGET_MAIN=40 BUDGET_CACHE=20 BUDGET_COMPILE=5 BUDGET_LADDER=20
else
    # base size, bf16 (run.py's GPU default), 500 utterances of IEMOCAP's durations (about 2,250 s of audio)
    DEADLINE=${GPU_CHECK_DEADLINE_S:-420}
    COMMON=(--device cuda --size base --runs mmer --bench_dir "$BENCH_DIR" --utterances 500 --rtf_utterances 0)
    MAIN=(--eval_utterances 200)
    SHORT=(--steps 30 --no_flops)
    BUDGET_PREPARE=150 BUDGET_MAIN=200 BUDGET_CACHE=120 BUDGET_COMPILE=180 BUDGET_LADDER=150
fi

say() { echo "$*" | tee -a "$LOG"; }

# step NAME BUDGET_S COMMAND...: run it under min(budget, time left before the deadline), its
# output to the console and the log; record ok / failed / timed out / skipped and its seconds.
step() {
    local name=$1 budget=$2 left started rc status
    shift 2
    left=$((DEADLINE - SECONDS))
    [ "$budget" -gt "$left" ] && budget=$left
    if [ "$budget" -lt 5 ]; then
        say "== $name: skipped, no time left before the ${DEADLINE} s deadline"
        printf '%s\tskipped (no time left)\t0\t0\n' "$name" >> "$WORK/steps.tsv"
        return
    fi
    say "== $name (budget ${budget} s, ${SECONDS} s into the check): $*"
    started=$SECONDS
    timeout --kill-after=10 "$budget" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after ${budget} s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    say "== $name: $status in $((SECONDS - started)) s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - started))" "$budget" >> "$WORK/steps.tsv"
}

MODE="GPU"
[ "$DRY_RUN" = 1 ] && MODE="DRY RUN on CPU, tiny encoders (the figures mean nothing)"
say "gpu_check: $MODE, deadline ${DEADLINE} s, output $OUT_DIR, started $(date -u +%FT%TZ)"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
fi
"$PYTHON" - "$DRY_RUN" <<'EOF' 2>&1 | tee -a "$LOG"
import sys
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
if sys.argv[1] != "1" and not torch.cuda.is_available():
    sys.exit("gpu_check.sh: torch sees no CUDA device, so no GPU figure can be measured; install the torch build "
             "matching your CUDA (README), or run `bash bench/gpu_check.sh --dry-run` to try the script on CPU")
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

step prepare "$BUDGET_PREPARE" "$PYTHON" "$BENCH" "${COMMON[@]}" "${MAIN[@]}" --prepare_only
step main "$BUDGET_MAIN" "$PYTHON" "$BENCH" "${COMMON[@]}" "${MAIN[@]}" --no-ladder \
    --also gradient_checkpointing=true --json "$WORK/main.json"
step cache "$BUDGET_CACHE" "$PYTHON" "$BENCH" "${COMMON[@]}" "${SHORT[@]}" --encoder_norm layer --no-ladder \
    --conv_cache_row --eval_utterances 0 --json "$WORK/cache.json"
step compile "$BUDGET_COMPILE" "$PYTHON" "$BENCH" "${COMMON[@]}" "${SHORT[@]}" --no-ladder --no-conv_cache_row \
    --eval_utterances 0 --warmup_steps 3 --also compile=true --json "$WORK/compile.json"
step ladder "$BUDGET_LADDER" "$PYTHON" "$BENCH" "${COMMON[@]}" "${SHORT[@]}" --ladder --no-conv_cache_row \
    --eval_utterances 0 --json "$WORK/ladder.json"

"$PYTHON" - "$WORK" "$OUT_DIR" "$DRY_RUN" <<'EOF' 2>&1 | tee -a "$LOG"
"""The summary block and gpu_check.json, from the steps' json files (no torch needed)."""
import json
import sys
from pathlib import Path

work, out, dry_run = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, status, seconds, budget = line.split("\t")
    steps[name] = {"status": status, "seconds": int(seconds), "budget_s": int(budget)}
records = {name: json.loads((work / f"{name}.json").read_text()) for name in steps if (work / f"{name}.json").is_file()}
MAIN_FIELDS = ("device", "matmul_peak_tflops", "fold_epoch_seconds", "protocol_minutes_per_variant",
               "speedup_vs_upstream_config", "peak_memory_mb", "fraction_of_matmul_peak", "eval_exact_over_padded_time")


def missing(name):
    return f"n/a ({name}: {steps.get(name, {}).get('status', 'not run')})"


def row(record, role, label_start=""):
    return next((m for m in record["measurements"] if m["role"] == role and m["label"].startswith(label_start)), None)


def rate(m):
    return m["throughput_audio_s_per_s"]


def versus(record, m, memory=True):
    return (f"{rate(m):.1f} audio-s/s, {rate(m) / rate(row(record, 'ours')):.2f} x ours, "
            f"{rate(m) / rate(row(record, 'upstream')):.2f} x upstream"
            + (f", peak memory {m['peak_memory_mb']:.0f} MB" if memory else ""))


def main_figures(main):
    """The main step's figures (throughput, memory, MFU, evaluation, the fold-epoch projection):
    -> (summary lines, {name: figure})."""
    machine, peak, projection = main["machine"], main["matmul_peak"], main.get("fold_epoch_projection")
    ours, upstream = row(main, "ours"), row(main, "upstream")
    checkpointing = row(main, "also", "ours + --gradient_checkpointing")
    figures = {"device": machine.get("gpu", machine["cpu"]), "matmul_peak_tflops": peak["tflops"],
               "speedup_vs_upstream_config": main["speedup_vs_upstream_config"], "ours_audio_s_per_s": rate(ours),
               "upstream_audio_s_per_s": rate(upstream), "peak_memory_mb": ours["peak_memory_mb"],
               "peak_memory_mb_gradient_checkpointing": checkpointing and checkpointing["peak_memory_mb"],
               "fraction_of_matmul_peak": ours.get("fraction_of_matmul_peak"),
               "achieved_tflops": ours.get("achieved_tflops"), "fold_epoch_projection": projection,
               "evaluation": main.get("evaluation")}
    lines = [f"device: {figures['device']} (torch {machine['torch']})",
             "matmul_peak_tflops: " + ", ".join(f"{p} {t:.4g}" for p, t in peak["tflops"].items())
             + f" (torch.mm {peak['size']}x{peak['size']})"]
    if projection:
        lines += [f"fold_epoch_seconds: {projection['fold_epoch_seconds']:.1f} (PROJECTED, not timed: one IEMOCAP "
                  f"fold's {projection['train_audio_s']:.0f} s of training audio at ours' measured training "
                  f"throughput = {projection['train_seconds']:.1f} s, + its {projection['eval_audio_s']:.0f} s of dev "
                  f"and test audio at the measured exact-evaluation throughput = {projection['eval_seconds']:.1f} s; "
                  "target 6 s)",
                  f"protocol_minutes_per_variant: {projection['protocol_minutes_per_variant']:.1f} (5 folds x 100 "
                  "epochs at that fold-epoch time; target 50)"]
    else:
        lines += ["fold_epoch_seconds: n/a (main ran no evaluation at its size)", "protocol_minutes_per_variant: n/a"]
    lines += [f"speedup_vs_upstream_config: {main['speedup_vs_upstream_config']:.2f} (ours {rate(ours):.1f} vs "
              f"upstream {rate(upstream):.1f} audio-s/s; target 12)",
              f"peak_memory_mb: ours {ours['peak_memory_mb']:.0f}, with --gradient_checkpointing "
              + (f"{checkpointing['peak_memory_mb']:.0f} ({versus(main, checkpointing, memory=False)})"
                 if checkpointing else "n/a")
              + (" (torch.cuda.max_memory_allocated)" if machine["device"].startswith("cuda") else " (peak RSS)")]
    if ours.get("fraction_of_matmul_peak"):
        lines.append(f"fraction_of_matmul_peak: {ours['fraction_of_matmul_peak']:.3f} (MFU of ours: achieved "
                     f"{ours['achieved_tflops']:.4g} TFLOP/s of the measured {ours['peak_precision']} peak "
                     f"{ours['peak_tflops']:.4g})")
    else:
        lines.append("fraction_of_matmul_peak: n/a")
    lines.append("eval_exact_over_padded_time: " + (", ".join(
        f"{r['encoder_norm']} norm {r['exact_over_padded_time']:.2f} (exact {r['exact']['seconds']:.2f} s, padded "
        f"{r['padded']['seconds']:.2f} s, {r['utterances']} utterances)" for r in main["evaluation"])
        if main.get("evaluation") else "n/a"))
    return lines, figures


if "main" in records:
    lines, summary = main_figures(records["main"])
else:
    lines, summary = [f"{key}: {missing('main')}" for key in MAIN_FIELDS], {}
compiled = "compile" in records and row(records["compile"], "also", "ours + --compile")
summary["compile_audio_s_per_s"] = compiled and rate(compiled)
lines.append("compile: " + (versus(records["compile"], compiled) + " (timed after 3 warm-up steps that compile)"
                            if compiled else missing("compile")))
cached = []
for name, encoder in (("main", "group norm (as wav2vec2-base)"), ("cache", "its layer-norm twin")):
    record = records.get(name)
    m = record and row(record, "conv_cache")
    summary[f"cache_conv_features_audio_s_per_s_{name}"] = m and rate(m)
    if m:
        cached.append(f"{encoder} {versus(record, m)}")
    elif record and record.get("conv_cache_refusal"):
        cached.append(f"{encoder} not measured: run.py refuses it ({record['conv_cache_refusal']})")
    else:
        cached.append(f"{encoder} {missing(name)}")
lines.append("cache_conv_features: " + "; ".join(cached))
ladder = records.get("ladder")
summary["ladder_audio_s_per_s"] = ladder and {m["label"]: rate(m) for m in ladder["measurements"]}
lines.append("ladder: " + ("; ".join(f"{m['label']} {rate(m) / rate(row(ladder, 'upstream')):.2f}x"
                                     for m in ladder["measurements"]) if ladder else missing("ladder")))
lines.append("steps: " + "; ".join(f"{name} {s['status']} ({s['seconds']} s)" for name, s in steps.items()))

json_path = out / "gpu_check.json"
json_path.write_text(json.dumps({"dry_run": dry_run, "summary": summary, "steps": steps, **records}, indent=1) + "\n")
lines.append(f"json: {json_path}")
title = " gpu_check summary" + (" (DRY RUN: CPU, tiny encoders; the figures mean nothing) " if dry_run else " ")
print("\n" + title.center(100, "=") + "\n" + "\n".join(lines) + "\n" + "=" * 100)
EOF
say "gpu_check: done in ${SECONDS} s"
