"""Bookkeeping of a run folder: refuse to mix with an earlier run's files, and record
the resolved configuration (flags, seed, git commit, package versions) before training."""
import json
import logging
import platform
import subprocess
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from utils.files import atomic_write_text

log = logging.getLogger(__name__)
RESULT_PATTERNS = ("*_model.pt", "*_stats.txt", "*_predictions.csv", "results.json", "results.csv",
                   "confusion_matrix.png", "config.json", "train.log")
PACKAGES = ("torch", "transformers", "numpy", "scikit-learn", "pandas", "soundfile", "soxr")


class RunDirError(RuntimeError):
    """The save folder holds another run's files."""


def existing_results(run_dir: Path) -> list[Path]:
    return sorted(p for pattern in RESULT_PATTERNS for p in run_dir.glob(pattern))


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A run folder with files of an earlier run is refused unless overwrite, in which case
    exactly those files are removed (and said so) before anything new is written."""
    found = existing_results(run_dir)
    if not found:
        return
    if not overwrite:
        raise RunDirError(f"{run_dir}: holds the files of an earlier run ({', '.join(p.name for p in found[:4])}"
                          f"{'...' if len(found) > 4 else ''}); pass another --save_path, or --overwrite to replace them")
    for path in found:
        path.unlink()
    print(f"--overwrite: removed {len(found)} files of the earlier run in {run_dir}", file=sys.stderr)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_config(run_dir: Path, model_cfg, run_cfg) -> None:
    config = {"model": asdict(model_cfg), "run": asdict(run_cfg), "seed": run_cfg.seed,
              "git_commit": git_commit(), "versions": package_versions(), "argv": sys.argv}
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
