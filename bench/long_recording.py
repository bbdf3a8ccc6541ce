"""What a long recording costs to score: time per audio second and peak memory, against short
clips, for recordings of several lengths (EmotionRecognizer.predict on a wav file, as predict.py
and serve.py run it: 6 s windows, one every 3 s, read from the file one batch at a time).

    python bench/long_recording.py                        # base-size mmer, 1, 5 and 10 minutes (about 6 min on 2 cores)
    python bench/long_recording.py --size tiny --minutes 1 2   # a quick check

Each length runs in its own process, so its peak resident memory (VmHWM) is its own. With
windows half overlapping every second is scored twice, so the time per audio second of a long
recording is about twice a short clip's; what must not grow with the length is either figure.
The last line printed is `long_over_short_rtf: <float>` (the longest recording's real-time
factor over the short clips')."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.threads import before_torch  # noqa: E402

before_torch()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SR = 16000


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(run_dir: str, wavs: list[str], threads: int) -> dict:
    """In this process: load the run, warm up on a 4 s clip, then score all of `wavs`
    once, timed: -> seconds, audio seconds, real-time factor, windows and peak memory."""
    import torch

    from inference.recognizer import EmotionRecognizer
    torch.set_num_threads(threads)
    recognizer = EmotionRecognizer.from_run(run_dir, device="cpu", precision="fp32", batch_size=1)
    from synthetic.workspace import clips
    recognizer.predict(clips(1, 4.0, 4.0, seed=7)[0], sample_rate=SR)  # warm-up: first-call allocations
    audio_s = sum(sf.info(w).duration for w in wavs)
    start = time.perf_counter()
    predictions = recognizer.predict_many(wavs)
    seconds = time.perf_counter() - start
    windows = sum(len(p.windows or []) for p in predictions)
    return {"seconds": seconds, "audio_seconds": audio_s, "rtf": seconds / audio_s, "windows": windows,
            "peak_rss_mb": peak_rss_mb()}


def write_wav(path: Path, seconds: float, seed: int) -> str:
    from synthetic.workspace import clips
    sf.write(path, clips(1, seconds, seconds, seed)[0], SR, subtype="PCM_16")
    return str(path)


def child(args) -> None:
    print(json.dumps(measure(args.run_dir, args.wavs, args.threads)))


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "base"], default="base")
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10], help="lengths of the long recordings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run_dir", help=argparse.SUPPRESS)
    p.add_argument("--wavs", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0.0
    from synthetic.workspace import RANDOM_RUNS, random_run
    run_dir = random_run(args.size, "mmer", RANDOM_RUNS)  # the random run bench/onnx_rtf.py times (no export needed)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        short = [write_wav(Path(tmp) / f"short{i}.wav", s, i) for i, s in enumerate(np.linspace(2, 6, 8))]
        cases = [("8 clips of 2-6 s", short)]
        cases += [(f"{m:g} min", [write_wav(Path(tmp) / f"long{m:g}.wav", 60 * m, 100)]) for m in args.minutes]
        for name, wavs in cases:
            done = subprocess.run([sys.executable, __file__, "--child", "--run_dir", str(run_dir), "--threads",
                                   str(args.threads), "--wavs", *wavs], capture_output=True, text=True, check=True)
            rows.append((name, json.loads(done.stdout.strip().splitlines()[-1])))
    print(f"\n{args.size}-size mmer, fp32, cpu, {args.threads} threads, one window per pass (predict.py's CPU "
          f"default); load {load:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"{'recording':<18} {'audio s':>8} {'windows':>8} {'seconds':>8} {'RTF':>7} {'peak RSS MB':>12}")
    for name, r in rows:
        print(f"{name:<18} {r['audio_seconds']:8.1f} {r['windows']:8d} {r['seconds']:8.1f} {r['rtf']:7.3f} "
              f"{r['peak_rss_mb']:12.0f}")
    ratio = rows[-1][1]["rtf"] / rows[0][1]["rtf"]
    print(f"long_over_short_rtf: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
