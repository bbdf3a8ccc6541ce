"""Bookkeeping of a run folder: refuse to mix with an earlier run's files, and record
the resolved configuration (flags, seed, git commit, package versions) before training."""
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.errors import MMERError
from utils import distributed
from utils.files import atomic_write_text
from utils.lock import RunLock, live_holders
from utils.provenance import git_commit, package_versions

log = logging.getLogger(__name__)
RESULT_PATTERNS = ("*_model.pt", "*_last.pt", "*_result.json", "*_stats.txt", "*_predictions.csv", "results.json", "results.csv",
                   "results.md", "confusion_matrix*.png", "learning_curves.png", "reliability_diagram.png", "tensorboard/*/*",
                   "config.json", "recipe.yaml", "train.log")


class RunDirError(MMERError, RuntimeError):
    """The save folder holds another run's files."""


class DivergedError(MMERError, RuntimeError):
    """Too many optimizer steps had non-finite gradients."""


# Settings that do not change what a run computes; a resumed run may differ in these.
NOT_IDENTITY = {"sessions", "num_workers", "overwrite", "resume", "log_every", "device", "eval_only",
                "checkpoint_dir", "tensorboard", "text_dim", "num_classes", "threads", "preset", "config"}


# Recorded as resolved on the machine (e.g. --precision auto): compared only where the record has it.
RECORDED_ONLY = {"precision_resolved"}


def recorded_setting(run_dir: Path, part: str, key: str):
    """A setting of the run recorded in run_dir/config.json (None where there is none)."""
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text()).get(part, {}).get(key) if path.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        return None


def existing_results(run_dir: Path) -> list[Path]:
    return sorted(p for pattern in RESULT_PATTERNS for p in run_dir.glob(pattern))


def config_differences(run_dir: Path, model_cfg, run_cfg) -> list[str]:
    """Settings in which this run differs from the one recorded in run_dir/config.json. A
    setting the record predates counts as its default then (what that code did)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    now = {"model": asdict(model_cfg), "run": asdict(run_cfg)}
    defaults = {"model": asdict(type(model_cfg)()), "run": asdict(type(run_cfg)())}
    diffs = []
    for part in ("model", "run"):
        for key in sorted(set(saved.get(part, {})) | set(now[part])):
            if key in NOT_IDENTITY or (key in RECORDED_ONLY and key not in saved.get(part, {})):
                continue
            old, new = saved.get(part, {}).get(key, defaults[part].get(key)), now[part].get(key)
            if old != new:
                name = "processes (torchrun --nproc_per_node x --nnodes)" if key == "world_size" else f"--{key}"
                diffs.append(f"{name}: {old!r} then, {new!r} now")
    return diffs


def command_inputs(run_cfg) -> list[Path]:
    """Files and folders the command reads: the csv, the audio and feature folders and, for
    --eval_only, the checkpoints and the config.json of --checkpoint_dir."""
    inputs = [Path(run_cfg.csv_path), Path(run_cfg.data_path_audio), Path(run_cfg.data_path_roberta)]
    if run_cfg.eval_only and run_cfg.checkpoint_dir:
        folder = Path(run_cfg.checkpoint_dir)
        inputs += [*folder.glob("*_model.pt"), *folder.glob("*_model.safetensors"), folder / "config.json"]
    return [path.resolve() for path in inputs]


def inputs_among(paths, run_cfg) -> list[Path]:
    """Those of `paths` that the command reads (are, or lie inside, one of its inputs)."""
    inputs = command_inputs(run_cfg)
    return [p for p in paths if any(p.resolve() == i or i in p.resolve().parents for i in inputs)]


SETUP_FILES = ("config.json", "recipe.yaml", "train.log")  # written before training; alone they are no run's results


def fold_lock(run_dir: Path, session) -> Path:
    return run_dir / f".fold{session}.lock"


def claim_run_dir(run_dir: Path, model_cfg, run_cfg, sessions, held, write_config) -> None:
    """Take the run folder for this process: a lock for each fold it will run (kept in `held`,
    an ExitStack, until the process ends), then, under a short lock on the whole folder, the
    checks below and `write_config()` when the folder has no config.json yet.

    A folder with an earlier run's results is refused unless --resume (same configuration) or
    --overwrite (exactly those files are removed, and it is said; refused while another
    process works in the folder, or when it would remove an input of this same command). A
    folder holding only the config.json and log of a run that never finished an epoch, with no
    process at work in it, is no earlier run: it is started afresh."""
    with RunLock(run_dir / ".run.lock", str(run_dir), wait=60):
        mine = [held.enter_context(RunLock(fold_lock(run_dir, s), f"fold {s} of {run_dir}")).path for s in sessions]
        others = live_holders(run_dir, ".fold*.lock", mine)
        found = existing_results(run_dir)
        trained = [p for p in found if p.name not in SETUP_FILES]
        if not trained and not others:
            if found:
                (run_dir / "config.json").unlink(missing_ok=True)
                (run_dir / "recipe.yaml").unlink(missing_ok=True)
                log.info("%s: the earlier run there never finished an epoch; starting afresh", run_dir)
        elif run_cfg.overwrite:
            overwrite(run_dir, found, others, run_cfg)
        elif run_cfg.resume:
            diffs = config_differences(run_dir, model_cfg, run_cfg)
            if diffs:
                raise RunDirError(f"{run_dir}: --resume refused, the run there used other settings "
                                  f"({'; '.join(diffs)}); rerun with its settings, or use --overwrite / another "
                                  "--save_path")
        else:
            names = ", ".join(p.name for p in found[:4]) + ("..." if len(found) > 4 else "")
            busy = f"; it is in use by {others[0]}" if others else ""
            raise RunDirError(f"{run_dir}: holds the files of an earlier run ({names}){busy}; pass --resume to "
                              "continue it, --overwrite to replace it, or another --save_path")
        if not (run_dir / "config.json").is_file():
            write_config()


def overwrite(run_dir: Path, found: list[Path], others: list[str], run_cfg) -> None:
    """--overwrite: remove the earlier run's files, unless another process is at work in the
    folder or one of them is an input of this command."""
    if others:
        raise RunDirError(f"{run_dir}: --overwrite refused, {others[0]} is at work in it; wait for it or stop it")
    needed = inputs_among(found, run_cfg)
    if needed:
        names = ", ".join(p.name for p in needed[:4]) + ("..." if len(needed) > 4 else "")
        raise RunDirError(f"{run_dir}: --overwrite refused, it would remove files this command reads "
                          f"({names}); write the results elsewhere with another --save_path")
    for path in found:
        path.unlink()
    print(f"--overwrite: removed {len(found)} files of the earlier run in {run_dir}", file=sys.stderr)


# ---------------------------------------------------------------- resumable folds
@dataclass
class FoldState:
    """Where a fold stands after its last completed epoch."""
    session: str
    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -1.0

    def save(self, run_dir: Path, model, optimizer, record: dict) -> None:
        """`<session>_last.pt` (weights, optimizer, RNG, this state and the epoch's record)
        atomically, then the record's line in `<session>_stats.txt`."""
        save_checkpoint(run_dir / f"{self.session}_last.pt", model, optimizer=optimizer.state_dict(),
                        fold_state=asdict(self), record=record, rng=rng_state())
        with open(run_dir / f"{self.session}_stats.txt", "a") as stats:
            stats.write(json.dumps(record) + "\n")

    @classmethod
    def restore(cls, run_dir: Path, session: str, model, optimizer, save_best) -> "FoldState | None":
        """Load `<session>_last.pt` into model and optimizer; make the stats file and the best
        checkpoint agree with it (a kill may have come between the writes). None: start afresh."""
        path = run_dir / f"{session}_last.pt"
        if not path.is_file():
            rewrite_stats(run_dir / f"{session}_stats.txt", [])
            return None
        payload = load_checkpoint(path)
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
        state, record = cls(**payload["fold_state"]), payload["record"]
        stats_path = run_dir / f"{session}_stats.txt"
        rewrite_stats(stats_path, [r for r in read_stats(stats_path) if r["epoch"] < state.epoch] + [record])
        best = run_dir / f"{session}_model.pt"
        if state.best_epoch == state.epoch and (not best.is_file() or load_checkpoint(best).get("epoch") != state.epoch):
            save_best(record)
        log.info("fold %s: resumed after epoch %d (best epoch %d)", session, state.epoch, state.best_epoch)
        return state


def rng_state() -> dict:
    """torch's, CUDA's and numpy's generators (transformers draws SpecAugment's masks from
    numpy's), as tensors and plain numbers, so weights-only loading reads them."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        saved = state["numpy"]
        np.random.set_state(("MT19937", saved["keys"].numpy().astype(np.uint32), saved["position"],
                             saved["has_gauss"], saved["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_stats(path: Path) -> list[dict]:
    """Complete JSON lines only: a line cut by a kill is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def rewrite_stats(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def finish_fold(run_dir: Path, session: str, metrics: dict) -> None:
    """Record the fold's test metrics; its `last` checkpoint is no longer needed."""
    atomic_write_text(run_dir / f"{session}_result.json", json.dumps(metrics) + "\n")
    (run_dir / f"{session}_last.pt").unlink(missing_ok=True)


def finished_fold(run_dir: Path, session: str) -> dict | None:
    path = run_dir / f"{session}_result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def data_checksums(csv_path, audio_paths, feature_paths=None) -> dict:
    """sha256 of the csv, and of the (file, size) list of the audio and feature files it names:
    cheap, and enough to tell that a rerun reads other data."""
    def listing(paths):
        h = hashlib.sha256()
        for path in paths:
            h.update(f"{Path(path).name}:{Path(path).stat().st_size}\n".encode())
        return h.hexdigest()

    sums = {"csv_sha256": hashlib.sha256(Path(csv_path).read_bytes()).hexdigest(),
            "utterances": len(audio_paths), "audio_listing_sha256": listing(audio_paths)}
    if feature_paths is not None:
        sums["roberta_listing_sha256"] = listing(feature_paths)
    return sums


def write_config(run_dir: Path, model_cfg, run_cfg, data: dict, text_encoder: dict | None = None) -> None:
    """text_encoder: the features' encoder.json (name and config hash), which predict.py checks."""
    config = {"model": asdict(model_cfg), "run": asdict(run_cfg), "seed": run_cfg.seed, "data": data,
              "text_encoder": text_encoder, "git_commit": git_commit(), "versions": package_versions(),
              "argv": sys.argv}
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")


def setup_logging(run_dir: Path) -> None:
    """Console and <run_dir>/train.log, appended to (processes running other folds in parallel
    share it; their lines name their fold); progress bars write through logging_redirect_tqdm.
    Under torchrun only rank 0 writes the file; the other ranks print warnings only."""
    rank0 = distributed.is_main()
    tag = "" if distributed.world_size() == 1 else f"[rank {distributed.rank()}] "
    fmt = logging.Formatter(f"%(asctime)s {tag}%(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO if rank0 else logging.WARNING)
    for handler in [h for h in root.handlers if getattr(h, "_mmer", False)]:
        root.removeHandler(handler)
        handler.close()
    handlers = [logging.StreamHandler(sys.stderr)]
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._mmer = True
        root.addHandler(handler)
