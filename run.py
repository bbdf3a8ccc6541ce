"""Train and evaluate MMER and its baselines with leave-one-session-out cross-validation
on IEMOCAP (or re-evaluate saved / published checkpoints with --eval_only).

    python run.py --run mmer --alpha 0.1 --csv_path data/iemocap.csv \
        --data_path_audio data/audio --data_path_roberta data/roberta --save_path runs
"""
import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from models import MODELS, ModelConfig, build_model
from models.encoders import audio_input_spec
from utils import runinfo
from utils.audio import AudioError
from utils.checkpoint import CheckpointError, restore_model, save_checkpoint
from utils.device import autocast, resolve_device, seed_everything
from utils.data import (BucketBatchSampler, Collator, DataError, EmotionDataset, RandomBatchSampler,
                        load_audio, load_text_features, loso_split, read_table)
from utils.files import atomic_path
from utils.labels import CLASS_NAMES
from utils.metrics import emotion_metrics
from utils.report import format_table, write_results

log = logging.getLogger("mmer")
OPTIMISTIC = "test (OPTIMISTIC: the best epoch is chosen on the test session, as upstream did)"


@dataclass
class RunConfig:
    """Run settings (paths, schedule, devices); written beside the results."""
    csv_path: str = "data/iemocap.csv"
    data_path_audio: str = "data/audio"
    data_path_roberta: str = "data/roberta"
    roberta: str = "roberta-base"
    save_path: str = "runs"
    sessions: list = field(default_factory=lambda: [1, 2, 3, 4, 5])
    epochs: int = 100
    batch_size: int = 2
    accum_grad: int = 4
    learning_rate: float = 1e-5
    dev_fraction: float = 0.1
    select_on: str = "dev"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    batching: str = "bucket"
    eval_batch_size: int = 8
    eval_only: bool = False
    checkpoint_dir: str | None = None
    overwrite: bool = False
    max_steps: int | None = None
    limit_utterances: int | None = None
    log_every: int = 25


def parse_args(argv=None) -> tuple[ModelConfig, RunConfig]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d, m = RunConfig(), ModelConfig()
    data = p.add_argument_group("data")
    data.add_argument("--csv_path", default=d.csv_path, help="utterance csv from data_prep/iemocap_prep.py")
    data.add_argument("--data_path_audio", default=d.data_path_audio, help="folder of <FileName>.wav")
    data.add_argument("--data_path_roberta", default=d.data_path_roberta, help="folder of <FileName>.npy (mmer)")
    data.add_argument("--sessions", type=int, nargs="+", default=d.sessions, help="test sessions (folds) to run")
    data.add_argument("--dev_fraction", type=float, default=d.dev_fraction,
                      help="share of the training sessions held out for model selection "
                           "(stratified on speaker x label)")
    data.add_argument("--num_workers", type=int, default=d.num_workers, help="DataLoader worker processes")
    data.add_argument("--limit_utterances", type=int, default=None,
                      help="debug: keep only the first N utterances of each session")
    model = p.add_argument_group("model")
    model.add_argument("--run", default=m.run, choices=list(MODELS), help="which variant")
    model.add_argument("--alpha", type=float, default=m.alpha, help="weight of the CTC loss (mmer, cai_sota)")
    model.add_argument("--wav2vec2", default=m.wav2vec2, help="speech encoder: hub name or local folder")
    model.add_argument("--roberta", default=d.roberta, help="text encoder the features came from (recorded)")
    model.add_argument("--dropout", type=float, default=m.dropout)
    model.add_argument("--specaugment", action="store_true", help="turn the encoder's SpecAugment on")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=d.epochs)
    opt.add_argument("--batch_size", type=int, default=d.batch_size)
    opt.add_argument("--accum_grad", type=int, default=d.accum_grad, help="micro-batches per optimizer step")
    opt.add_argument("--learning_rate", type=float, default=d.learning_rate, help="AdamW learning rate")
    opt.add_argument("--batching", choices=["bucket", "random"], default=d.batching,
                     help="bucket: length-grouped batches in shuffled order (less padding); random: upstream's")
    opt.add_argument("--seed", type=int, default=d.seed)
    ctl = p.add_argument_group("run control")
    ctl.add_argument("--save_path", default=d.save_path, help="results go to <save_path>/<run>/")
    ctl.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:N")
    ctl.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                     help="auto: bf16 autocast on GPU, fp32 on CPU")
    ctl.add_argument("--select_on", choices=["dev", "test"], default=d.select_on,
                     help="pick the best epoch on the dev split; 'test' reproduces upstream (optimistic)")
    ctl.add_argument("--eval_batch_size", type=int, default=d.eval_batch_size)
    ctl.add_argument("--eval_only", action="store_true", help="evaluate <checkpoint_dir>/<session>_model.pt")
    ctl.add_argument("--checkpoint_dir", default=None)
    ctl.add_argument("--overwrite", action="store_true", help="replace the results already in <save_path>/<run>")
    ctl.add_argument("--max_steps", type=int, default=None, help="debug: optimizer steps per epoch")
    ctl.add_argument("--log_every", type=int, default=d.log_every, help="micro-batches between progress updates")
    args = p.parse_args(argv)
    model_cfg = ModelConfig(run=args.run, wav2vec2=args.wav2vec2, alpha=args.alpha, dropout=args.dropout,
                            specaugment=args.specaugment)
    run_cfg = RunConfig(**{k: getattr(args, k) for k in RunConfig.__dataclass_fields__})
    if run_cfg.eval_only and not run_cfg.checkpoint_dir:
        p.error("--eval_only needs --checkpoint_dir DIR holding <session>_model.pt files")
    if run_cfg.select_on == "dev" and run_cfg.dev_fraction <= 0 and not run_cfg.eval_only:
        p.error("--select_on dev needs --dev_fraction > 0")
    return model_cfg, run_cfg


# ---------------------------------------------------------------- set-up
def setup_logging(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        if getattr(handler, "_mmer", False):
            root.removeHandler(handler)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(run_dir / "train.log")):
        handler.setFormatter(fmt)
        handler._mmer = True
        root.addHandler(handler)


# ---------------------------------------------------------------- data
@dataclass
class Corpus:
    table: pd.DataFrame
    dataset: EmotionDataset
    collate: Collator


def load_corpus(model_cfg: ModelConfig, run_cfg: RunConfig) -> Corpus:
    table = read_table(run_cfg.csv_path)
    if run_cfg.limit_utterances:
        table = table.groupby("session", group_keys=False).head(run_cfg.limit_utterances).reset_index(drop=True)
    bad = table[table["label_index"].isna()]
    if len(bad):
        raise DataError(f"{run_cfg.csv_path}: labels outside neu/hap/exc/ang/sad: "
                        f"{sorted(bad['Label'].unique())} (e.g. {bad['FileName'].iloc[0]}); filter them out")
    table["label_index"] = table["label_index"].astype(int)
    spec = audio_input_spec(model_cfg.wav2vec2)
    log.info("loading %d utterances (audio%s)", len(table), " + text features" if MODELS[model_cfg.run].uses_text else "")
    waves = load_audio(table, run_cfg.data_path_audio, spec)
    text = None
    if MODELS[model_cfg.run].uses_text:
        text = load_text_features(table, run_cfg.data_path_roberta)
        model_cfg.text_dim = int(text[0].shape[1])
    dataset = EmotionDataset(table["FileName"], waves, table["label_index"], table["text"], text)
    return Corpus(table, dataset, Collator(spec))


def make_loader(corpus: Corpus, indices, run_cfg: RunConfig, train: bool, device, epoch_seed: int = 0):
    subset = torch.utils.data.Subset(corpus.dataset, indices)
    lengths = corpus.dataset.lengths()[indices]
    if train:
        sampler_cls = BucketBatchSampler if run_cfg.batching == "bucket" else RandomBatchSampler
        sampler = sampler_cls(lengths, run_cfg.batch_size, shuffle=True, seed=epoch_seed)
    else:
        sampler = BucketBatchSampler(lengths, run_cfg.eval_batch_size, shuffle=False)
    return torch.utils.data.DataLoader(subset, batch_sampler=sampler, collate_fn=corpus.collate,
                                       num_workers=run_cfg.num_workers, pin_memory=device.type == "cuda",
                                       persistent_workers=run_cfg.num_workers > 0)


# ---------------------------------------------------------------- training and evaluation
def train_epoch(model, loader, optimizer, run_cfg: RunConfig, device, epoch: int) -> dict:
    """One epoch with gradient accumulation. Losses stay on the device and are read back
    only every `log_every` micro-batches, so the loop does not wait on the GPU each step."""
    model.train()
    sums = torch.zeros(3, device=device)  # total, ce, ctc
    steps, micro = 0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
    for micro, batch in enumerate(bar, start=1):
        batch = batch.to(device, non_blocking=True)
        with autocast(device, run_cfg.precision):
            output = model(**batch.model_inputs())
        losses = model.loss(output, batch.labels, batch.ctc_targets, batch.ctc_target_lengths)
        (losses["total"] / run_cfg.accum_grad).backward()
        sums += torch.stack([losses["total"].detach(), losses["ce"].detach(),
                             losses.get("ctc", torch.zeros((), device=device)).detach()])
        if micro % run_cfg.accum_grad == 0 or micro == len(loader):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if run_cfg.max_steps and steps >= run_cfg.max_steps:
                break
        if micro % run_cfg.log_every == 0:
            total, ce, ctc = (sums / micro).tolist()
            bar.set_postfix(loss=f"{total:.3f}", ce=f"{ce:.3f}", ctc=f"{ctc:.3f}")
    total, ce, ctc = (sums / max(micro, 1)).tolist()
    return {"loss": total, "ce_loss": ce, "ctc_loss": ctc, "optimizer_steps": steps, "micro_batches": micro}


@torch.inference_mode()
def predict_loader(model, loader, device, precision: str):
    """-> names, true labels, predicted labels, class probabilities [N, 4] (loader order)."""
    model.eval()
    names, labels, probs = [], [], []
    for batch in loader:
        names += batch.names
        labels.append(batch.labels)
        batch = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(**batch.model_inputs()).logits
        probs.append(torch.softmax(logits.float(), dim=-1).cpu())
    probs = torch.cat(probs).numpy()
    return names, torch.cat(labels).numpy(), probs.argmax(axis=1), probs


def evaluate(model, loader, device, precision: str) -> dict:
    _, y_true, y_pred, _ = predict_loader(model, loader, device, precision)
    return emotion_metrics(y_true, y_pred)


def write_predictions(path: Path, names, y_true, y_pred, probs) -> None:
    frame = pd.DataFrame({"FileName": names,
                          "true_label": [CLASS_NAMES[i] for i in y_true],
                          "predicted_label": [CLASS_NAMES[i] for i in y_pred]})
    for k, name in enumerate(CLASS_NAMES):
        frame[f"prob_{name}"] = probs[:, k]
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def run_fold(session: int, corpus: Corpus, model_cfg: ModelConfig, run_cfg: RunConfig,
             device, run_dir: Path) -> dict:
    """Train on the other sessions, select the best epoch, save it, and score the test session."""
    seed_everything(run_cfg.seed)
    train_idx, dev_idx, test_idx = loso_split(corpus.table, session, run_cfg.dev_fraction, run_cfg.seed)
    log.info("fold %d: train %d, dev %d, test %d utterances", session, len(train_idx), len(dev_idx), len(test_idx))
    train_loader = make_loader(corpus, train_idx, run_cfg, True, device, epoch_seed=run_cfg.seed)
    dev_loader = make_loader(corpus, dev_idx, run_cfg, False, device) if len(dev_idx) else None
    test_loader = make_loader(corpus, test_idx, run_cfg, False, device)
    model = build_model(model_cfg).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=run_cfg.learning_rate, fused=device.type == "cuda")
    best_score, best_epoch = -1.0, 0
    stats_path = run_dir / f"{session}_stats.txt"
    for epoch in range(1, run_cfg.epochs + 1):
        start = time.perf_counter()
        train_loader.batch_sampler.set_epoch(epoch)
        record = {"epoch": epoch, **train_epoch(model, train_loader, optimizer, run_cfg, device, epoch)}
        record["dev"] = evaluate(model, dev_loader, device, run_cfg.precision) if dev_loader else None
        record["test"] = evaluate(model, test_loader, device, run_cfg.precision)
        score = record["dev" if run_cfg.select_on == "dev" else "test"]["ua"]
        record["selected_on"] = run_cfg.select_on
        if score > best_score:
            best_score, best_epoch = score, epoch
            save_checkpoint(run_dir / f"{session}_model.pt", model, model_config=model_cfg.to_dict(),
                            session=session, epoch=epoch, metrics={"dev": record["dev"], "test": record["test"]},
                            selected_on=run_cfg.select_on)
        record["best_epoch"] = best_epoch
        record["seconds"] = round(time.perf_counter() - start, 3)
        with open(stats_path, "a") as stats:
            stats.write(json.dumps(record) + "\n")
        log.info("fold %d epoch %d: loss %.4f (ce %.4f, ctc %.4f) dev UA %s test UA %.4f%s", session, epoch,
                 record["loss"], record["ce_loss"], record["ctc_loss"],
                 f"{record['dev']['ua']:.4f}" if record["dev"] else "-", record["test"]["ua"],
                 " *" if best_epoch == epoch else "")
    return evaluate_checkpoint(session, corpus, model_cfg, run_cfg, device, run_dir, run_dir, test_idx)


def evaluate_checkpoint(session, corpus, model_cfg, run_cfg, device, checkpoint_dir: Path, run_dir: Path,
                        test_idx=None) -> dict:
    """Score `<checkpoint_dir>/<session>_model.pt` on the test session and write its predictions."""
    if test_idx is None:
        test_idx = corpus.table.index[corpus.table["session"] == session].to_numpy()
    model, payload = restore_model(checkpoint_dir / f"{session}_model.pt", model_cfg.run, model_cfg.wav2vec2)
    model.to(device)
    loader = make_loader(corpus, test_idx, run_cfg, False, device)
    names, y_true, y_pred, probs = predict_loader(model, loader, device, run_cfg.precision)
    write_predictions(run_dir / f"{session}_predictions.csv", names, y_true, y_pred, probs)
    metrics = emotion_metrics(y_true, y_pred)
    metrics["epoch"] = payload.get("epoch")
    return metrics


# ---------------------------------------------------------------- main
def main(argv=None) -> dict:
    model_cfg, run_cfg = parse_args(argv)
    run_dir = Path(run_cfg.save_path) / model_cfg.run
    runinfo.claim_run_dir(run_dir, overwrite=run_cfg.overwrite)
    setup_logging(run_dir)
    device = resolve_device(run_cfg.device)
    log.info("run %s on %s (precision %s), sessions %s", model_cfg.run, device, run_cfg.precision, run_cfg.sessions)
    corpus = load_corpus(model_cfg, run_cfg)
    runinfo.write_config(run_dir, model_cfg, run_cfg)
    fold_metrics = {}
    for session in run_cfg.sessions:
        if run_cfg.eval_only:
            fold_metrics[session] = evaluate_checkpoint(session, corpus, model_cfg, run_cfg, device,
                                                        Path(run_cfg.checkpoint_dir), run_dir)
        else:
            fold_metrics[session] = run_fold(session, corpus, model_cfg, run_cfg, device, run_dir)
    selection = OPTIMISTIC if run_cfg.select_on == "test" else "dev split of the training sessions"
    results = write_results(run_dir, fold_metrics, {"run": model_cfg.run, "alpha": model_cfg.alpha,
                                                    "selection": selection, "eval_only": run_cfg.eval_only})
    title = f"{model_cfg.run} (alpha {model_cfg.alpha}), best epoch chosen on {selection}"
    print(format_table(fold_metrics, title))
    return results


if __name__ == "__main__":
    try:
        main()
    except (DataError, AudioError, CheckpointError, runinfo.RunDirError, OSError) as err:
        logging.getLogger("mmer").error("%s", err)
        sys.exit(2)
