"""Two trainings at once on one machine: how much slower is each than alone?

Runs one short training (the offline demo's mmer, one fold) alone, then two at once, and
prints each run's epoch time (the median of the epochs after the first) and, as its last line,
`concurrent_slowdown: X` = per-run epoch time together / alone. Sharing the cores fairly costs
about 2x on a machine whose cores one run fills; docs/PERFORMANCE.md has the figures and why.

    python bench/concurrency.py                    # the project's defaults
    python bench/concurrency.py --wait_policy gnu  # OpenMP's own default (spinning), for comparison
    python bench/concurrency.py --threads 1        # any run.py --threads

Time it on an otherwise idle machine (`uptime`): anything else running inflates every figure."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# OMP_WAIT_POLICY for each choice: project = run.py's own (a short spin, utils/threads.py); gnu = OpenMP's
# own default (long spinning), reached by an empty policy with no spin count set
WAIT_POLICIES = {"project": None, "gnu": "", "active": "ACTIVE", "passive": "PASSIVE"}


def build_corpus(root: Path, per_session: int) -> dict:
    """The demo's data (synthetic IEMOCAP-format corpus, tiny encoders, RoBERTa features), made
    once in `root` by the same data_prep code as the demo; later runs reuse it."""
    import logging

    from dataio.text_features import extract
    from dataio.iemocap import prepare
    from synthetic.iemocap import make_corpus
    from synthetic.tiny_models import make_tiny_models
    models = make_tiny_models(root / "models", seed=0)
    make_corpus(root / "release", per_session=per_session, seed=0)
    logging.disable(logging.WARNING)  # the synthetic corpus's counts differ from IEMOCAP's, by design
    prepare(root / "release", root / "prepared", link=True)
    logging.disable(logging.NOTSET)
    extract(root / "prepared" / "iemocap.csv", root / "prepared" / "roberta", roberta=models["roberta"], device="cpu")
    return {"csv": root / "prepared" / "iemocap.csv", "audio": root / "prepared" / "audio",
            "roberta": root / "prepared" / "roberta", "wav2vec2": models["wav2vec2"]}


def command(data: dict, save: Path, args) -> list[str]:
    argv = [sys.executable, str(REPO / "run.py"), "--run", "mmer", "--csv_path", str(data["csv"]),
            "--data_path_audio", str(data["audio"]), "--data_path_roberta", str(data["roberta"]),
            "--wav2vec2", str(data["wav2vec2"]), "--epochs", str(args.epochs), "--batch_size", "8",
            "--accum_grad", "1", "--learning_rate", "1e-3", "--sessions", "1", "--device", "cpu",
            "--precision", "fp32", "--save_path", str(save), "--overwrite"]
    return argv + (["--threads", str(args.threads)] if args.threads else [])


def environment(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    if WAIT_POLICIES[policy] is not None:
        env["OMP_WAIT_POLICY"] = WAIT_POLICIES[policy]  # "" reads as unset: OpenMP's own default
    return env


def epoch_seconds(save: Path) -> float:
    """Median seconds of the epochs after the first (which also builds caches and warms up)."""
    records = [json.loads(line) for line in (save / "mmer" / "1_stats.txt").read_text().splitlines()]
    return statistics.median(r["seconds"] for r in records[1:])


def run_at_once(data: dict, saves: list[Path], args) -> list[float]:
    children = [subprocess.Popen(command(data, save, args), cwd=REPO, env=environment(args.wait_policy),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for save in saves]
    for child in children:
        _, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"a training failed:\n{err[-3000:]}")
    return [epoch_seconds(save) for save in saves]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "bench" / "concurrency",
                        help="folder for the corpus (made once) and the runs")
    parser.add_argument("--per_session", type=int, default=100, help="utterances per session of the demo corpus")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training (the first is not timed)")
    parser.add_argument("--threads", type=int, help="run.py --threads (default: run.py's own)")
    parser.add_argument("--wait_policy", choices=list(WAIT_POLICIES), default="project",
                        help="project: run.py's (a short spin); gnu: OpenMP's own default (long spinning); "
                             "active/passive: forced")
    args = parser.parse_args(argv)
    data = build_corpus(args.out / "data", args.per_session)
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()
    alone = run_at_once(data, [args.out / "alone"], args)[0]
    print(f"alone: {alone:.2f} s per epoch", flush=True)
    together = run_at_once(data, [args.out / "first", args.out / "second"], args)
    print(f"together: {together[0]:.2f} s and {together[1]:.2f} s per epoch", flush=True)
    slowdown = statistics.mean(together) / alone
    print(f"wait policy {args.wait_policy}, threads {args.threads or 'default'}; {time.perf_counter() - started:.0f} s "
          f"in all; load average after: {os.getloadavg()[0]:.2f}")
    print(f"concurrent_slowdown: {slowdown:.2f}")
    return slowdown


if __name__ == "__main__":
    main()
