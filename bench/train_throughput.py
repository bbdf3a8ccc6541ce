"""(One file for one bench: its measuring code lives in training/throughput.py, training/flops.py,
utils/machine.py and synthetic/workspace.py; what stays here, the rows it plans, its IEMOCAP
projections and its report, is this bench's own and used nowhere else.)

Training throughput of our path (run.py's loader, length bucketing, in-memory audio and
loop) against the upstream configuration, measured in one process on the same model and
effective batch; each row's achieved FLOP/s as a fraction of this machine's measured matmul
peak; evaluation time exact (padding-exact batches, as run.py scores) against padded; plus
FLOPs per audio second of the base-size models, an H100 projection (labelled as such) and
CPU real-time factors of evaluation and prediction.

    python bench/train_throughput.py                     # tiny encoders on CPU, a few minutes
    python bench/train_throughput.py --quick             # ~30 s smoke run
    python bench/train_throughput.py --size base         # base-size architectures, short clips on CPU
    python bench/train_throughput.py --device cuda --also gradient_checkpointing=true compile=true
    bash bench/gpu_check.sh                              # every GPU figure in one 8-minute script

The synthetic bench corpus (IEMOCAP's duration distribution) and the encoders are prepared
once under data/bench/. The last line printed is `speedup_vs_upstream_config: <float>`:
ours / upstream training throughput for the first --runs variant (mmer by default)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dataio.dataset import BucketBatchSampler, RandomBatchSampler  # noqa: E402
from models import MODELS, ModelConfig, build_model  # noqa: E402
from models.encoders import audio_input_spec, conv_cache_refusal, encoder_config  # noqa: E402
from synthetic.workspace import (BENCH_DIR, SR, base_roberta_dir, prepare_bench_corpus,  # noqa: E402
                                 random_text_features, speech_encoder_dir)
from training.config import RunConfig  # noqa: E402
from training.flops import FlopModel, flop_models  # noqa: E402
from training.inputs import prepared_corpus  # noqa: E402
from training.loop import make_loader, predict_loader  # noqa: E402
from training.throughput import (Arm, Measurement, Plan, efficiency, fastest, measure_arm,  # noqa: E402
                                 measure_rounds, padded_eval_loader, padded_totals, profile_arm,
                                 spread_over_durations, time_evaluation)
from utils.device import evaluation_precision, native_bf16, resolve_device, seed_everything  # noqa: E402
from utils.device import training_precision  # noqa: E402
from utils.machine import describe_machine, describe_matmul_peak, load, matmul_peak, release_memory  # noqa: E402
# The paper's protocol on the real corpus: 5531 utterances, mean 4.55 s.
IEMOCAP_AUDIO_S = 5531 * 4.55
# Per fold and epoch: train on 4 sessions less a 10 % dev split (forward + backward);
# forward only on dev and on the test session (a fifth of the corpus).
IEMOCAP_TRAIN_S = IEMOCAP_AUDIO_S * 0.8 * 0.9
IEMOCAP_EVAL_S = IEMOCAP_AUDIO_S - IEMOCAP_TRAIN_S
PROTOCOL_EPOCHS = 3 * 5 * 100  # variants x folds x epochs
FOLD_EPOCHS = 5 * 100  # one variant's protocol: folds x epochs
PEAK_BF16_DENSE = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
ASSUMED_MFU = 0.40
# Everything but the loop, the data path and these settings stays as in RunConfig.
UPSTREAM = dict(batching="random", batch_size=2, accum_grad=4, precision="fp32", num_workers=1)
# Ours is run.py's RunConfig defaults for the same settings (plus --ours overrides).
SETTINGS = tuple(UPSTREAM)
# Cumulative changes from UPSTREAM towards ours, one optimisation per row:
# (label, training loop, data path, RunConfig changes).
LADDER = [
    ("+ decoded audio in memory, no worker", "upstream", "memory", dict(num_workers=0)),
    ("+ no per-step host sync (run.py loop)", "ours", "memory", {}),
    ("+ length bucketing", "ours", "memory", dict(batching="bucket")),
]
# Measured beside ours with the ladder: the same effective batch in one micro-batch.
OPTION = ("ours with micro-batch 8, no accumulation", dict(batch_size=8, accum_grad=1))
# Measured beside ours on a CPU that multiplies bf16 natively (AVX512-BF16/AMX): ours in the
# other precision (precision=auto trains small encoders in fp32 there, base-size ones in bf16).
CPU_BF16 = ("ours + --precision bf16 (native bf16 CPU)", dict(precision="bf16"))
CPU_FP32 = ("ours + --precision fp32 (native bf16 CPU)", dict(precision="fp32"))
# Measured beside ours wherever run.py accepts --cache_conv_features for the speech encoder
# (conv_cache_allowed asks run.py's own check, so the bench follows it without an edit).
CONV_CACHE = ("ours + --cache_conv_features", dict(cache_conv_features=True))
# Evaluation batches of the padded comparison (run.py's --eval_batch_size default).
EVAL_BATCH = 8


# ---------------------------------------------------------------- machine
def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Dense bf16 peak of the GPU (MFU is quoted against it for every row), None on CPU."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_DENSE.items() if key in name), None)


# ---------------------------------------------------------------- the arms
def resolved(settings: dict, device, hidden_size: int | None) -> dict:
    """precision 'auto' spelled out as what run.py trains in (utils.device.training_precision)
    for a speech encoder of `hidden_size`, so rows compare by what they run; left as it is
    without a hidden size (for the settings that do not depend on it)."""
    if settings.get("precision") == "auto" and hidden_size is not None:
        settings = {**settings, "precision": training_precision(device, "auto", hidden_size)}
    return settings


def ours_settings(overrides: dict, device, hidden_size: int | None = None) -> dict:
    defaults = RunConfig()
    return resolved({key: getattr(defaults, key) for key in SETTINGS} | overrides, device, hidden_size)


def arms_for(ours: dict, ladder: bool, cpu_bf16: bool = False, conv_cache: bool = False,
             also: list | tuple = ()) -> list[Arm]:
    """The upstream configuration, the ladder of optimisations (if asked), ours, (with the
    ladder) ours in one micro-batch of 8, (cpu_bf16) ours in the other precision (bf16 where ours
    is fp32, fp32 where --precision auto made ours bf16), (conv_cache)
    ours with the feature encoder's output cached and, for each (name, value) of `also`, ours
    with that one RunConfig setting changed."""
    arms = [Arm("upstream configuration (emulated)", "upstream", "disk", dict(UPSTREAM), "upstream")]
    if ladder:
        for label, loop, data, change in LADDER:
            arms.append(Arm(label, loop, data, {**arms[-1].settings, **change}))
    if arms[-1].loop == "ours" and arms[-1].settings == ours:
        arms[-1] = dataclasses.replace(arms[-1], label=arms[-1].label + " = ours (run.py)", role="ours")
    else:
        changed = [f"{k}={v}" for k, v in ours.items() if arms[-1].settings.get(k) != v] if ladder else []
        arms.append(Arm("ours" + (f" (+ {', '.join(changed)})" if changed else ""), "ours", "memory", ours, "ours"))
    label, change = OPTION
    if ladder and ours | change != ours:
        arms.append(Arm(label, "ours", "memory", ours | change, "option"))
    other_precision = CPU_FP32 if ours.get("precision") == "bf16" else CPU_BF16
    for wanted, (label, change), role in [(cpu_bf16, other_precision, "precision"),
                                          (conv_cache, CONV_CACHE, "conv_cache")]:
        if wanted and ours | change != ours:
            arms.append(Arm(label, "ours", "memory", ours | change, role))
    for name, value in also:
        if ours | {name: value} != ours:
            flag = f"--{name}" if value is True else f"{name}={value}"
            arms.append(Arm(f"ours + {flag}", "ours", "memory", ours | {name: value}, "also"))
    return arms


def conv_cache_allowed(encoder: str) -> str | None:
    """None where run.py accepts --cache_conv_features for this speech encoder, else why it
    refuses it (the bench then measures no cache row): the bench asks run.py's own check, so
    the row appears by itself for any encoder run.py comes to accept (group norm too)."""
    return conv_cache_refusal(encoder_config(encoder), audio_input_spec(encoder))


def pick(result: dict, role: str) -> Measurement:
    return next(m for m in result["measurements"] if m.role == role)


# ---------------------------------------------------------------- FLOPs
def base_model_cfg(run_name: str, paths: dict) -> ModelConfig:
    return ModelConfig(run=run_name, wav2vec2=str(speech_encoder_dir(paths, "base")), text_dim=768)


def flop_report(run_name: str, models: tuple[FlopModel, FlopModel], pad_efficiency: float) -> dict:
    """FLOPs per audio second (train step and evaluation) over IEMOCAP-like durations, and the
    FLOPs of one IEMOCAP epoch they imply (for the projection)."""
    samples = iemocap_durations() * SR
    train, evaluation = (m.per_audio_second(samples) for m in models)
    epoch_flops = IEMOCAP_TRAIN_S * train / pad_efficiency + IEMOCAP_EVAL_S * evaluation
    return {"run": run_name, "train_gflop_per_audio_s": train / 1e9, "eval_gflop_per_audio_s": evaluation / 1e9,
            "epoch_pflop": epoch_flops / 1e15, "padding_efficiency": pad_efficiency}


def iemocap_durations(n: int = 5531, seed: int = 0) -> np.ndarray:
    """n utterance durations (s) drawn like the synthetic generator's IEMOCAP-like corpus."""
    from synthetic.iemocap import target_durations

    return target_durations(n, "iemocap", np.random.default_rng(seed))


def iemocap_scale_padding(settings: dict, seed: int = 0) -> float:
    """Padding efficiency of a configuration's sampler over one IEMOCAP fold's training set
    (about 3,980 utterances of IEMOCAP-like durations); samplers only, since a small bench
    corpus has fewer similar lengths to group than the real one."""
    lengths = (iemocap_durations(round(5531 * 0.72), seed) * SR).astype(int)
    sampler_cls = BucketBatchSampler if settings["batching"] == "bucket" else RandomBatchSampler
    sampler = sampler_cls(lengths, settings["batch_size"], shuffle=True, seed=seed)
    real, padded = padded_totals(lengths, sampler.batches())
    return real / padded


def projected_seconds(epoch_pflop: float, peak: float, utilisation: float) -> float:
    return epoch_pflop * 1e15 / (peak * utilisation)


# ---------------------------------------------------------------- real-time factor (CPU)
def rtf_report(run_name: str, paths: dict, n_utterances: int, threads: int, repeats: int = 3) -> dict:
    """Real-time factor (compute seconds / audio seconds) with the base-size model on the CPU:
    evaluation = training.loop.predict_loader on the in-memory corpus (cached text features); prediction =
    inference.EmotionRecognizer.predict_many on the wav files and transcripts (decoding, tokenizing
    and embedding with RoBERTa-base included; loading RoBERTa-base is timed apart). The fastest
    of `repeats` passes after a warm-up, in fp32 and, where the CPU has native bf16, in bf16."""
    from inference.recognizer import EmotionRecognizer

    device = torch.device("cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model_cfg = base_model_cfg(run_name, paths)
        run_cfg = RunConfig(csv_path=str(paths["csv"]), data_path_audio=str(paths["audio"]),
                            data_path_roberta=str(random_text_features(paths)), eval_batch_size=n_utterances)
        corpus = quiet_load_corpus(model_cfg, run_cfg)
        durations = corpus.dataset.lengths() / SR
        chosen = np.flatnonzero((durations >= 2) & (durations <= 5))[:n_utterances]
        model = build_model(model_cfg).eval()
        loader = make_loader(corpus, chosen, run_cfg, False, device)
        audio_s = float(durations[chosen].sum())
        wavs = [str(paths["audio"] / f"{corpus.dataset.names[i]}.wav") for i in chosen]
        transcripts = corpus.table["Sentences"].iloc[chosen].tolist()
        start = time.perf_counter()
        recognizer = EmotionRecognizer({"bench": model}, str(base_roberta_dir(paths)), device, "fp32", batch_size=1)
        load_s = time.perf_counter() - start
        report = {"run": run_name, "threads": threads, "utterances": len(chosen), "audio_seconds": audio_s,
                  "load": load(), "text_encoder_load_s": load_s}
        for precision in ["fp32"] + (["bf16"] if native_bf16(device) else []):
            evaluate_s = fastest(lambda: predict_loader(model, loader, device, precision), repeats)
            recognizer.precision = precision
            with contextlib.redirect_stderr(io.StringIO()):  # progress bars
                predict_s = fastest(lambda: recognizer.predict_many(wavs, transcripts), repeats)
            report[f"evaluate_rtf_{precision}"] = evaluate_s / audio_s
            report[f"predict_rtf_{precision}"] = predict_s / audio_s
    finally:
        torch.set_num_threads(previous)
    return report


# ---------------------------------------------------------------- evaluation: exact against padded
def eval_comparison(run_name: str, paths: dict, size: str, n_utterances: int, device, precision: str,
                    repeats: int) -> list[dict]:
    """Evaluation of the same utterances (spread over the bench corpus's IEMOCAP-like
    durations, uncropped) two ways, for a group-norm encoder without attention mask
    (wav2vec2-base) and its layer-norm twin with one: exact = training.loop.make_loader's
    ExactBatchSampler (padding_exact per the encoder: equal lengths only for group norm, batches
    of 8 for layer norm), padded = length-sorted batches of 8 padded to their longest."""
    rows = []
    for norm in ("group", "layer"):
        release_memory(device)
        roberta = random_text_features(paths) if size == "base" else paths["roberta"]
        model_cfg = ModelConfig(run=run_name, wav2vec2=str(speech_encoder_dir(paths, size, norm)), alpha=0.1)
        run_cfg = RunConfig(csv_path=str(paths["csv"]), data_path_audio=str(paths["audio"]),
                            data_path_roberta=str(roberta), limit_utterances=math.ceil(4 * n_utterances / 5),
                            eval_batch_size=EVAL_BATCH, device=str(device))
        corpus = quiet_load_corpus(model_cfg, run_cfg)
        lengths = corpus.dataset.lengths()
        chosen = spread_over_durations(lengths, n_utterances)
        seed_everything(0)
        model = build_model(model_cfg).to(device).eval()
        loaders = {"exact": make_loader(corpus, chosen, run_cfg, False, device),
                   "padded": padded_eval_loader(corpus, chosen, device, EVAL_BATCH)}
        seconds = time_evaluation(model, loaders, device, precision, repeats)
        audio_s = float(lengths[chosen].sum() / SR)
        row = {"run": run_name, "size": size, "encoder_norm": norm, "padding_exact": corpus.padding_exact,
               "utterances": len(chosen), "audio_seconds": audio_s, "precision": precision, "repeats": repeats}
        for mode, loader in loaders.items():
            real, padded = padded_totals(lengths[chosen], loader.batch_sampler.batches())
            row[mode] = {"seconds": seconds[mode], "audio_s_per_s": audio_s / seconds[mode],
                         "batches": len(loader.batch_sampler.batches()), "padding_efficiency": real / padded}
        row["exact_over_padded_time"] = seconds["exact"] / seconds["padded"]
        rows.append(row)
        del model, corpus
    return rows


def format_evaluation(rows: list[dict], threads: int, device) -> list[str]:
    first = rows[0]
    threads = f", {threads} threads" if device.type == "cpu" else ""
    lines = [(f"evaluation of the same {first['utterances']} utterances ({first['audio_seconds']:.1f} s of audio, "
              f"spread over the bench corpus's durations, uncropped), {first['size']}-size {first['run']}, "
              f"{first['precision']}, {device}{threads}; fastest of {first['repeats']} pass(es) after a warm-up "
              f"batch: exact = run.py's padding-exact batches (ExactBatchSampler), padded = length-sorted batches "
              f"of {EVAL_BATCH} padded to their longest")]
    names = {"group": "group norm, no attention mask (as wav2vec2-base)",
             "layer": "layer norm + attention mask (its layer-norm twin)"}
    for row in rows:
        exact, padded = row["exact"], row["padded"]
        lines.append(f"  {names[row['encoder_norm']]}: exact {exact['seconds']:.3f} s ({exact['audio_s_per_s']:.1f} "
                     f"audio-s/s, {exact['batches']} batches, pad eff {exact['padding_efficiency']:.3f}) | padded "
                     f"{padded['seconds']:.3f} s ({padded['audio_s_per_s']:.1f} audio-s/s, {padded['batches']} "
                     f"batches, pad eff {padded['padding_efficiency']:.3f}) | exact_over_padded_time "
                     f"{row['exact_over_padded_time']:.2f}")
    return lines


def fold_epoch_projection(train_throughput: float, eval_throughput: float) -> dict:
    """One IEMOCAP fold-epoch PROJECTED from measured throughputs (no IEMOCAP-sized epoch is
    timed): one fold's training audio at ours' training throughput plus its dev and test audio
    at the exact evaluation's throughput; and the protocol of 5 folds x 100 epochs."""
    train_s, eval_s = IEMOCAP_TRAIN_S / train_throughput, IEMOCAP_EVAL_S / eval_throughput
    epoch = train_s + eval_s
    return {"method": "projected: measured throughputs x one IEMOCAP fold's audio (not a timed epoch)",
            "train_audio_s": IEMOCAP_TRAIN_S, "eval_audio_s": IEMOCAP_EVAL_S,
            "train_throughput": train_throughput, "eval_throughput": eval_throughput,
            "train_seconds": train_s, "eval_seconds": eval_s, "fold_epoch_seconds": epoch,
            "protocol_minutes_per_variant": epoch * FOLD_EPOCHS / 60,
            "protocol_hours_three_variants": epoch * PROTOCOL_EPOCHS / 3600}


def format_projection(p: dict) -> list[str]:
    return [(f"IEMOCAP fold-epoch, PROJECTED from the measured throughputs (not a timed epoch): train "
             f"{p['train_audio_s']:.0f} s of audio / {p['train_throughput']:.1f} audio-s/s (ours) = "
             f"{p['train_seconds']:.1f} s + dev and test {p['eval_audio_s']:.0f} s / {p['eval_throughput']:.1f} "
             f"audio-s/s (exact evaluation) = {p['eval_seconds']:.1f} s"),
            f"fold_epoch_seconds: {p['fold_epoch_seconds']:.1f}",
            (f"protocol (5 folds x 100 epochs, one variant): {p['protocol_minutes_per_variant']:.1f} min; "
             f"three variants: {p['protocol_hours_three_variants']:.2f} h")]


# ---------------------------------------------------------------- one variant
def quiet_load_corpus(model_cfg, run_cfg):
    run_cfg.cache_dir = run_cfg.cache_dir or str(Path(run_cfg.csv_path).parent / "cache")  # beside the bench's corpus
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars
        return prepared_corpus(model_cfg, run_cfg)


def corpus_megabytes(corpus) -> float:
    """The decoded audio and text features in the corpus's caches (streamed: not held in memory)."""
    stores = [corpus.dataset.waves.samples, corpus.dataset.text_features]
    return sum(store.nbytes for store in stores if store is not None) / 2**20


def crop(corpus, max_samples: int | None) -> None:
    """Cut every wave to max_samples (base size on CPU: short clips only)."""
    if max_samples:
        corpus.dataset.waves.max_samples = max_samples
        corpus.dataset.sample_lengths = corpus.dataset.waves.lengths()


def bench_run(run_name: str, args, paths: dict, device, first: bool) -> dict:
    """Load the corpus for one variant and time every arm on it."""
    encoder = str(speech_encoder_dir(paths, args.size, args.encoder_norm))
    roberta = random_text_features(paths) if args.size == "base" else paths["roberta"]
    model_cfg = ModelConfig(run=run_name, wav2vec2=encoder, alpha=0.1)
    base_cfg = RunConfig(csv_path=str(paths["csv"]), data_path_audio=str(paths["audio"]),
                         data_path_roberta=str(roberta), limit_utterances=math.ceil(args.utterances / 5),
                         seed=0, device=str(device))
    corpus = quiet_load_corpus(model_cfg, base_cfg)
    durations_s = corpus.dataset.lengths() / SR  # before cropping: what the corpus line describes
    max_samples = int(args.max_seconds * SR) if args.max_seconds else None
    crop(corpus, max_samples)
    indices = np.arange(len(corpus.table))
    sources = {"audio": paths["audio"], "roberta": roberta if MODELS[run_name].uses_text else None,
               "max_samples": max_samples}
    plan = Plan(warmup_steps=args.warmup_steps, epochs=args.epochs_measured, steps=args.steps)
    refusal = conv_cache_allowed(encoder)
    arms = arms_for(ours_settings(args.ours, device, encoder_config(encoder).hidden_size), ladder=first and args.ladder,
                    cpu_bf16=first and device.type == "cpu" and native_bf16(device) and args.cpu_bf16_row is not False,
                    conv_cache=first and refusal is None and args.conv_cache_row is not False,
                    also=list(args.also.items()) if first else ())

    def measure(arm):
        m = measure_arm(arm, model_cfg, corpus, indices, base_cfg, device, plan, sources)
        print(f"  {run_name:<18} {arm.label:<48} {m.throughput:8.1f} audio-s/s", flush=True)
        return m

    results = measure_rounds(arms, args.rounds, measure)
    ours = next(arm for arm in arms if arm.role == "ours")
    profile = profile_arm(ours, model_cfg, corpus, indices, base_cfg, device) if args.profile and first else None
    return {"run": run_name, "utterances": len(indices), "audio_seconds": float(corpus.dataset.lengths().sum() / SR),
            "corpus_mb": corpus_megabytes(corpus), "measurements": results, "model_cfg": model_cfg,
            "profile": profile, "conv_cache_refusal": refusal, "durations_s": durations_s}


def add_flops(result: dict, flops: FlopModel) -> None:
    """Executed FLOPs of the timed batches (padding included), for FLOP/s and MFU, and the
    timed utterances' own FLOPs (the FLOP model per audio second x the audio trained on), for
    the fraction of the matmul peak."""
    for m in result["measurements"]:
        m.model_flops = float(sum(size * flops(samples) for size, samples in m.batch_shapes))
        m.useful_flops = float(flops(np.asarray(m.utterance_samples)).sum())


# ---------------------------------------------------------------- against the measured matmul peak
def peak_precisions(results: list[dict], device) -> list[str]:
    """The matmul peaks to measure: bf16 on a GPU (every row is quoted against it, the MFU
    convention); on a CPU fp32, and bf16 where it is native or some row runs in it."""
    if device.type == "cuda":
        return ["bf16", "fp32"]
    used = {m.precision for r in results for m in r["measurements"]}
    return ["fp32"] + (["bf16"] if native_bf16(device) or "bf16" in used else [])


def format_efficiency(results: list[dict], peak: dict, device) -> list[str]:
    every_row = " (bf16 on a GPU, for every row)" if device.type == "cuda" else ""
    lines = [describe_matmul_peak(peak),
             ("achieved = model FLOPs of the timed utterances per second: the FLOP model's count of each utterance "
              "as if alone (padding, recomputation under checkpointing and work the conv cache skips do not change "
              "it; every encoder layer counted, LayerDrop skips ~10 %); fraction = achieved / the measured peak of "
              f"the row's precision{every_row}")]
    for result in results:
        for m in result["measurements"]:
            e = efficiency(m, peak, device)
            if e["fraction_of_matmul_peak"] is None:
                continue
            lines.append(f"  {result['run']:<18} {m.label:<48} achieved_tflops {e['achieved_tflops']:.4g}  "
                         f"peak_tflops {e['peak_tflops']:.4g} ({e['peak_precision']})  "
                         f"fraction_of_matmul_peak {e['fraction_of_matmul_peak']:.3f}")
    return lines


# ---------------------------------------------------------------- report
def describe_corpus(durations_s: np.ndarray) -> str:
    d = np.asarray(durations_s)
    return (f"{len(d)} utterances, {d.sum():.0f} s of audio (mean {d.mean():.2f} s, median {np.median(d):.2f} s, "
            f"p90 {np.percentile(d, 90):.1f} s, max {d.max():.1f} s)")


def format_rows(results: list[dict], peak: float | None) -> list[str]:
    head = (f"{'run':<18} {'configuration':<48} {'audio-s/s':>9} {'epoch s':>9} {'pad eff':>7} "
            f"{'peak MB':>8} {'GFLOP/s':>8} {'MFU':>6} {'IEMOCAP train':>13} {'x upstream':>10}")
    lines = [head, "-" * len(head)]
    for result in results:
        upstream = pick(result, "upstream").throughput
        for m in result["measurements"]:
            gflops = m.model_flops / m.seconds / 1e9 if m.model_flops else None
            mfu = f"{100 * gflops * 1e9 / peak:5.1f}%" if gflops and peak else "-"
            epoch = f"{m.epoch_seconds:.1f}{'' if m.epoch_measured else ' e'}"
            lines.append(f"{result['run']:<18} {m.label:<48} {m.throughput:9.1f} {epoch:>9} "
                         f"{m.padding_efficiency:7.3f} {m.peak_memory_mb:8.0f} "
                         f"{(f'{gflops:8.1f}' if gflops else '-'):>8} {mfu:>6} "
                         f"{IEMOCAP_TRAIN_S / m.throughput / 60:11.1f} m {m.throughput / upstream:10.2f}")
    return lines


def format_flops(flops: list[dict], measured_mfu: float | None) -> list[str]:
    peak = PEAK_BF16_DENSE["H100"]
    lines = [f"{'run':<18} {'train GFLOP/audio-s':>19} {'eval GFLOP/audio-s':>18} {'PFLOP/epoch':>11} "
             f"{'H100 epoch @40%':>15} {'protocol @40%':>13}" + (f" {'@measured MFU':>13}" if measured_mfu else "")]
    for f in flops:
        at_40 = projected_seconds(f["epoch_pflop"], peak, ASSUMED_MFU)
        line = (f"{f['run']:<18} {f['train_gflop_per_audio_s']:19.1f} {f['eval_gflop_per_audio_s']:18.1f} "
                f"{f['epoch_pflop']:11.2f} {at_40:13.1f} s {at_40 * PROTOCOL_EPOCHS / 3600:11.2f} h")
        if measured_mfu:
            line += f" {projected_seconds(f['epoch_pflop'], peak, measured_mfu):11.1f} s"
        lines.append(line)
    return lines


def print_report(machine: dict, args, corpus_line: str, results, flops, rtfs, peak, padding,
                 sections: list[list[str]] = ()) -> float:
    """The tables, then `sections` (matmul peak, evaluation, projection), then the speedup lines;
    the last line is `speedup_vs_upstream_config: <float>`."""
    plan = (f"{args.steps} optimizer steps (epoch time extrapolated: 'e')" if args.steps
            else f"{args.epochs_measured} full epoch(s)")
    print("\n== MMER training throughput ==")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print(f"corpus: synthetic IEMOCAP-format, IEMOCAP durations: {corpus_line}"
          + (f"; cropped to {args.max_seconds} s" if args.max_seconds else "")
          + f"; {results[0]['corpus_mb']:.0f} MB in the corpus's decode-once caches ({results[0]['run']}), streamed from disk")
    ours = ours_settings(args.ours, torch.device(machine["device"]))
    batch = ("effective batch 8 on every row" if ours["batch_size"] * ours["accum_grad"] == 8 else
             f"WARNING: ours' effective batch is {ours['batch_size'] * ours['accum_grad']}, upstream's 8")
    print(f"encoders: {args.size}; timed: {plan} after {args.warmup_steps} warm-up optimizer steps, fastest of "
          f"{args.rounds} round(s); {batch}; same model, initial weights and AdamW")
    print("upstream = batch 2 x accumulation 4, random order, fp32, wav decoded + normalised from disk per item, "
          "1 loader worker, loss.item() every micro-batch")
    print(f"IEMOCAP train = one fold's {IEMOCAP_TRAIN_S:.0f} s of training audio / throughput, extrapolated; "
          "GFLOP/s = executed FLOPs (padding included, FlopCounterMode) / time; MFU against bf16 dense peak\n")
    print("\n".join(format_rows(results, peak)))
    print(f"\npadding efficiency at IEMOCAP scale (samplers only, one fold's ~3,980 training utterances): "
          f"upstream {padding['upstream']:.3f}, ours {padding['ours']:.3f}")
    if flops:
        mfu = measured_mfu(results, peak)
        print(f"\nbase-size FLOPs (torch FlopCounterMode; train = forward + backward of a training step, eval = "
              f"forward) per audio second over 5531 IEMOCAP-like durations; epoch = {IEMOCAP_TRAIN_S:.0f} s train "
              f"+ {IEMOCAP_EVAL_S:.0f} s eval, training at ours' IEMOCAP-scale padding efficiency")
        print("PROJECTION, not a measurement: H100 at 40 % of 989 TFLOP/s bf16 dense"
              + (f", and at the measured MFU {100 * mfu:.1f} %" if mfu else "")
              + f"; protocol = {PROTOCOL_EPOCHS} epochs (3 variants x 5 folds x 100)")
        print("\n".join(format_flops(flops, mfu)))
    for rtf in rtfs:
        print(f"\nCPU real-time factor (compute s / audio s), base-size {rtf['run']}, {rtf['threads']} threads, "
              f"{rtf['utterances']} utterances of 2-5 s ({rtf['audio_seconds']:.1f} s), load {rtf['load']}; "
              "evaluation = training.loop.predict_loader (cached text features), prediction = "
              "EmotionRecognizer.predict_many (decoding, RoBERTa-base embedding included)")
        for precision in ("fp32", "bf16"):
            if f"evaluate_rtf_{precision}" in rtf:
                print(f"  {precision}: evaluation {rtf[f'evaluate_rtf_{precision}']:.3f}, "
                      f"prediction {rtf[f'predict_rtf_{precision}']:.3f}")
        print(f"  loading RoBERTa-base (once per predict.py call, not per audio second): "
              f"{rtf['text_encoder_load_s']:.2f} s")
    if results[0]["profile"]:
        print("\nprofile of " + results[0]["profile"])
    for lines in sections:
        print("\n" + "\n".join(lines))
    ours, upstream = pick(results[0], "ours"), pick(results[0], "upstream")
    speedup = ours.throughput / upstream.throughput
    print(f"\n{results[0]['run']}: ours {ours.throughput:.1f} vs upstream {upstream.throughput:.1f} "
          f"audio-s/s on {args.size} encoders ({machine['device']}), peak memory {ours.peak_memory_mb:.0f} MB")
    if results[0]["conv_cache_refusal"]:
        print(f"{results[0]['run']}: no --cache_conv_features row: run.py refuses it, the speech encoder "
              f"{results[0]['conv_cache_refusal']}")
    for m in results[0]["measurements"]:
        if m.role in ("precision", "conv_cache", "also"):
            print(f"{results[0]['run']}: {m.label} {m.throughput:.1f} audio-s/s, "
                  f"{m.throughput / ours.throughput:.2f} x ours, {m.throughput / upstream.throughput:.2f} x upstream, "
                  f"peak memory {m.peak_memory_mb:.0f} MB")
    print(f"speedup_vs_upstream_config: {speedup:.2f}")
    return speedup


def measured_mfu(results, peak) -> float | None:
    ours = pick(results[0], "ours")
    return ours.model_flops / ours.seconds / peak if ours.model_flops and peak else None


def write_json(path: Path, machine, args, results, flops, rtf, speedup, padding, extra: dict) -> None:
    """Every figure; `extra`: the matmul peak, the evaluation comparison, the fold-epoch projection."""
    device = torch.device(machine["device"])
    rows = [{"run": r["run"], **{k: v for k, v in dataclasses.asdict(m).items()
                                 if k not in ("batch_shapes", "utterance_samples")},
             "throughput_audio_s_per_s": m.throughput, "padding_efficiency": m.padding_efficiency,
             **(efficiency(m, extra["matmul_peak"], device) if extra.get("matmul_peak") else {})}
            for r in results for m in r["measurements"]]
    record = {"machine": machine, "command": " ".join(sys.argv), "args": {k: str(v) for k, v in vars(args).items()},
              "measurements": rows, "iemocap_scale_padding_efficiency": padding, "flops": flops, "rtf": rtf,
              "conv_cache_refusal": results[0]["conv_cache_refusal"], **extra,
              "speedup_vs_upstream_config": speedup}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------- main
def key_value(text: str) -> tuple:
    """`name=value` for a RunConfig field, the value typed like the field's default."""
    name, _, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    if name not in fields or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
    default = getattr(RunConfig(), name)
    if isinstance(default, bool):
        return name, value.lower() in ("1", "true", "yes")
    return name, type(default)(value) if default is not None else (int(value) if value.isdigit() else value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--size", choices=["tiny", "base"], help="encoder size (default: tiny on CPU, base on GPU)")
    p.add_argument("--encoder_norm", choices=["group", "layer"], default="group",
                   help="the speech encoder's feature-encoder norm: group (wav2vec2-base, default) or layer "
                        "(wav2vec2-large-lv60's choice at the same size); a --cache_conv_features row is added "
                        "wherever run.py accepts the flag for the encoder")
    p.add_argument("--runs", nargs="+", choices=list(MODELS),
                   help="variants to time; the first one gives the speedup line and the ladder (default: all "
                        "three, mmer only with --size base on CPU)")
    p.add_argument("--utterances", type=int, help="bench corpus size (default: 100 tiny CPU, 15 base CPU, 1000 GPU)")
    p.add_argument("--epochs_measured", type=int, help="full epochs timed after the warm-up (default 1)")
    p.add_argument("--steps", type=int, help="time only this many optimizer steps (the same batches in every "
                   "round) and extrapolate the epoch time")
    p.add_argument("--warmup_steps", type=int, help="optimizer steps run before timing (default 2; 1 on CPU "
                   "with --size base)")
    p.add_argument("--rounds", type=int, help="times each configuration is timed, order alternating; the fastest "
                   "counts (default on CPU: 3, 2 with --size base; on GPU: 1)")
    p.add_argument("--max_seconds", type=float, help="crop every utterance (default on CPU with --size base: 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch.set_num_threads for training, both configurations (default: torch's own "
                        "default, which upstream and run.py both run with; upstream's loader worker shares "
                        "the cores)")
    p.add_argument("--rtf_threads", type=int, nargs="+", default=[2],
                   help="torch threads for the CPU real-time factors (one measurement per value)")
    p.add_argument("--ours", nargs="*", type=key_value, default=[],
                   help="RunConfig fields of our configuration (default: run.py's defaults for "
                        f"{', '.join(SETTINGS)}), e.g. batch_size=8 accum_grad=1 compile=true")
    p.add_argument("--also", nargs="*", type=key_value, default=[],
                   help="one more row per NAME=VALUE: ours with that one RunConfig setting changed (first run), "
                        "e.g. gradient_checkpointing=true compile=true")
    p.add_argument("--cpu_bf16_row", action=argparse.BooleanOptionalAction,
                   help="time ours in the other precision on CPU, bf16 or fp32 (default: where the CPU multiplies "
                        "bf16 natively)")
    p.add_argument("--conv_cache_row", action=argparse.BooleanOptionalAction,
                   help="time ours + --cache_conv_features (default: wherever run.py accepts it for the encoder)")
    p.add_argument("--ladder", action=argparse.BooleanOptionalAction,
                   help="one row per optimisation for the first run (default: on, off for base size on CPU)")
    p.add_argument("--rtf_utterances", type=int, default=6, help="utterances for the CPU real-time factors (0: skip)")
    p.add_argument("--no_flops", action="store_true", help="skip the base-size FLOP count and projection")
    p.add_argument("--matmul_size", type=int,
                   help="block size of the matmul-peak micro-benchmark (default 2048 on CPU, 8192 on GPU)")
    p.add_argument("--eval_utterances", type=int,
                   help="utterances of the exact-vs-padded evaluation comparison (default 8 on CPU, 4 with "
                        "--quick, 200 on GPU; 0: skip)")
    p.add_argument("--eval_size", choices=["tiny", "base"], default="base",
                   help="encoder size of the evaluation comparison (default base: wav2vec2-base and its "
                        "layer-norm twin)")
    p.add_argument("--bench_dir", type=Path, default=BENCH_DIR,
                   help="where the bench corpus and encoders are built once and kept (default data/bench)")
    p.add_argument("--corpus_per_session", type=int,
                   help="utterances per session of the bench corpus built (default: max(100, utterances / 5), "
                        "so that the default runs share one corpus)")
    p.add_argument("--prepare_only", action="store_true",
                   help="build the corpus and the encoders this command would use, then stop")
    p.add_argument("--peak_tflops", type=float, help="accelerator peak for MFU (default: known GPUs, bf16 dense)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of ours (first run)")
    p.add_argument("--json", type=Path, help="also write the figures to this json file")
    p.add_argument("--quick", action="store_true", help="~30 s smoke run: mmer only, small corpus, no ladder")
    return p.parse_args(argv)


def resolve_defaults(args, device) -> None:
    """Defaults that depend on the device and size, chosen so a CPU run takes minutes."""
    on_cpu = device.type == "cpu"
    args.size = args.size or ("tiny" if on_cpu else "base")
    base_on_cpu = on_cpu and args.size == "base"
    args.ours = dict(args.ours)
    args.runs = args.runs or (["mmer"] if base_on_cpu else list(MODELS))
    if args.quick:
        args.runs, args.ladder, args.rounds = args.runs[:1], bool(args.ladder), args.rounds or 1
        args.utterances = args.utterances or (10 if base_on_cpu else 40)
        args.warmup_steps = 1 if args.warmup_steps is None else args.warmup_steps
        args.rtf_utterances = min(args.rtf_utterances, 2)
    # A shared CPU is noisy: small corpora timed whole, so that every configuration trains on
    # the same utterances, and several rounds, so that a slow spell spoils a round, not a figure.
    args.utterances = args.utterances or ((15 if base_on_cpu else 100) if on_cpu else 1000)
    args.rounds = args.rounds or ((2 if base_on_cpu else 3) if on_cpu else 1)
    args.epochs_measured = args.epochs_measured or 1
    args.warmup_steps = (1 if base_on_cpu else 2) if args.warmup_steps is None else args.warmup_steps
    args.max_seconds = args.max_seconds or (3.0 if base_on_cpu else None)
    if args.ladder is None:  # with base size on CPU the ladder would triple a 3-minute run
        args.ladder = not base_on_cpu
    # Three lengths fit the FLOP model exactly when 2.5 tokens per second is a whole number.
    args.flop_lengths = (1.2, 2.0, 4.0) if args.quick else (2.0, 4.0, 8.0)
    args.rtf_repeats = 1 if args.quick else 3
    args.also = dict(args.also)
    args.corpus_per_session = args.corpus_per_session or max(100, math.ceil(args.utterances / 5))
    if args.eval_utterances is None:
        args.eval_utterances = (4 if args.quick else 8) if on_cpu else 200
    args.eval_repeats = 1 if args.quick else (2 if on_cpu else 3)


def prepare_encoders(args, paths: dict) -> list[Path]:
    """Every encoder and text-feature folder this command will load, built now (the first
    base-size run saves random wav2vec2-base weights; gpu_check.sh times this apart)."""
    built = [speech_encoder_dir(paths, args.size, args.encoder_norm)]
    if args.size == "base" or (args.eval_size == "base" and args.eval_utterances):
        built.append(random_text_features(paths))
    if args.size == "base" or not args.no_flops:
        built.append(speech_encoder_dir(paths, "base"))
    if args.eval_utterances:
        built += [speech_encoder_dir(paths, args.eval_size, norm) for norm in ("group", "layer")]
    if args.rtf_utterances:
        built.append(base_roberta_dir(paths))
    return built


def main(argv=None) -> float | None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    resolve_defaults(args, device)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths = prepare_bench_corpus(per_session=args.corpus_per_session, bench_dir=args.bench_dir)
    if args.prepare_only:
        built = prepare_encoders(args, paths)
        print(f"prepared: {paths['csv'].parent} and {', '.join(str(p.name) for p in built)} under {args.bench_dir}")
        return None
    machine = describe_machine(device)
    print(f"bench on {device} ({args.size} encoders, {args.threads} threads), runs {args.runs}", flush=True)
    results = [bench_run(name, args, paths, device, first=i == 0) for i, name in enumerate(args.runs)]
    peak = peak_flops(device, args.peak_tflops)
    machine["load_average_1min_at_end"] = load()
    padding = {"upstream": iemocap_scale_padding(UPSTREAM),
               "ours": iemocap_scale_padding(ours_settings(args.ours, device))}
    base = {} if args.no_flops and args.size != "base" else {
        name: flop_models(base_model_cfg(name, paths), device, args.flop_lengths) for name in args.runs}
    for result in results:  # FLOP/s and MFU of the size actually trained
        trained = base[result["run"]] if args.size == "base" else flop_models(result["model_cfg"], device)
        add_flops(result, trained[0])
    flops = [] if args.no_flops else [flop_report(name, base[name], padding["ours"]) for name in args.runs]
    extra, sections = measure_against_hardware(args, paths, device, results)
    rtfs = [rtf_report(args.runs[0], paths, args.rtf_utterances, threads, args.rtf_repeats)
           for threads in args.rtf_threads if args.rtf_utterances]
    speedup = print_report(machine, args, describe_corpus(results[0]["durations_s"]), results, flops, rtfs, peak,
                           padding, sections)
    if args.json:
        write_json(args.json, machine, args, results, flops, rtfs, speedup, padding, extra)
    return speedup


def measure_against_hardware(args, paths: dict, device, results: list[dict]) -> tuple[dict, list[list[str]]]:
    """The matmul peak and each row's fraction of it; the exact-vs-padded evaluation; and, where
    that evaluation ran at the trained size, the IEMOCAP fold-epoch projected from both."""
    extra = {"matmul_peak": matmul_peak(device, args.matmul_size, peak_precisions(results, device))}
    sections = [format_efficiency(results, extra["matmul_peak"], device)]
    if args.eval_utterances:
        precision = evaluation_precision(ours_settings(args.ours, device)["precision"])
        extra["evaluation"] = eval_comparison(args.runs[0], paths, args.eval_size, args.eval_utterances, device,
                                              precision, args.eval_repeats)
        sections.append(format_evaluation(extra["evaluation"], args.threads, device))
        if args.eval_size == args.size:
            exact = next(r for r in extra["evaluation"] if r["encoder_norm"] == args.encoder_norm)["exact"]
            extra["fold_epoch_projection"] = fold_epoch_projection(pick(results[0], "ours").throughput,
                                                                   exact["audio_s_per_s"])
            sections.append(format_projection(extra["fold_epoch_projection"]))
    return extra, sections


if __name__ == "__main__":
    main()
    # Spare the interpreter's last collection over torch's, transformers' and scikit-learn's objects
    # (about 3 s of exit on a busy 2-core machine, each of gpu_check.sh's steps): nothing left needs it.
    gc.freeze()
