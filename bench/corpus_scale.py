"""Corpora bigger than memory: what a run costs as the corpus grows, with every item streamed
from the decode-once caches (dataio/store.py).

    python bench/corpus_scale.py                       # 2, 8 and 24 h, the demo, a 150,000-row table
    python bench/corpus_scale.py --hours 2 --rows 20000 --demo_rounds 1    # a quick look

1. Corpora of 2, 8 and 24 hours (IEMOCAP's log-normal durations, mean 4.5 s; 16-bit noise at
   16 kHz and random text features; the tables are prefixes of one generated folder): the
   same debug run of run.py (mmer, tiny encoders, fold 1, one epoch of --max_steps steps, then
   dev and test in full) under /usr/bin/time -v, first with a cold cache (the audio decoded once
   and the text features gathered) and then with a warm one: peak RSS and wall time. Then, in a
   fresh process on the warm cache: the time from start to the first training batch and the
   training throughput over --probe_steps steps.
2. The demo (sh best_run.sh's corpus): training throughput of one epoch streamed against the
   same corpus held in memory (the path before the caches), alternated, fastest of
   --demo_rounds each, as a ratio; and the streamed epoch with 0, 1 and 2 DataLoader workers.
3. A table of --rows rows (0.1 s files): the time to read and check it as run.py does before
   anything is written (the table, then every file's header, in threads).

Figures depend on the machine and its load (printed). The last line is
`peak_rss_ratio_24h_over_2h: <float>` (the issue's bound: 1.25)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
from tqdm import tqdm  # noqa: E402

BENCH_DIR = ROOT / "bench" / "results" / "corpus_scale"
SR = 16000
LABELS = ("neu", "hap", "ang", "sad")
LOG_MEDIAN, LOG_SD = math.log(3.6), math.sqrt(2 * math.log(4.5 / 3.6))  # IEMOCAP: median 3.6 s, mean 4.5 s


# ---------------------------------------------------------------- corpora
def tiny_models(folder: Path) -> dict:
    from synthetic.tiny_models import make_tiny_models
    if not (folder / "wav2vec2").is_dir():
        make_tiny_models(folder, seed=0)
    width = json.loads((folder / "roberta" / "config.json").read_text())["hidden_size"]
    return {"wav2vec2": folder / "wav2vec2", "roberta": folder / "roberta", "width": width}


def make_corpus(folder: Path, hours: float, width: int, seed: int = 0) -> pd.DataFrame:
    """Utterances of IEMOCAP's durations until `hours` of audio, written once (skipped when the
    folder already holds them): audio/<name>.wav, roberta/<name>.npy and corpus.csv."""
    table_path = folder / "corpus.csv"
    if table_path.is_file():
        table = pd.read_csv(table_path)
        if table["duration"].sum() >= hours * 3600:
            return table
    rng = np.random.default_rng(seed)
    durations = []
    while sum(durations) < hours * 3600:
        durations.append(float(np.clip(rng.lognormal(LOG_MEDIAN, LOG_SD), 0.6, 30.0)))
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    (folder / "roberta").mkdir(exist_ok=True)
    rows = []
    for i, seconds in enumerate(tqdm(durations, desc=f"writing {hours:g} h", leave=False)):
        name = f"Ses0{i % 5 + 1}F_u{i:06d}"
        samples = (rng.standard_normal(int(seconds * SR)) * 3000).clip(-32768, 32767).astype(np.int16)
        sf.write(folder / "audio" / f"{name}.wav", samples, SR, subtype="PCM_16")
        words = max(1, int(seconds * 2.5))
        np.save(folder / "roberta" / f"{name}.npy", rng.standard_normal((words + 2, width)).astype(np.float32))
        rows.append({"FileName": name, "Label": LABELS[i % 4], "text": " ".join(["HELLO"] * words),
                     "session": i % 5 + 1, "duration": len(samples) / SR})
    table = pd.DataFrame(rows)
    table.to_csv(table_path, index=False)
    return table


def prefix_table(folder: Path, table: pd.DataFrame, hours: float) -> Path:
    """The first rows of the corpus that hold `hours` of audio, as their own table."""
    rows = int(np.searchsorted(table["duration"].cumsum().to_numpy(), hours * 3600)) + 1
    path = folder / f"table_{hours:g}h.csv"
    table.iloc[:rows].to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- run.py's settings
# A run's settings here are run.py's flags without their dashes, typed as run.py parses them
# (json-able, so that the probe's process gets them too): run_flags gives them to run.py,
# configs resolves them in this process as run.py does.
def run_flags(settings: dict) -> list[str]:
    """The run.py command line that gives these settings."""
    flags = []
    for key, value in settings.items():
        if value is True:
            flags.append(f"--{key}")
        else:
            flags += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return flags


def configs(settings: dict):
    """run.py's two configurations for these settings, every other one at run.py's default;
    resolved by run.py's own resolve_configs (paths made absolute, the features' text encoder
    and the --cache_conv_features default filled in)."""
    from training.config import MODEL_FLAGS, RECORDED_RUN, RunConfig, resolve_configs
    defaults = {**dataclasses.asdict(RunConfig()), **dict.fromkeys(MODEL_FLAGS), **dict.fromkeys(RECORDED_RUN)}
    return resolve_configs(argparse.Namespace(**{**defaults, **settings}), {})


# ---------------------------------------------------------------- the debug run, measured
def debug_settings(folder: Path, table: Path, models: dict, out: Path, steps: int) -> dict:
    return {"run": "mmer", "alpha": 0.1, "csv_path": str(table), "data_path_audio": str(folder / "audio"),
            "data_path_roberta": str(folder / "roberta"), "wav2vec2": str(models["wav2vec2"]),
            "roberta": str(models["roberta"]), "sessions": ["1"], "epochs": 1, "max_steps": steps,
            "batch_size": 8, "accum_grad": 1, "device": "cpu", "precision": "fp32",
            "save_path": str(out / "runs"), "cache_dir": str(out / "cache"), "overwrite": True,
            "max_audio_samples": MAX_SECONDS * SR}


# The debug run's peak RSS is set by the longest training batch its few steps draw (8 x up to
# 30 s): a random draw, not the corpus size. Cut at 6 s, every corpus's draw reaches the cap
# (a fifth of IEMOCAP-like utterances are longer), so the peaks compare the corpora alone.
MAX_SECONDS = 6


def timed(argv: list[str]) -> dict:
    """A command under /usr/bin/time -v: its peak RSS (MB) and wall seconds."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *argv], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed:\n{done.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"peak_rss_mb": peak_kb / 1024, "wall_s": wall, "stdout": done.stdout}


def probe(settings: dict, steps: int) -> dict:
    """In this process: run.py's corpus and fold-1 training loader from the warm cache, the
    seconds to the first batch, then --probe_steps training steps of the tiny model."""
    import torch

    from training.folds import fold_of
    from training.inputs import prepared_corpus
    from training.loop import build_training, make_loader, train_epoch
    start = time.perf_counter()
    model_cfg, run_cfg = configs(settings)
    with contextlib.redirect_stderr(io.StringIO()):
        corpus_ = prepared_corpus(model_cfg, run_cfg)
    fold = fold_of(corpus_, "1", run_cfg)
    device = torch.device("cpu")
    loader = make_loader(corpus_, fold.train, run_cfg, True, device)
    next(iter(loader))
    first_batch = time.perf_counter() - start
    model, optimizer = build_training(model_cfg, run_cfg, device)
    run_cfg.max_steps = steps
    tick = time.perf_counter()
    record = train_epoch(model, loader, optimizer, run_cfg, device, epoch=1)
    return {"first_batch_s": first_batch, "train_audio_s_per_s": record["audio_seconds"] / (time.perf_counter() - tick),
            "utterances": len(corpus_.table)}


def scale_rows(args, models: dict) -> list[dict]:
    folder = args.bench_dir / "corpus"
    table = make_corpus(folder, max(args.hours), models["width"])
    rows = []
    for hours in args.hours:
        out = args.bench_dir / f"run_{hours:g}h"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        settings = debug_settings(folder, prefix_table(folder, table, hours), models, out, args.steps)
        cold = timed([sys.executable, "run.py", *run_flags(settings)])
        warm = timed([sys.executable, "run.py", *run_flags(settings)])
        probed = json.loads(timed([sys.executable, __file__, "--probe", json.dumps(settings),
                                   "--probe_steps", str(args.probe_steps)])["stdout"].strip().splitlines()[-1])
        cache_gb = sum(p.stat().st_size for p in (out / "cache").rglob("*") if p.is_file()) / 1e9
        rows.append({"hours": hours, "utterances": probed["utterances"], "cold_peak_rss_mb": cold["peak_rss_mb"],
                     "cold_wall_s": cold["wall_s"], "warm_peak_rss_mb": warm["peak_rss_mb"],
                     "warm_wall_s": warm["wall_s"], "first_batch_s": probed["first_batch_s"],
                     "train_audio_s_per_s": probed["train_audio_s_per_s"], "cache_gb": cache_gb})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------- the demo: streamed vs in memory, workers
def demo_paths() -> dict:
    demo = Path(os.environ.get("MMER_DEMO_DIR", ROOT / "data" / "demo"))
    if not (demo / "prepared" / "iemocap.csv").is_file() or not (demo / "prepared" / "roberta").is_dir():
        subprocess.run(["sh", "-c", f'PY="{sys.executable}"; . scripts/demo_data.sh'], cwd=ROOT, check=True,
                       env={**os.environ, "MMER_DEMO_DIR": str(demo)}, stdout=subprocess.DEVNULL)
    return {"csv": demo / "prepared" / "iemocap.csv", "audio": demo / "prepared" / "audio",
            "roberta": demo / "prepared" / "roberta", "wav2vec2": demo / "models" / "wav2vec2",
            "roberta_model": demo / "models" / "roberta"}


def in_memory(streamed, model_cfg, run_cfg):
    """The same corpus with every item decoded into memory (run.py's path before the caches)."""
    from dataio import corpus
    from dataio.dataset import EmotionDataset, load_text_features, load_waves
    from models.encoders import audio_input_spec
    from training.inputs import Corpus
    frame = streamed.table
    waves = load_waves(corpus.audio_paths(frame, run_cfg.data_path_audio), audio_input_spec(model_cfg.wav2vec2),
                       show_progress=False, max_samples=model_cfg.max_audio_samples)
    text = load_text_features(frame["FileName"], run_cfg.data_path_roberta, show_progress=False)
    dataset = EmotionDataset(frame["FileName"], waves, frame["label_index"], frame["text"], text, run_cfg.ctc_text)
    return Corpus(frame, dataset, streamed.collate, streamed.padding_exact, streamed.scheme, streamed.label_set)


def demo_rows(args) -> dict:
    import torch

    from training.folds import fold_of
    from training.inputs import prepared_corpus
    from training.loop import build_training, make_loader, train_epoch
    from utils.distributed import seed_rank
    paths = demo_paths()
    model_cfg, run_cfg = configs({
        "run": "mmer", "alpha": 0.1, "csv_path": str(paths["csv"]), "data_path_audio": str(paths["audio"]),
        "data_path_roberta": str(paths["roberta"]), "wav2vec2": str(paths["wav2vec2"]),
        "roberta": str(paths["roberta_model"]), "batch_size": 8, "accum_grad": 1, "device": "cpu",
        "precision": "fp32", "learning_rate": 1e-3, "cache_dir": str(args.bench_dir / "demo_cache")})
    with contextlib.redirect_stderr(io.StringIO()):
        streamed = prepared_corpus(model_cfg, run_cfg)
    memory = in_memory(streamed, model_cfg, run_cfg)
    fold = fold_of(streamed, "1", run_cfg)
    device = torch.device("cpu")

    def epoch_throughput(corpus_, workers: int) -> float:
        run_cfg.num_workers = workers
        torch.manual_seed(0)
        seed_rank(0, 1)
        model, optimizer = build_training(model_cfg, run_cfg, device)
        loader = make_loader(corpus_, fold.train, run_cfg, True, device)
        tick = time.perf_counter()
        record = train_epoch(model, loader, optimizer, run_cfg, device, epoch=1)
        return record["audio_seconds"] / (time.perf_counter() - tick)

    best = {"memory": 0.0, "streamed": 0.0}
    for _ in range(args.demo_rounds):
        for name, corpus_ in (("memory", memory), ("streamed", streamed)):
            best[name] = max(best[name], epoch_throughput(corpus_, 0))
    workers = {w: max(epoch_throughput(streamed, w) for _ in range(args.demo_rounds)) for w in (0, 1, 2)}
    return {"utterances": len(fold.train), "memory_audio_s_per_s": best["memory"],
            "streamed_audio_s_per_s": best["streamed"], "streamed_over_memory": best["streamed"] / best["memory"],
            "workers_audio_s_per_s": workers}


# ---------------------------------------------------------------- reading and checking a big table
def table_check(args) -> dict:
    """run.py's checks before anything is written (read_corpus_table, check_inputs) on a table
    of --rows rows of 0.1 s files, audio only (unimodal_baseline)."""
    from training.inputs import check_inputs, read_corpus_table
    folder = args.bench_dir / f"table_{args.rows}"
    audio = folder / "audio"
    table_path = folder / "corpus.csv"
    if not table_path.is_file():
        audio.mkdir(parents=True, exist_ok=True)
        silence = np.zeros(SR // 10, np.int16)
        names = [f"Ses0{i % 5 + 1}F_t{i:06d}" for i in range(args.rows)]
        for name in tqdm(names, desc=f"writing {args.rows} files", leave=False):
            sf.write(audio / f"{name}.wav", silence, SR, subtype="PCM_16")
        pd.DataFrame({"FileName": names, "Label": [LABELS[i % 4] for i in range(args.rows)],
                      "session": [i % 5 + 1 for i in range(args.rows)]}).to_csv(table_path, index=False)
    models = tiny_models(args.bench_dir / "models")
    model_cfg, run_cfg = configs({"run": "unimodal_baseline", "alpha": 0.0, "csv_path": str(table_path),
                                  "data_path_audio": str(audio), "wav2vec2": str(models["wav2vec2"])})
    subprocess.run(["sh", "-c", "sync"], check=True)
    start = time.perf_counter()
    table = read_corpus_table(model_cfg, run_cfg)
    read = time.perf_counter() - start
    check_inputs(table, model_cfg, run_cfg)
    return {"rows": len(table.frame), "read_s": read, "read_and_check_s": time.perf_counter() - start}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, nargs="+", default=[2, 8, 24])
    parser.add_argument("--steps", type=int, default=20, help="training steps of each debug run")
    parser.add_argument("--probe_steps", type=int, default=40, help="training steps timed for the throughput")
    parser.add_argument("--rows", type=int, default=150_000, help="rows of the table whose check is timed")
    parser.add_argument("--demo_rounds", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["scale", "demo", "table"])
    parser.add_argument("--bench_dir", type=Path, default=BENCH_DIR)
    parser.add_argument("--probe", help=argparse.SUPPRESS)   # internal: run one probe in this process
    args = parser.parse_args(argv)
    from utils.threads import configure_threads
    configure_threads()
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe), args.probe_steps)))
        return
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    figures = {}
    if "table" not in args.skip:
        figures["table"] = table_check(args)
        print(json.dumps(figures["table"]), flush=True)
    if "demo" not in args.skip:
        figures["demo"] = demo_rows(args)
        print(json.dumps(figures["demo"]), flush=True)
    if "scale" not in args.skip:
        figures["scale"] = scale_rows(args, tiny_models(args.bench_dir / "models"))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print_report(figures)


def print_report(figures: dict) -> None:
    print("\n== corpus scale ==")
    if "table" in figures:
        t = figures["table"]
        print(f"table of {t['rows']} rows: read {t['read_s']:.1f} s, read and check every header "
              f"{t['read_and_check_s']:.1f} s")
    if "demo" in figures:
        d = figures["demo"]
        print(f"demo, fold 1 ({d['utterances']} training utterances), one epoch: in memory "
              f"{d['memory_audio_s_per_s']:.1f} audio-s/s, streamed {d['streamed_audio_s_per_s']:.1f}: "
              f"streamed_over_memory {d['streamed_over_memory']:.3f}")
        print("streamed, DataLoader workers: " + ", ".join(f"{w}: {v:.1f} audio-s/s"
                                                          for w, v in d["workers_audio_s_per_s"].items()))
    rows = figures.get("scale", [])
    if rows:
        print("| hours | utterances | cache GB | peak RSS cold MB | peak RSS warm MB | wall cold s | wall warm s "
              "| first batch s | train audio-s/s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['hours']:g} | {r['utterances']} | {r['cache_gb']:.2f} | {r['cold_peak_rss_mb']:.0f} | "
                  f"{r['warm_peak_rss_mb']:.0f} | {r['cold_wall_s']:.0f} | {r['warm_wall_s']:.0f} | "
                  f"{r['first_batch_s']:.1f} | {r['train_audio_s_per_s']:.0f} |")
        if len(rows) > 1:
            peak = max(rows[-1]["cold_peak_rss_mb"], rows[-1]["warm_peak_rss_mb"])
            low = max(rows[0]["cold_peak_rss_mb"], rows[0]["warm_peak_rss_mb"])
            print(f"peak_rss_ratio_{rows[-1]['hours']:g}h_over_{rows[0]['hours']:g}h: {peak / low:.3f}")


if __name__ == "__main__":
    main()
