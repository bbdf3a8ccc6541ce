r"""Train and evaluate MMER and its baselines with leave-one-session-out cross-validation
on IEMOCAP (or re-evaluate saved / published checkpoints with --eval_only).

    python run.py --run mmer --alpha 0.1 --csv_path data/iemocap.csv \
        --data_path_audio data/audio --data_path_roberta data/roberta --save_path runs

Data-parallel on N GPUs (one process each, DDP; --batch_size is per process; the `--` keeps
torchrun from reading --run as its own --run-path):
    torchrun --nproc_per_node N -- run.py --run mmer ...
"""
import contextlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import transformers
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from data_prep.extract_roberta import TextFeatureError, features_text_encoder, recorded_encoder, text_encoder_width
from models import MODELS, ModelConfig, build_model
from models.base import CTC_REDUCTIONS
from models.encoders import (audio_input_spec, conv_cache_refusal, conv_features, encoder_config, frame_lengths,
                             min_samples, padding_is_exact)
from models.fusion import AttentionLayer
from utils import distributed, runinfo
from utils.audio import AudioError
from utils.cli import HelpFormatter, Parser, add_number
from utils.hub import check_model_name
from utils.lock import LockedError, RunLock
from utils.checkpoint import (CheckpointError, checkpoint_path, find_checkpoints, load_checkpoint, restore_model,
                              save_checkpoint)
from utils.data import (BucketBatchSampler, Collator, DataError, EmotionDataset, ExactBatchSampler,
                        RandomBatchSampler, load_audio, load_text_features, loso_split, read_table,
                        text_feature_width)
from utils.distributed import DistributedBucketSampler, RoundRobinBatchSampler
from utils.device import autocast, check_precision, seed_everything
from utils.files import atomic_path
from utils.labels import CLASS_NAMES
from utils.metrics import emotion_metrics
from utils.report import format_table, write_results
from utils.validate import InputProblems, validate_inputs

log = logging.getLogger("mmer")
OPTIMISTIC = "test (OPTIMISTIC: the best epoch is chosen on the test session, as upstream did)"
DEV_SELECTION = "dev split of the training sessions"
PROGRESS_SECONDS = 60.0  # progress lines in a log file, where no bar is drawn
PUBLISHED = ("test (OPTIMISTIC: checkpoints without our selection record, e.g. the published ones, whose "
             "authors chose the best epoch on the test session)")


@dataclass
class RunConfig:
    """Run settings (paths, schedule, devices); written beside the results."""
    csv_path: str = "data/iemocap.csv"
    data_path_audio: str = "data/audio"
    data_path_roberta: str = "data/roberta"
    roberta: str | None = None   # the text encoder of the features (their encoder.json), else roberta-base
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
    gradient_checkpointing: bool = False
    compile: bool = False
    cache_conv_features: bool = False
    eval_batch_size: int = 8
    eval_only: bool = False
    checkpoint_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    max_skipped_fraction: float = 0.05
    max_steps: int | None = None
    limit_utterances: int | None = None
    log_every: int = 25
    tensorboard: bool = False
    world_size: int = 1   # processes training each fold (torchrun), not a flag; the global batch depends on it


# flags whose default, under --eval_only, is what the run being re-evaluated recorded
RECORDED = {"run": "model", "wav2vec2": "model", "alpha": "model", "ctc_reduction": "model", "csv_path": "run",
            "data_path_audio": "run", "data_path_roberta": "run", "roberta": "run"}


def parse_args(argv=None) -> tuple[ModelConfig, RunConfig]:
    """Flags -> the two configurations. Nonsense is refused here (exit code 2, one line), before
    any data is read; --eval_only fills what is not given from the run it re-evaluates."""
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    d, m = RunConfig(), ModelConfig()
    data = p.add_argument_group("data")
    data.add_argument("--csv_path", help=f"utterance csv from data_prep/iemocap_prep.py (default {d.csv_path})")
    data.add_argument("--data_path_audio", help=f"folder of <FileName>.wav (default {d.data_path_audio})")
    data.add_argument("--data_path_roberta", help=f"folder of <FileName>.npy, mmer (default {d.data_path_roberta})")
    add_number(data, "--sessions", int, 1, nargs="+", default=None,
               help="test sessions (folds) to run (default: 1 2 3 4 5; with --eval_only, the sessions of the csv "
                    "that have a checkpoint)")
    add_number(data, "--dev_fraction", float, 0, 1, high_open=True, default=d.dev_fraction,
               help="share of the training sessions held out for model selection (stratified by speaker, then label)")
    add_number(data, "--num_workers", int, 0, default=d.num_workers, help="DataLoader worker processes")
    add_number(data, "--limit_utterances", int, 1, default=None,
               help="debug: keep only the first N utterances of each session")
    model = p.add_argument_group("model")
    model.add_argument("--run", choices=list(MODELS), help=f"which variant (default {m.run})")
    add_number(model, "--alpha", float, 0, default=None,
               help="weight of the CTC loss (mmer, cai_sota): loss = CE + alpha * (2 / B) * sum of the B utterances' "
                    f"CTC losses, upstream's CE + alpha * CTC_sum at its micro-batch of 2 (default {m.alpha})")
    model.add_argument("--ctc_reduction", choices=CTC_REDUCTIONS,
                       help="sum: each utterance's CTC loss summed over its frames (upstream's scale); mean: divided "
                            f"by its target length as well (F.ctc_loss's 'mean') (default {m.ctc_reduction})")
    model.add_argument("--wav2vec2", help=f"speech encoder: hub name or local folder (default {m.wav2vec2})")
    model.add_argument("--roberta", help="text encoder the features came from (default: the one their encoder.json "
                                         "names, else roberta-base); recorded, refused when it contradicts encoder.json")
    add_number(model, "--dropout", float, 0, 1, high_open=True, default=m.dropout,
               help="on the encoder's last hidden state, the text embeddings and the fusion layers")
    model.add_argument("--specaugment", action="store_true", help="turn the encoder's SpecAugment on")
    opt = p.add_argument_group("optimisation")
    add_number(opt, "--epochs", int, 1, default=d.epochs)
    add_number(opt, "--batch_size", int, 1, default=d.batch_size,
               help="utterances per micro-batch and process: under torchrun the global batch is batch_size x processes")
    add_number(opt, "--accum_grad", int, 1, default=d.accum_grad, help="micro-batches per optimizer step")
    add_number(opt, "--learning_rate", float, 0, low_open=True, default=d.learning_rate, help="AdamW learning rate")
    opt.add_argument("--batching", choices=["bucket", "random"], default=d.batching,
                     help="bucket: length-grouped batches in shuffled order (less padding); random: upstream's")
    add_number(opt, "--seed", int, 0, default=d.seed, help="seeds the model, the dev split and the batch order")
    opt.add_argument("--gradient_checkpointing", action="store_true",
                     help="recompute encoder activations in the backward pass (less memory, ~30%% slower)")
    opt.add_argument("--compile", action="store_true",
                     help="torch.compile the encoder layers and fusion layers (GPU; the first epoch compiles); "
                          "for encoders that take an attention mask, audio is then padded to fixed lengths "
                          "(at most 19%% longer, masked)")
    opt.add_argument("--cache_conv_features", action="store_true",
                     help="run the frozen convolutional feature encoder once per utterance and keep its output "
                          "in memory (exact in fp32, so only for layer-norm feature encoders that take an "
                          "attention mask, such as wav2vec2-large-lv60; about 100 KB per audio second, "
                          "in every process)")
    add_number(opt, "--max_skipped_fraction", float, 0, 1, default=d.max_skipped_fraction,
               help="stop when more than this share of an epoch's optimizer steps had non-finite gradients")
    ctl = p.add_argument_group("run control")
    ctl.add_argument("--save_path", default=d.save_path, help="results go to <save_path>/<run>/")
    ctl.add_argument("--device", default=d.device,
                     help="auto (CUDA when present; cuda:<LOCAL_RANK> under torchrun), cpu, cuda, cuda:N")
    ctl.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                     help="auto: bf16 autocast on GPU, fp32 on CPU; bf16 on a CPU with AVX512-BF16/AMX trains "
                          "base-size encoders about 2x faster (see docs/PERFORMANCE.md)")
    ctl.add_argument("--select_on", choices=["dev", "test"], default=d.select_on,
                     help="pick the best epoch on the dev split; 'test' reproduces upstream (optimistic, no dev split)")
    add_number(ctl, "--eval_batch_size", int, 1, default=d.eval_batch_size,
               help="at most this many utterances per evaluation pass; results do not depend on it")
    ctl.add_argument("--eval_only", action="store_true",
                     help="evaluate <checkpoint_dir>/<session>_model.pt; flags not given are read from the "
                          "checkpoints and the run's config.json")
    ctl.add_argument("--checkpoint_dir", default=None, help="folder of <session>_model.pt (.safetensors) files")
    ctl.add_argument("--resume", action="store_true",
                     help="continue an interrupted run in the same folder: finished folds are kept, the "
                          "unfinished one restarts from its last completed epoch")
    ctl.add_argument("--overwrite", action="store_true", help="replace the results already in <save_path>/<run>")
    add_number(ctl, "--max_steps", int, 1, default=None, help="debug: optimizer steps per epoch")
    add_number(ctl, "--log_every", int, 1, default=d.log_every, help="micro-batches between progress-bar updates")
    ctl.add_argument("--tensorboard", action="store_true",
                     help="also write TensorBoard scalars to <save_path>/<run>/tensorboard/ (pip install tensorboard)")
    args = p.parse_args(argv)
    try:
        return resolve_configs(args, p)
    except (CheckpointError, DataError, TextFeatureError, OSError) as err:
        p.error(str(err))


def resolve_configs(args, p) -> tuple[ModelConfig, RunConfig]:
    d, m = RunConfig(), ModelConfig()
    if args.eval_only and not args.checkpoint_dir:
        p.error("--eval_only needs --checkpoint_dir DIR holding <session>_model.pt files")
    if args.eval_only:
        fill_recorded(args, recorded_settings(args.checkpoint_dir))
    builtin = {**asdict(m), **asdict(d)}
    for key in RECORDED:
        if getattr(args, key) is None:
            setattr(args, key, builtin[key])
    if args.sessions is not None and len(set(args.sessions)) < len(args.sessions):
        p.error(f"--sessions {' '.join(map(str, args.sessions))}: a session is named twice; name each once")
    if args.select_on == "dev" and args.dev_fraction <= 0 and not args.eval_only:
        p.error("--select_on dev needs --dev_fraction > 0")
    check_model_name(args.wav2vec2, "--wav2vec2")
    model_cfg = ModelConfig(run=args.run, wav2vec2=local_path(args.wav2vec2), alpha=args.alpha,
                            ctc_reduction=args.ctc_reduction, dropout=args.dropout, specaugment=args.specaugment)
    run_cfg = RunConfig(**{k: getattr(args, k) for k in RunConfig.__dataclass_fields__ if hasattr(args, k)})
    if run_cfg.cache_conv_features:
        why_not = conv_cache_refusal(encoder_config(model_cfg.wav2vec2), audio_input_spec(model_cfg.wav2vec2))
        if why_not:
            p.error(f"--cache_conv_features: {model_cfg.wav2vec2} {why_not}, so a cached output would not be "
                    "exact; it is offered for wav2vec2, HuBERT and WavLM encoders with a layer-norm feature "
                    "encoder that take an attention mask (e.g. wav2vec2-large-lv60)")
    if run_cfg.select_on == "test":
        run_cfg.dev_fraction = 0.0  # upstream trained on all four training sessions
    for key in ("csv_path", "data_path_audio", "data_path_roberta", "save_path", "checkpoint_dir"):
        setattr(run_cfg, key, absolute(getattr(run_cfg, key)))
    if run_cfg.sessions is None:
        run_cfg.sessions = evaluable_sessions(run_cfg) if run_cfg.eval_only else d.sessions
    if MODELS[model_cfg.run].uses_text:
        run_cfg.roberta = features_text_encoder(run_cfg.data_path_roberta, run_cfg.roberta)
    return model_cfg, run_cfg


def recorded_settings(checkpoint_dir) -> dict:
    """What the run in checkpoint_dir recorded: its config.json (run.py's runs) and the model
    settings in its first checkpoint ({} for the published checkpoints, which record nothing)."""
    folder = Path(checkpoint_dir)
    recorded = {}
    config = folder / "config.json"
    if config.is_file():
        try:
            saved = json.loads(config.read_text())
            recorded = {key: saved[part].get(key) for key, part in RECORDED.items()}
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
            raise CheckpointError(f"{config}: not the config.json run.py writes ({err}); give the settings as flags "
                                  "or remove the file") from err
    checkpoint = next(iter(find_checkpoints(folder).values()))
    saved_model = load_checkpoint(checkpoint).get("model_config") or {}
    recorded.update({key: saved_model[key] for key in ("run", "wav2vec2", "alpha", "ctc_reduction") if key in saved_model})
    return {key: value for key, value in recorded.items() if value is not None}


def fill_recorded(args, recorded: dict) -> None:
    """Flags not given take the recorded value; a given one wins, and a contradiction is named
    (the variant must match: the checkpoints hold that model)."""
    for key, value in recorded.items():
        given = getattr(args, key)
        if given is None:
            setattr(args, key, value)
        elif str(given) != str(value) and local_path(str(given)) != str(value):
            if key == "run":
                raise CheckpointError(f"{args.checkpoint_dir}: holds {value} models, but --run is {given}; "
                                      f"drop --run or pass --run {value}")
            log.warning("--%s %s given; the run in %s recorded %s", key, given, args.checkpoint_dir, value)


def evaluable_sessions(run_cfg: RunConfig) -> list[int]:
    """--eval_only without --sessions: the csv's sessions that have a checkpoint (a csv of one
    session evaluates that one, as upstream's inference script does)."""
    have = {int(s) for s in find_checkpoints(run_cfg.checkpoint_dir) if s.isdigit()}
    sessions = sorted(set(read_table(run_cfg.csv_path)["session"]) & have)
    if not sessions:
        raise DataError(f"{run_cfg.checkpoint_dir}: no checkpoint for any session of {run_cfg.csv_path} (checkpoints "
                        f"for sessions {sorted(have)}); name the sessions with --sessions")
    return sessions


def absolute(path: str | None) -> str | None:
    """Paths are recorded absolute, so a run folder's config works from any working directory."""
    return None if path is None else str(Path(path).expanduser().resolve())


def local_path(name_or_path: str) -> str:
    """A model given as a local folder is recorded absolute; a hub name stays as it is."""
    return absolute(name_or_path) if Path(name_or_path).expanduser().exists() else name_or_path


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


# ---------------------------------------------------------------- data
@dataclass
class Corpus:
    table: pd.DataFrame
    dataset: EmotionDataset
    collate: Collator
    padding_exact: bool                # padded evaluation batches are exact (models.encoders.padding_is_exact)
    conv_cache: tuple | None = None   # (feature-encoder weights, their output per utterance)


def checked_table(model_cfg: ModelConfig, run_cfg: RunConfig) -> pd.DataFrame:
    """The csv's table once every input has been checked (all problems at once, from the files'
    headers: nothing is decoded, and nothing is written before this passes)."""
    table = read_table(run_cfg.csv_path)
    if run_cfg.limit_utterances:
        table = table.groupby("session", group_keys=False).head(run_cfg.limit_utterances).reset_index(drop=True)
    uses_text = MODELS[model_cfg.run].uses_text
    validate_inputs(table, run_cfg.sessions, run_cfg.data_path_audio,
                    run_cfg.data_path_roberta if uses_text else None, csv_path=run_cfg.csv_path,
                    needs_training=not run_cfg.eval_only, min_samples=min_samples(model_cfg.wav2vec2))
    if uses_text:
        model_cfg.text_dim = check_text_width(table, run_cfg)
    table["label_index"] = table["label_index"].astype(int)
    return table


def check_text_width(table: pd.DataFrame, run_cfg: RunConfig) -> int:
    """The features' width, which must be the text encoder's (a roberta-large name over
    roberta-base features would otherwise be recorded, and fail only in predict.py)."""
    width = text_feature_width(Path(run_cfg.data_path_roberta) / f"{table['FileName'].iloc[0]}.npy")
    hidden = text_encoder_width(run_cfg.roberta)
    if hidden is not None and hidden != width:
        raise DataError(f"{run_cfg.data_path_roberta}: the features are {width} wide, but the text encoder "
                        f"{run_cfg.roberta} gives {hidden}; pass the --roberta that made them, or re-extract them")
    return width


def load_corpus(table: pd.DataFrame, model_cfg: ModelConfig, run_cfg: RunConfig) -> Corpus:
    """Decode the audio and read the text features into memory once for all folds and epochs."""
    uses_text = MODELS[model_cfg.run].uses_text
    spec = audio_input_spec(model_cfg.wav2vec2)
    padding_exact = padding_is_exact(encoder_config(model_cfg.wav2vec2), spec)
    log.info("loading %d utterances (audio%s)", len(table), " + text features" if uses_text else "")
    waves = load_audio(table, run_cfg.data_path_audio, spec, show_progress=distributed.is_main())
    text = None
    if uses_text:
        text = load_text_features(table, run_cfg.data_path_roberta, show_progress=distributed.is_main())
    dataset = EmotionDataset(table["FileName"], waves, table["label_index"], table["text"], text)
    return Corpus(table, dataset, Collator(spec), padding_exact)


def use_conv_cache(model, corpus: Corpus, run_cfg: RunConfig, device) -> None:
    """--cache_conv_features: the loaders hand the model the frozen feature encoder's output
    for every utterance instead of the audio (otherwise they hand it the audio). The output is
    computed on the device in length-sorted batches (exact for the layer-norm encoders the flag
    is allowed for), once, and again only for a model whose feature-encoder weights differ."""
    corpus.dataset.conv_features = None
    if not run_cfg.cache_conv_features:
        return
    weights = [p.detach().cpu() for p in model.wav2vec2.feature_extractor.parameters()]
    if corpus.conv_cache is None or not all(map(torch.equal, weights, corpus.conv_cache[0])):
        corpus.conv_cache = ([w.clone() for w in weights], conv_features_of(model, corpus, run_cfg, device))
    corpus.dataset.conv_features = corpus.conv_cache[1]


def conv_features_of(model, corpus: Corpus, run_cfg: RunConfig, device) -> list[torch.Tensor]:
    """[frames, channels] per utterance of the corpus, on the CPU."""
    lengths = corpus.dataset.lengths()
    cached = [None] * len(lengths)
    start = time.perf_counter()
    # no DataLoader: creating its iterator draws from the global RNG, and training's dropout
    # masks must not depend on whether the cache was built
    for indices in tqdm(ExactBatchSampler(lengths, run_cfg.eval_batch_size, corpus.padding_exact).batches(),
                        desc="conv features", leave=False, disable=None if distributed.is_main() else True):
        batch = corpus.collate([corpus.dataset[i] for i in indices])
        features = conv_features(model.wav2vec2, batch.input_values.to(device)).float().cpu()
        frames = frame_lengths(model.wav2vec2, batch.sample_lengths).tolist()
        for row, (i, n) in enumerate(zip(indices, frames)):
            cached[i] = features[row, :n].clone()
    log.info("cached the feature encoder's output of %d utterances (%.2f GB) in %.1f s", len(cached),
             sum(c.nbytes for c in cached) / 1e9, time.perf_counter() - start)
    return cached


def make_loader(corpus: Corpus, indices, run_cfg: RunConfig, train: bool, device):
    """With several processes each rank loads its part: a shard of every global training
    batch of world x batch_size, or every world-th evaluation batch (utils/distributed.py)."""
    subset = torch.utils.data.Subset(corpus.dataset, indices)
    lengths = corpus.dataset.lengths()[indices]
    world, rank = distributed.world_size(), distributed.rank()
    if train:
        sampler_cls = BucketBatchSampler if run_cfg.batching == "bucket" else RandomBatchSampler
        sampler = sampler_cls(lengths, run_cfg.batch_size * world, shuffle=True, seed=run_cfg.seed)
        sampler = DistributedBucketSampler(sampler, rank, world) if world > 1 else sampler
    else:  # padding-exact: every utterance scored as if alone, whatever --eval_batch_size
        sampler = ExactBatchSampler(lengths, run_cfg.eval_batch_size, corpus.padding_exact)
        sampler = RoundRobinBatchSampler(sampler, rank, world) if world > 1 else sampler
    collate = Collator(corpus.collate.spec, fixed_lengths=fixed_lengths(run_cfg, corpus.collate.spec))
    return torch.utils.data.DataLoader(subset, batch_sampler=sampler, collate_fn=collate,
                                       num_workers=run_cfg.num_workers, pin_memory=device.type == "cuda",
                                       persistent_workers=run_cfg.num_workers > 0)


# ---------------------------------------------------------------- training and evaluation
def optimizer_step(optimizer, params, skipped: torch.Tensor) -> None:
    """Step unless some gradient is non-finite. The check stays on the device: fused AdamW
    skips the update itself when `found_inf` is set, so no host synchronisation is needed."""
    grads = [p.grad for p in params if p.grad is not None]
    found_inf = (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float()
    optimizer.found_inf, optimizer.grad_scale = found_inf, None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    skipped += found_inf


def train_epoch(model, loader, optimizer, run_cfg: RunConfig, device, epoch: int, ddp=None) -> dict:
    """One epoch with gradient accumulation. Losses stay on the device and are read back
    only every `log_every` micro-batches, so the loop does not wait on the GPU each step.
    Under torchrun `ddp` wraps `model`, each rank runs its shard of every global batch, and
    the epoch's sums are added over the ranks at the end."""
    (ddp or model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    sums = torch.zeros(5, device=device)  # weighted total, ce, ctc; weight of the finite ones; non-finite shards
    skipped = torch.zeros((), device=device)
    steps = micro = 0
    audio_seconds = 0.0
    start = time.perf_counter()
    scales, last = distributed.loss_scales(loader.batch_sampler), len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
               disable=None if distributed.is_main() else True)
    logged = start
    for micro, (batch, scale) in enumerate(zip(bar, scales), start=1):
        audio_seconds += int(batch.sample_lengths.sum()) / 16000 if scale else 0.0
        sync = micro % run_cfg.accum_grad == 0 or micro == last
        with distributed.gradient_sync(ddp, sync):
            parts = forward_backward(model, ddp, batch.to(device, non_blocking=True), scale, run_cfg, device)
        weight = scale / distributed.world_size()  # this shard's share of the global micro-batch
        finite = torch.isfinite(parts).all()
        sums[:3] += torch.where(finite, parts * weight, 0.0)
        sums[3] += torch.where(finite, weight, 0.0)
        if scale:
            sums[4] += (~finite).float()
        if sync:
            optimizer_step(optimizer, params, skipped)  # gradients are synchronised: same found_inf on every rank
            steps += 1
            if run_cfg.max_steps and steps >= run_cfg.max_steps:
                break
        log_line = bar.disable and distributed.is_main() and time.perf_counter() - logged >= PROGRESS_SECONDS
        if micro % run_cfg.log_every == 0 or log_line:
            values = sums.tolist()
            total, ce, ctc = mean_losses(values[:3], values[3])
            elapsed = time.perf_counter() - start
            progress = f"loss {total:.3f} ce {ce:.3f} ctc {ctc:.3f} | {audio_seconds / elapsed:.0f} audio-s/s"
            bar.set_postfix_str(progress)
            if log_line:  # no bar in a log file (nohup, batch jobs): a line a minute instead
                logged = time.perf_counter()
                log.info("epoch %d: %d/%d micro-batches, %s, about %.0f s left", epoch, micro, last, progress,
                         elapsed / micro * (last - micro))
    *weighted, weight, nonfinite, audio_seconds = distributed.sum_floats([*sums.tolist(), audio_seconds], device)
    total, ce, ctc = mean_losses(weighted, weight)
    return {"loss": total, "ce_loss": ce, "ctc_loss": ctc, "optimizer_steps": steps, "micro_batches": micro,
            "skipped_steps": int(skipped.item()), "nonfinite_micro_batches": int(nonfinite),
            "audio_seconds": round(audio_seconds, 2)}


def forward_backward(model, ddp, batch, scale: float, run_cfg: RunConfig, device) -> torch.Tensor:
    """One micro-batch (this rank's shard) forward and backward; its loss counts with
    `scale` (utils/distributed.DistributedBucketSampler, 1 in one process) / accum_grad.
    -> the detached [total, ce, ctc] losses."""
    with autocast(device, run_cfg.precision):
        output = (ddp or model)(**batch.model_inputs())
    losses = model.loss(output, batch.labels, batch.ctc_targets, batch.ctc_target_lengths)
    (losses["total"] * scale / run_cfg.accum_grad).backward()
    return torch.stack([losses["total"], losses["ce"], losses.get("ctc", losses["ce"] * 0)]).detach()


def mean_losses(weighted: list, weight: float) -> list[float]:
    """Micro-batch mean of the finite losses (0 when none was finite)."""
    return [value / weight if weight else 0.0 for value in weighted]


@torch.inference_mode()
def predict_loader(model, loader, device, precision: str):
    """-> names, true labels, predicted labels, class probabilities [N, 4] (loader order;
    a rank may have no evaluation batch)."""
    model.eval()
    names, labels, probs = [], [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, len(CLASS_NAMES))]
    for batch in loader:
        names += batch.names
        labels.append(batch.labels)
        batch = batch.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(**batch.model_inputs()).logits
        probs.append(torch.softmax(logits.float(), dim=-1).cpu())
    probs = torch.cat(probs).numpy()
    return names, torch.cat(labels).numpy(), probs.argmax(axis=1), probs


def predict_split(model, loader, device, precision: str):
    """predict_loader on this rank's batches, gathered from every rank: one row per utterance,
    ordered by name (the same rows whatever the number of processes)."""
    names, labels, _, probs = predict_loader(model, loader, device, precision)
    return distributed.gather_predictions(names, labels, probs)


def evaluate(model, loader, device, precision: str) -> dict:
    _, y_true, y_pred, _ = predict_split(model, loader, device, precision)
    return emotion_metrics(y_true, y_pred)


def write_predictions(path: Path, names, y_true, y_pred, probs) -> None:
    frame = pd.DataFrame({"FileName": names,
                          "true_label": [CLASS_NAMES[i] for i in y_true],
                          "predicted_label": [CLASS_NAMES[i] for i in y_pred]})
    for k, name in enumerate(CLASS_NAMES):
        frame[f"prob_{name}"] = probs[:, k]
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


# ---------------------------------------------------------------- one fold
def build_training(model_cfg: ModelConfig, run_cfg: RunConfig, device):
    model = build_model(model_cfg).to(device)
    if run_cfg.gradient_checkpointing:  # the name transformers 5 gives gradient checkpointing
        model.wav2vec2.activation_checkpointing_enable()
    freeze_untrained(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=run_cfg.learning_rate, fused=True)
    return model, optimizer


def compile_regions(model, static_shapes: bool) -> None:
    """--compile: torch.compile the model's blocks in place (parameter names unchanged): the
    speech encoder's feature encoder, feature projection and each layer (one compiled layer
    serves all its copies), and each fusion layer. Not the whole model: LayerDrop's random
    skipping of encoder layers is a data-dependent branch that sends the whole encoder back
    to eager mode. static_shapes (encoders that take an attention mask, whose batches the
    Collator then pads to fixed lengths, see fixed_lengths): the encoder blocks compile once
    per length of the ladder; otherwise torch makes a changing length dynamic. The fusion
    layers pair text and audio lengths, so their shapes are always dynamic."""
    # about 21 lengths x (training, evaluation) x (full, last) batches per compiled block
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 128)
    encoder = model.wav2vec2
    for module in [encoder.feature_extractor, encoder.feature_projection, *encoder.encoder.layers]:
        module.compile(dynamic=False if static_shapes else None)
    for module in model.modules():
        if isinstance(module, AttentionLayer):
            module.compile(dynamic=True)


def fixed_lengths(run_cfg: RunConfig, spec) -> bool:
    """Pad batches to the fixed ladder of lengths (utils.data.fixed_length) under --compile,
    where that changes no result: for encoders that take an attention mask. wav2vec2-base takes
    none, and extra zeros would enter its group norm and attention."""
    return run_cfg.compile and spec.return_attention_mask


def freeze_untrained(model) -> None:
    """Freeze what no loss reaches, so that neither AdamW nor DDP waits for its gradient: the
    CTC head when alpha = 0 (its loss is only logged, detached) and the encoder's mask
    embedding when SpecAugment masks no time step. (DDP cannot skip these by itself: the CTC
    head's output is one of the forward's outputs.)"""
    encoder_config = model.wav2vec2.config
    if hasattr(model.wav2vec2, "masked_spec_embed") and not (
            encoder_config.apply_spec_augment and encoder_config.mask_time_prob > 0):
        model.wav2vec2.masked_spec_embed.requires_grad_(False)
    if model.has_ctc and not model.config.alpha:
        model.ctc_linear.requires_grad_(False)


def uses_layerdrop(model) -> bool:
    """LayerDrop skips whole encoder layers at random, differently on each rank, so DDP must
    then look for parameters without gradient after every backward (find_unused_parameters)."""
    return getattr(model.wav2vec2.config, "layerdrop", 0.0) > 0


def run_fold(session: int, corpus: Corpus, model_cfg: ModelConfig, run_cfg: RunConfig,
             device, run_dir: Path) -> dict:
    """Train on the other sessions, keep the best epoch (on dev, or on test if asked), then
    score it on the test session. A `<session>_last.pt` after each epoch makes it resumable.
    Under torchrun every rank trains (DDP) and evaluates its share; rank 0 alone writes."""
    seed_everything(run_cfg.seed)
    train_idx, dev_idx, test_idx = loso_split(corpus.table, session, run_cfg.dev_fraction, run_cfg.seed)
    log.info("fold %d: train %d, dev %d, test %d utterances", session, len(train_idx), len(dev_idx), len(test_idx))
    train_loader = make_loader(corpus, train_idx, run_cfg, True, device)
    dev_loader = make_loader(corpus, dev_idx, run_cfg, False, device) if len(dev_idx) else None
    test_loader = make_loader(corpus, test_idx, run_cfg, False, device)
    model, optimizer = build_training(model_cfg, run_cfg, device)
    use_conv_cache(model, corpus, run_cfg, device)
    rank0 = distributed.is_main()
    if rank0:
        report_long_targets(model, corpus, train_idx)
    board = tensorboard_writer(run_dir, session) if run_cfg.tensorboard and rank0 else None

    def save_best(record):  # the fold's selected model, with the metrics it was chosen by
        save_checkpoint(run_dir / f"{session}_model.pt", model, model_config=model_cfg.to_dict(), session=session,
                        epoch=record["epoch"], selected_on=run_cfg.select_on,
                        metrics={"dev": record["dev"], "test": record["test"]})

    state = restore_fold(run_dir, session, model, optimizer, save_best) if run_cfg.resume else None
    state = state or runinfo.FoldState(session=session)
    if run_cfg.compile:
        compile_regions(model, static_shapes=fixed_lengths(run_cfg, corpus.collate.spec))
    # after the restore: DDP starts by giving every rank rank 0's weights
    ddp = distributed.wrap_model(model, device, find_unused_parameters=uses_layerdrop(model))
    for epoch in range(state.epoch + 1, run_cfg.epochs + 1):
        start = time.perf_counter()
        distributed.seed_rank(run_cfg.seed, epoch)
        train_loader.batch_sampler.set_epoch(epoch)
        record = {"epoch": epoch, **train_epoch(model, train_loader, optimizer, run_cfg, device, epoch, ddp)}
        check_skipped(record, run_cfg, session)
        record["dev"] = evaluate(model, dev_loader, device, run_cfg.precision) if dev_loader is not None else None
        record["test"] = evaluate(model, test_loader, device, run_cfg.precision)
        record["selected_on"] = run_cfg.select_on
        score = record["dev" if run_cfg.select_on == "dev" else "test"]["ua"]
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch = score, epoch
        state.epoch = epoch
        record["best_epoch"] = state.best_epoch
        record["seconds"] = round(time.perf_counter() - start, 3)
        if rank0:  # last.pt first: whatever a kill interrupts after it, restore() can redo from it
            state.save(run_dir, model, optimizer, record)
            if improved:
                save_best(record)
        log_epoch(session, record, board)
    return finish_fold(session, corpus, model_cfg, run_cfg, device, run_dir, test_idx)


def restore_fold(run_dir: Path, session: int, model, optimizer, save_best) -> "runinfo.FoldState | None":
    """--resume: rank 0 restores `<session>_last.pt` (and repairs the stats and best model
    after a kill); the other ranks read the fold state and optimizer from the same file, and
    get the weights from rank 0 when DDP wraps the model. None: the fold starts afresh."""
    if distributed.is_main():
        return runinfo.FoldState.restore(run_dir, session, model, optimizer, save_best)
    path = run_dir / f"{session}_last.pt"
    if not path.is_file():
        return None
    payload = load_checkpoint(path)
    optimizer.load_state_dict(payload["optimizer"])
    return runinfo.FoldState(**payload["fold_state"])


def tensorboard_writer(run_dir: Path, session: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise OSError(f"--tensorboard needs the tensorboard package ({err}); pip install tensorboard") from err
    return SummaryWriter(str(run_dir / "tensorboard" / f"session{session}"))


def report_long_targets(model, corpus: Corpus, indices) -> None:
    """CTC needs at least one frame per target symbol (two for a repeated letter); such
    utterances get an infinite CTC loss, which zero_infinity turns into zero. Say which."""
    samples = torch.tensor(corpus.dataset.lengths()[indices])
    frames = frame_lengths(model.wav2vec2, samples).tolist()
    too_long = []
    for i, n_frames in zip(indices, frames):
        target = corpus.dataset.targets[i]
        needed = len(target) + sum(a == b for a, b in zip(target, target[1:]))
        if needed > n_frames:
            too_long.append(f"{corpus.dataset.names[i]} ({needed} > {n_frames} frames)")
    if too_long:
        log.warning("%d utterance(s) have transcripts longer than their audio allows for CTC; their CTC loss "
                    "is zeroed (zero_infinity): %s%s", len(too_long), ", ".join(too_long[:10]),
                    " ..." if len(too_long) > 10 else "")


def check_skipped(record: dict, run_cfg: RunConfig, session: int) -> None:
    if record["skipped_steps"]:
        log.warning("fold %d epoch %d: %d optimizer step(s) skipped for non-finite gradients", session,
                    record["epoch"], record["skipped_steps"])
    if record["skipped_steps"] > run_cfg.max_skipped_fraction * max(record["optimizer_steps"], 1):
        raise runinfo.DivergedError(
            f"fold {session} epoch {record['epoch']}: {record['skipped_steps']} of {record['optimizer_steps']} "
            f"optimizer steps had non-finite gradients (limit {run_cfg.max_skipped_fraction:.0%}); the run "
            "diverged, so no model of this epoch is saved. Lower --learning_rate, or check the inputs "
            "(utterances with targets longer than the audio are skipped by CTC's zero_infinity)")


def log_epoch(session: int, record: dict, board=None) -> None:
    if board is not None:
        for key in ("loss", "ce_loss", "ctc_loss", "skipped_steps"):
            board.add_scalar(f"train/{key}", record[key], record["epoch"])
        for split in ("dev", "test"):
            for key in ("wa", "ua", "macro_f1"):
                if record[split]:
                    board.add_scalar(f"{split}/{key}", record[split][key], record["epoch"])
        board.add_scalar("speed/audio_seconds_per_second", record["audio_seconds"] / record["seconds"], record["epoch"])
        board.flush()
    dev = f"{record['dev']['ua']:.4f}" if record["dev"] else "-"
    log.info("fold %d epoch %d: loss %.4f (ce %.4f, ctc %.4f) dev UA %s test UA %.4f%s [%.1fs]", session,
             record["epoch"], record["loss"], record["ce_loss"], record["ctc_loss"], dev, record["test"]["ua"],
             " *" if record["best_epoch"] == record["epoch"] else "", record["seconds"])


def finish_fold(session, corpus, model_cfg, run_cfg, device, run_dir: Path, test_idx) -> dict:
    """Score the best checkpoint on the test session, record the fold as finished."""
    distributed.barrier()  # every rank reads the best checkpoint, which rank 0 has now written
    metrics = evaluate_checkpoint(session, corpus, model_cfg, run_cfg, device, run_dir, run_dir, test_idx)
    if distributed.is_main():
        runinfo.finish_fold(run_dir, session, metrics)
    return metrics


def evaluate_checkpoint(session, corpus, model_cfg, run_cfg, device, checkpoint_dir: Path, run_dir: Path,
                        test_idx=None) -> dict:
    """Score `<checkpoint_dir>/<session>_model.pt` on the test session and write its predictions."""
    if test_idx is None:
        test_idx = corpus.table.index[corpus.table["session"] == session].to_numpy()
    model, payload = restore_model(checkpoint_path(checkpoint_dir, session), model_cfg.run, model_cfg.wav2vec2)
    model.to(device)
    use_conv_cache(model, corpus, run_cfg, device)
    loader = make_loader(corpus, test_idx, run_cfg, False, device)
    names, y_true, y_pred, probs = predict_split(model, loader, device, run_cfg.precision)
    if distributed.is_main():
        write_predictions(run_dir / f"{session}_predictions.csv", names, y_true, y_pred, probs)
    metrics = emotion_metrics(y_true, y_pred)
    metrics["epoch"] = payload.get("epoch")
    metrics["selected_on"] = payload.get("selected_on")  # None: a checkpoint without our record (published)
    return metrics


# ---------------------------------------------------------------- main
def main(argv=None) -> dict | None:
    """Run the folds and write the results; -> the results (None on ranks other than 0)."""
    model_cfg, run_cfg = parse_args(argv)
    device = distributed.init_distributed(run_cfg.device)
    try:
        return run_folds(model_cfg, run_cfg, device)
    finally:
        distributed.shutdown()


def run_folds(model_cfg: ModelConfig, run_cfg: RunConfig, device) -> dict | None:
    """Check the inputs, take the run folder (rank 0: a lock per fold, held to the end), run the
    folds, write the results. Nothing is written into the folder before the inputs pass."""
    transformers.logging.disable_progress_bar()
    run_cfg.world_size = distributed.world_size()
    run_dir = Path(run_cfg.save_path) / model_cfg.run
    todo = folds_to_run(run_dir, run_cfg)
    # a final `--resume` over finished folds only writes the results: no data to check or load
    table = checked_table(model_cfg, run_cfg) if todo else None
    with contextlib.ExitStack() as held:
        if distributed.is_main():
            runinfo.claim_run_dir(run_dir, model_cfg, run_cfg, todo, held,
                                  lambda: write_config(run_dir, model_cfg, run_cfg, table))
        distributed.barrier()  # an --overwrite has emptied the folder before any rank reads it
        todo = folds_to_run(run_dir, run_cfg)  # another process may have finished one meanwhile
        setup_logging(run_dir)
        check_precision(device, run_cfg.precision)
        log.info("run %s on %s (precision %s, %d process%s), sessions %s", model_cfg.run, device, run_cfg.precision,
                 run_cfg.world_size, "es" if run_cfg.world_size > 1 else "", todo)
        fold_metrics = {}
        if todo:
            corpus = load_corpus(table, model_cfg, run_cfg)
            with logging_redirect_tqdm():
                for session in todo:
                    if run_cfg.eval_only:
                        fold_metrics[session] = evaluate_checkpoint(session, corpus, model_cfg, run_cfg, device,
                                                                    Path(run_cfg.checkpoint_dir), run_dir)
                    else:
                        fold_metrics[session] = run_fold(session, corpus, model_cfg, run_cfg, device, run_dir)
        if not distributed.is_main():
            return None
        with RunLock(run_dir / ".run.lock", str(run_dir), wait=60):  # processes of other folds may report too
            return report(run_dir, fold_metrics if run_cfg.eval_only else finished_folds(run_dir), model_cfg, run_cfg)


def write_config(run_dir: Path, model_cfg: ModelConfig, run_cfg: RunConfig, table: pd.DataFrame | None) -> None:
    """config.json: the settings, data checksums and the features' text encoder (utils.runinfo)."""
    uses_text = MODELS[model_cfg.run].uses_text
    names = table["FileName"] if table is not None else []
    runinfo.write_config(run_dir, model_cfg, run_cfg, runinfo.data_checksums(run_cfg, names, uses_text),
                         recorded_encoder(run_cfg.data_path_roberta) if uses_text else None)


def folds_to_run(run_dir: Path, run_cfg: RunConfig) -> list[int]:
    """The requested folds less, with --resume, those finished in this folder already (by an
    earlier run, or by another process running folds in parallel)."""
    todo = []
    for session in run_cfg.sessions:
        if run_cfg.resume and not run_cfg.eval_only and runinfo.finished_fold(run_dir, session):
            log.info("fold %d: finished in an earlier run, kept", session)
        else:
            todo.append(session)
    return todo


def finished_folds(run_dir: Path) -> dict:
    """The test metrics of every finished fold in the folder, whichever process trained it:
    the results of a run are those of all its folds."""
    sessions = sorted(int(path.name.split("_")[0]) for path in run_dir.glob("*_result.json"))
    return {session: runinfo.finished_fold(run_dir, session) for session in sessions}


def selection_label(fold_metrics: dict, run_cfg: RunConfig) -> str:
    """How the best epochs were chosen: by this run's --select_on, or, re-evaluating checkpoints,
    by what each records (ours say; published ones were chosen on the test session upstream)."""
    if not run_cfg.eval_only:
        return OPTIMISTIC if run_cfg.select_on == "test" else DEV_SELECTION
    recorded = {m.get("selected_on") for m in fold_metrics.values()}
    labels = sorted({PUBLISHED if on is None else OPTIMISTIC if on == "test" else DEV_SELECTION for on in recorded})
    return f"{'; '.join(labels)} (re-evaluated checkpoints from {run_cfg.checkpoint_dir})"


def report(run_dir: Path, fold_metrics: dict, model_cfg: ModelConfig, run_cfg: RunConfig) -> dict:
    selection = selection_label(fold_metrics, run_cfg)
    results = write_results(run_dir, fold_metrics, {"run": model_cfg.run, "alpha": model_cfg.alpha,
                                                    "selection": selection, "eval_only": run_cfg.eval_only})
    print(format_table(fold_metrics, f"{model_cfg.run} (alpha {model_cfg.alpha}); best epoch: {selection}"))
    return results


if __name__ == "__main__":
    try:
        main()
    except (DataError, InputProblems, AudioError, CheckpointError, runinfo.RunDirError,
            runinfo.DivergedError, LockedError, OSError) as err:
        logging.getLogger("mmer").error("%s", err)
        sys.exit(2)
