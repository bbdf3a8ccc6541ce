"""Real-time factor (compute seconds / audio seconds) of prediction on the CPU with the two
backends on the same clips: PyTorch (EmotionRecognizer.from_run) and onnxruntime on the run
exported by export.py (EmotionRecognizer.from_onnx), both through the recognizer's one path
(audio normalisation, batching, for mmer the text encoder; clips in memory, so no decoding).

    python bench/onnx_rtf.py --size base                 # wav2vec2-base + roberta-base architectures, random weights
    python bench/onnx_rtf.py --size base --run cai_sota --threads 1 2
    python bench/onnx_rtf.py --quick                     # tiny encoders, 2 short clips: a smoke run

The models (random weights, seed 0), their checkpoint and export are made once under
data/bench/onnx_rtf/. Each backend is timed after a warm-up pass, in alternating rounds, the
fastest round kept. The last lines printed are `rtf_torch: <float>` and `rtf_onnxruntime: <float>`
(per thread count when several are given)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.threads import before_torch  # noqa: E402

before_torch()  # predict.py's OpenMP wait policy, read when torch loads (utils/threads.py)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.onnx_export import MANIFEST, export_run  # noqa: E402
from inference.recognizer import EmotionRecognizer  # noqa: E402
from models import MODELS  # noqa: E402
from synthetic.workspace import RANDOM_RUNS, SR, clips, random_run  # noqa: E402
from utils.machine import describe_machine, load  # noqa: E402

TRANSCRIPTS = ["I think we should talk about it tomorrow.", "Oh no, not again!", "Well, you know, I did it."]


def prepared_run(size: str, run: str) -> tuple[Path, Path]:
    """A one-fold run folder of a random model (synthetic.workspace.random_run) and its export,
    each made once."""
    run_dir = random_run(size, run, RANDOM_RUNS)
    onnx_dir = run_dir / "onnx"
    if not (onnx_dir / MANIFEST).is_file():
        start = time.perf_counter()
        export_run(run_dir, onnx_dir, overwrite=True)
        print(f"exported {run_dir} in {time.perf_counter() - start:.0f} s")
    return run_dir, onnx_dir


def time_backends(recognizers: dict, audio: list, transcripts, repeats: int) -> dict:
    """Fastest seconds per backend over `repeats` rounds after a warm-up, the order alternating
    every round so that neither always runs on a machine the other just warmed or loaded."""
    rates = [SR] * len(audio)
    best = dict.fromkeys(recognizers, float("inf"))
    for recognizer in recognizers.values():
        recognizer.predict_many(audio, transcripts, rates)
    names = list(recognizers)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            recognizers[name].predict_many(audio, transcripts, rates)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def largest_difference(recognizers: dict, audio: list, transcripts) -> float:
    rates = [SR] * len(audio)
    probs = [np.array([list(p.probabilities.values()) for p in r.predict_many(audio, transcripts, rates)])
             for r in recognizers.values()]
    return float(np.abs(probs[0] - probs[1]).max())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "base"], default="base", help="encoder architectures (default: base)")
    p.add_argument("--run", choices=list(MODELS), default="mmer", help="the variant (default: mmer)")
    p.add_argument("--clips", type=int, default=6, help="clips timed per pass (default: 6)")
    p.add_argument("--seconds", type=float, nargs=2, default=[2.0, 5.0], metavar=("SHORTEST", "LONGEST"),
                   help="clip durations, spread evenly (default: 2 5)")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="CPU threads, each a measurement (default: 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per backend (default: 3)")
    p.add_argument("--no_transcripts", action="store_true", help="mmer: transcribe with the CTC head instead")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny, 2 clips of 0.5-1 s, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.clips, args.seconds, args.repeats = "tiny", 2, [0.5, 1.0], 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with contextlib.redirect_stderr(io.StringIO()):  # weight-loading progress bars
        run_dir, onnx_dir = prepared_run(args.size, args.run)
    audio = clips(args.clips, *args.seconds)
    audio_s = sum(len(a) for a in audio) / SR
    uses_text = MODELS[args.run].uses_text
    transcripts = None if args.no_transcripts or not uses_text else \
        [TRANSCRIPTS[i % len(TRANSCRIPTS)] for i in range(len(audio))]
    machine = describe_machine(torch.device("cpu"))
    print(f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; {args.size} {args.run}, "
          f"{len(audio)} clips of {args.seconds[0]:g}-{args.seconds[1]:g} s ({audio_s:.1f} s), transcripts "
          f"{'given' if transcripts else ('from the CTC head' if uses_text else 'not read')}, fp32, one clip per pass")
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        with contextlib.redirect_stderr(io.StringIO()):
            recognizers = {"torch": EmotionRecognizer.from_run(run_dir, device="cpu", precision="fp32"),
                           "onnxruntime": EmotionRecognizer.from_onnx(onnx_dir, threads=threads)}
        start_load = load()
        seconds = time_backends(recognizers, audio, transcripts, args.repeats)
        rtf = {name: s / audio_s for name, s in seconds.items()}
        results[threads] = {**rtf, "max_abs_diff_probabilities": largest_difference(recognizers, audio, transcripts),
                            "load_average": [start_load, load()]}
        print(f"threads {threads}: load average {start_load} -> {load()}; probabilities differ by at most "
              f"{results[threads]['max_abs_diff_probabilities']:.1e}; onnxruntime / torch time "
              f"{rtf['onnxruntime'] / rtf['torch']:.2f}")
        suffix = f"_threads{threads}" if len(args.threads) > 1 else ""
        print(f"rtf_torch{suffix}: {rtf['torch']:.4f}")
        print(f"rtf_onnxruntime{suffix}: {rtf['onnxruntime']:.4f}")
    return results


if __name__ == "__main__":
    main()
