"""The frozen-encoder protocol's speed and disk (docs/BASELINES.md): what caching every hidden
layer costs per audio hour (time and disk), and one epoch of `run.py --run probe` on the cached
states against one fine-tuning epoch of `unimodal_baseline`, on the same corpus, the same fold
and the same machine, as a ratio (the issue's bar: at least 20x).

    python bench/probe_speed.py                       # base-size random wav2vec2, CPU (a few minutes)
    python bench/probe_speed.py --size tiny           # the tiny encoder: a smoke run in seconds
    python bench/probe_speed.py --device cuda --per_session 40

The corpus is the benches' synthetic IEMOCAP with IEMOCAP's durations (synthetic/workspace.py),
the encoder random (only its shapes matter for speed). Each epoch's time is run.py's own record
(`<fold>_stats.txt` "seconds": training, dev and test evaluation and the checkpoint), of the
second epoch, so that neither pays a first-batch warm-up. Nothing here is timed in the tests."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

IEMOCAP_UTTERANCES = 5531   # the 4-class table (docs/DATA.md)


def epoch_seconds(run_dir: Path, fold: str = "1", epoch: int = 2) -> float:
    records = [json.loads(line) for line in (run_dir / f"{fold}_stats.txt").read_text().splitlines()]
    return float(next(r for r in records if r["epoch"] == epoch)["seconds"])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.npy"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "base"], default="base", help="the random speech encoder's size")
    parser.add_argument("--per_session", type=int, default=8, help="utterances per session of the synthetic corpus")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=4, help="both runs' batch size (the paper's is 2 x 4 accum)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from dataio.ssl_features import extract
    from synthetic.iemocap import target_durations
    from synthetic.workspace import prepare_bench_corpus, speech_encoder_dir

    paths = prepare_bench_corpus(args.per_session)
    encoder = speech_encoder_dir(paths, args.size)
    table = pd.read_csv(paths["csv"])
    audio_hours = sum(sf.info(paths["audio"] / f"{name}.wav").duration for name in table["FileName"]) / 3600
    with tempfile.TemporaryDirectory(prefix="probe_speed_") as work:
        work = Path(work)
        states = work / "ssl"
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            extract(paths["csv"], paths["audio"], states, str(encoder), dtype="float16", device=args.device)
        extract_s = time.perf_counter() - start
        stored = folder_bytes(states)
        common = ["--csv_path", str(paths["csv"]), "--save_path", str(work / "runs"), "--sessions", "1",
                  "--epochs", "2", "--batch_size", str(args.batch_size), "--accum_grad", "1", "--device", args.device,
                  "--seed", "0", "--precision", "fp32"]
        for flags in (["--run", "unimodal_baseline", "--data_path_audio", str(paths["audio"]), "--wav2vec2", str(encoder)],
                      ["--run", "probe", "--data_path_ssl", str(states)]):   # run.py as users run it
            done = subprocess.run([sys.executable, str(REPO / "run.py"), *flags, *common], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"run.py {' '.join(flags[:2])} failed:\n{done.stderr[-3000:]}")
        fine_tune = epoch_seconds(work / "runs" / "unimodal_baseline")
        probe = epoch_seconds(work / "runs" / "probe")
        shutil.rmtree(work / "runs")
    iemocap_hours = float(target_durations(IEMOCAP_UTTERANCES, "iemocap", np.random.default_rng(0)).sum()) / 3600
    figures = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "device": args.device, "load_average": list(os.getloadavg())},
        "encoder": f"{args.size} (random weights)", "utterances": len(table), "audio_hours": round(audio_hours, 4),
        "extract_seconds": round(extract_s, 2), "extract_seconds_per_audio_hour": round(extract_s / audio_hours, 1),
        "stored_bytes": stored, "gb_per_audio_hour": round(stored / audio_hours / 1e9, 3),
        "iemocap_hours": round(iemocap_hours, 2), "iemocap_gb": round(stored / audio_hours * iemocap_hours / 1e9, 1),
        "unimodal_baseline_epoch_s": fine_tune, "probe_epoch_s": probe, "ratio": round(fine_tune / probe, 1),
    }
    print(f"corpus: {len(table)} utterances, {audio_hours * 60:.1f} min of audio; encoder {figures['encoder']}; "
          f"{args.device}; load average {figures['machine']['load_average'][0]:.2f}")
    print(f"extraction (every hidden state, float16): {extract_s:.1f} s = {figures['extract_seconds_per_audio_hour']:.0f} s "
          f"per audio hour; {figures['gb_per_audio_hour']:.2f} GB per audio hour, IEMOCAP ({iemocap_hours:.1f} h) "
          f"about {figures['iemocap_gb']:.1f} GB")
    print(f"one epoch (fold 1, epoch 2): unimodal_baseline fine-tuning {fine_tune:.2f} s, probe on cached states "
          f"{probe:.2f} s: {figures['ratio']:.0f}x ({'meets' if figures['ratio'] >= 20 else 'misses'} the 20x bar)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
