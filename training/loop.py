"""The training loop and what it runs on: the corpus (streamed from its caches), its loaders (length-
bucketed training batches, padding-exact evaluation batches), one epoch with gradient
accumulation (DDP under torchrun), the optimizer step that skips non-finite gradients,
evaluation and predictions, and the speed options (compiled blocks, the cached frozen
feature encoder). run.py holds the command line and the fold loop around it."""
import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from models import build_model
from models.encoders import conv_features, frame_lengths
from models.fusion import AttentionLayer
from utils import distributed
from training import runinfo
from dataio.augment import AudioViewSettings, make_view, view_rng
from dataio.audio import normalize, read_audio
from dataio.dataset import BucketBatchSampler, Collator, EmotionDataset, ExactBatchSampler, RandomBatchSampler
from utils.distributed import DistributedBucketSampler, RoundRobinBatchSampler
from utils.device import autocast, evaluation_precision, training_precision
from utils.files import atomic_path
from training.metrics import emotion_metrics
from dataio.store import Arrays, Store, built, fingerprint, write_items

log = logging.getLogger("mmer")
PROGRESS_SECONDS = 60.0  # progress lines in a log file, where no bar is drawn


@dataclass
class Corpus:
    """A run's corpus: the table, its items (audio and text features streamed from their
    caches, utils/data.py), its folds."""
    table: pd.DataFrame
    dataset: EmotionDataset
    collate: Collator
    padding_exact: bool                # padded evaluation batches are exact (models.encoders.padding_is_exact)
    scheme: object = None              # corpus.FoldScheme
    label_set: object = None           # labels.LabelSet
    conv_cache: tuple | None = None   # (what it was computed with, the feature encoder's output per utterance)
    view_text: list | None = None      # text features of each utterance's augmented transcript (2023 views)

    @functools.cached_property
    def positions(self) -> dict:
        """Utterance name -> its index in the dataset."""
        return {name: i for i, name in enumerate(self.dataset.names)}

    def index_of(self, names) -> list[int]:
        return [self.positions[name] for name in names]


AUDIO_VIEWS = ("speed", "tempo", "noise", "mask")


def audio_view_settings(spec: str) -> AudioViewSettings | None:
    """--audio_view: a comma list of speed (0.9-1.1x), tempo (0.9-1.1x, pitch kept), noise (white,
    10-30 dB SNR) and mask (SpecAugment-style: 2 time masks of 5 % in all, 2 frequency masks of
    10 %), or none."""
    parts = {part.strip() for part in spec.split(",") if part.strip()} - {"none"}
    unknown = parts - set(AUDIO_VIEWS)
    if unknown:
        raise ValueError(f"--audio_view {spec}: unknown {', '.join(sorted(unknown))}; choose among "
                         f"{', '.join(AUDIO_VIEWS)} or none")
    if not parts:
        return None
    return AudioViewSettings(speed_range=(0.9, 1.1) if "speed" in parts else None,
                             tempo_range=(0.9, 1.1) if "tempo" in parts else None,
                             snr_db_range=(10.0, 30.0) if "noise" in parts else None,
                             time_masks=2 if "mask" in parts else 0, freq_masks=2 if "mask" in parts else 0)


@dataclass
class Views:
    """Augmented views of the training utterances (the 2023 augmentation loss), made in the
    main process for each training batch, so no other utterance ever gets one. Audio: one of
    the utterance's files in a folder of pre-made views (upstream's --data_path_audio_augmented:
    files whose names end with `<FileName>.wav`, one picked per epoch), or the utterance
    transformed by utils.augment; text: the features of an augmented transcript (IEMOCAP's
    back-translated AugmentedText). Every choice comes from a generator per utterance and epoch
    (the same views whatever the workers, batch order or a resume); what is not augmented is
    the utterance's own. The views form their own batch, run in their own pass (upstream's)."""
    corpus: Corpus
    audio: AudioViewSettings | None
    seed: int
    spec: object                       # the encoder's AudioInputSpec
    max_samples: int | None = None
    audio_files: dict | None = None    # utterance index -> its pre-made view files (view_files)

    def batch_of(self, batch, epoch: int):
        """The views of a training batch's utterances, collated in the same order."""
        indices = self.corpus.index_of(batch.names)
        return self.corpus.collate([self.view(i, self.corpus.dataset[i], epoch) for i in indices])

    def view(self, index: int, item: dict, epoch: int) -> dict:
        view = dict(item, name=f"{item['name']}#view")
        rng = view_rng(self.seed, epoch, index)
        wave = None
        if self.audio_files is not None:
            files = self.audio_files[index]
            wave = read_audio(files[int(rng.integers(len(files)))], self.spec.sampling_rate)
        elif self.audio is not None:
            own = item["wave"] if item["wave"] is not None else self.corpus.dataset.waves[index]  # conv cache on
            wave = make_view(own, rng, self.audio)
        if wave is not None:
            wave = normalize(wave) if self.spec.do_normalize else wave
            view["wave"], view["conv_features"] = wave[: self.max_samples], None
        if self.corpus.view_text is not None:
            view["text"] = self.corpus.view_text[index]
        return view


def view_files(names, folder) -> dict[int, list]:
    """Pre-made views: for each utterance, the files in `folder` whose names end with
    `<FileName>.wav` (upstream's naming: `<anything><FileName>.wav`), sorted. Utterances
    without one are named (InputProblems) by the caller."""
    wanted = {f"{name}.wav": i for i, name in enumerate(names)}
    found: dict[int, list] = {}
    for path in sorted(Path(folder).iterdir()):
        for start in range(len(path.name)):
            i = wanted.get(path.name[start:])
            if i is not None:
                found.setdefault(i, []).append(path)
                break
    return found


def use_conv_cache(model, corpus: Corpus, run_cfg, device) -> None:
    """--cache_conv_features: the loaders hand the model the frozen feature encoder's output
    for every utterance instead of the audio (otherwise they hand it the audio). The output is
    computed on the device, each utterance as if alone (padding-exact batches: equal lengths
    for group-norm encoders), once for a corpus, encoder weights and device: on disk beside
    the audio cache (utils/store.py), or in memory for a corpus held in memory."""
    corpus.dataset.conv_features = None
    if not run_cfg.cache_conv_features:
        return
    weights = hashlib.sha256()
    for p in model.wav2vec2.feature_extractor.parameters():
        weights.update(p.detach().cpu().float().numpy().tobytes())
    samples = corpus.dataset.waves.samples
    key = (weights.hexdigest(), getattr(samples, "folder", None), corpus.dataset.waves.max_samples, device.type,
           str(next(model.wav2vec2.parameters()).dtype), run_cfg.eval_batch_size, corpus.padding_exact)
    if corpus.conv_cache is None or corpus.conv_cache[0] != key:
        if isinstance(samples, Store):
            folder = samples.folder.parent.parent / "conv" / fingerprint([], key=key)
            store = built(folder, lambda tmp: write_conv_features(tmp, model, corpus, run_cfg, device),
                          "feature-encoder output", distributed.is_local_main())
        else:
            store = Arrays([None] * len(corpus.dataset))
            for i, features in conv_features_of(model, corpus, run_cfg, device):
                store[i] = features
        corpus.conv_cache = (key, store)
    corpus.dataset.conv_features = corpus.conv_cache[1]


def conv_features_of(model, corpus: Corpus, run_cfg, device):
    """(utterance index, its [frames, channels] float32 array) for every utterance of the
    corpus, computed on the device in padding-exact batches, in length order."""
    lengths = corpus.dataset.lengths()
    # no DataLoader: creating its iterator draws from the global RNG, and training's dropout
    # masks must not depend on whether the cache was built
    for indices in tqdm(ExactBatchSampler(lengths, run_cfg.eval_batch_size, corpus.padding_exact).batches(),
                        desc="conv features", leave=False, disable=None if distributed.is_main() else True):
        batch = corpus.collate([corpus.dataset[i] for i in indices])
        features = conv_features(model.wav2vec2, batch.input_values.to(device)).float().cpu().numpy()
        frames = frame_lengths(model.wav2vec2, batch.sample_lengths).tolist()
        for row, (i, n) in enumerate(zip(indices, frames)):
            yield i, features[row, :n].copy()


def write_conv_features(folder: Path, model, corpus: Corpus, run_cfg, device) -> None:
    order = []

    def arrays():
        for i, features in conv_features_of(model, corpus, run_cfg, device):
            order.append(i)
            yield features
    width = model.wav2vec2.config.conv_dim[-1]
    write_items(folder, arrays(), np.float32, tail=(width,), order=order)


def make_loader(corpus: Corpus, indices, run_cfg, train: bool, device):
    """With several processes each rank loads its part: a shard of every global training
    batch of world x batch_size, or every world-th evaluation batch (utils/distributed.py)."""
    subset = torch.utils.data.Subset(corpus.dataset, indices)
    lengths = corpus.dataset.lengths()[indices]
    world, rank = distributed.world_size(), distributed.rank()
    if train:
        sampler_cls = BucketBatchSampler if run_cfg.batching == "bucket" else RandomBatchSampler
        sampler = sampler_cls(lengths, run_cfg.batch_size * world, shuffle=True, seed=run_cfg.seed)
        sampler = DistributedBucketSampler(sampler, rank, world) if world > 1 else sampler
    else:  # padding-exact: every utterance scored as if alone, whatever --eval_batch_size; cached conv
        # features were computed alone and the encoder masks their padding, so they batch exactly too
        exact = corpus.padding_exact or corpus.dataset.conv_features is not None
        sampler = ExactBatchSampler(lengths, run_cfg.eval_batch_size, exact)
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


LOSSES = ("total", "ce", "ctc", "supcon", "aug")  # logged per epoch as loss, ce_loss, ctc_loss, ...


def train_epoch(model, loader, optimizer, run_cfg, device, epoch: int, ddp=None) -> dict:
    """One epoch with gradient accumulation. Losses stay on the device and are read back
    only every `log_every` micro-batches, so the loop does not wait on the GPU each step.
    Under torchrun `ddp` wraps `model`, each rank runs its shard of every global batch, and
    the epoch's sums are added over the ranks at the end. With the 2023 augmentation loss the
    loader carries `views` (Views), which makes each batch's batch of augmented views."""
    (ddp or model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    n = len(LOSSES)
    sums = torch.zeros(n + 2, device=device)  # weighted losses; weight of the finite ones; non-finite shards
    skipped = torch.zeros((), device=device)
    steps = micro = 0
    audio_seconds = 0.0
    start = time.perf_counter()
    scales, last = distributed.loss_scales(loader.batch_sampler), len(loader)
    views = getattr(loader, "views", None)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
               disable=None if distributed.is_main() else True)
    logged = start
    for micro, (batch, scale) in enumerate(zip(bar, scales), start=1):
        audio_seconds += int(batch.sample_lengths.sum()) / 16000 if scale else 0.0
        sync = micro % run_cfg.accum_grad == 0 or micro == last
        view_batch = views.batch_of(batch, epoch) if views is not None else None
        with distributed.gradient_sync(ddp, sync):
            parts = forward_backward(model, ddp, batch.to(device, non_blocking=True), scale, run_cfg, device,
                                     None if view_batch is None else view_batch.to(device, non_blocking=True))
        weight = scale / distributed.world_size()  # this shard's share of the global micro-batch
        finite = torch.isfinite(parts).all()
        sums[:n] += torch.where(finite, parts * weight, 0.0)
        sums[n] += torch.where(finite, weight, 0.0)
        if scale:
            sums[n + 1] += (~finite).float()
        if sync:
            optimizer_step(optimizer, params, skipped)  # gradients are synchronised: same found_inf on every rank
            steps += 1
            if run_cfg.max_steps and steps >= run_cfg.max_steps:
                break
        log_line = bar.disable and distributed.is_main() and time.perf_counter() - logged >= PROGRESS_SECONDS
        if micro % run_cfg.log_every == 0 or log_line:
            values = sums.tolist()
            means = dict(zip(LOSSES, mean_losses(values[:n], values[n])))
            elapsed = time.perf_counter() - start
            progress = (" ".join(f"{'loss' if k == 'total' else k} {v:.3f}" for k, v in means.items()
                                 if k in ("total", "ce", "ctc") or logged_loss(model, k))
                        + f" | {audio_seconds / elapsed:.0f} audio-s/s")
            bar.set_postfix_str(progress)
            if log_line:  # no bar in a log file (nohup, batch jobs): a line a minute instead
                logged = time.perf_counter()
                log.info("epoch %d: %d/%d micro-batches, %s, about %.0f s left", epoch, micro, last, progress,
                         elapsed / micro * (last - micro))
    *weighted, weight, nonfinite, audio_seconds = distributed.sum_floats([*sums.tolist(), audio_seconds], device)
    means = dict(zip(LOSSES, mean_losses(weighted, weight)))
    record = {"loss": means["total"], "ce_loss": means["ce"], "ctc_loss": means["ctc"]}
    record.update({f"{k}_loss": means[k] for k in ("supcon", "aug") if logged_loss(model, k)})
    return {**record, "optimizer_steps": steps, "micro_batches": micro, "skipped_steps": int(skipped.item()),
            "nonfinite_micro_batches": int(nonfinite), "audio_seconds": round(audio_seconds, 2)}


def logged_loss(model, name: str) -> bool:
    """The 2023 losses are logged when they are trained."""
    return bool(getattr(model.config, f"{name}_weight", 0.0))


def forward_backward(model, ddp, batch, scale: float, run_cfg, device, view_batch=None) -> torch.Tensor:
    """One micro-batch (this rank's shard) forward and backward; its loss counts with
    `scale` (utils/distributed.DistributedBucketSampler, 1 in one process) / accum_grad.
    view_batch: the batch's augmented views, which the model runs in their own pass of the
    same forward call (so DDP sees one forward per backward). -> the detached losses, in
    LOSSES order."""
    views = None if view_batch is None else view_batch.model_inputs()
    with autocast(device, trains_in(run_cfg, device, model.audio_dim)):
        output = (ddp or model)(**batch.model_inputs(), views=views)
    losses = model.loss(output, batch.labels, batch.ctc_targets, batch.ctc_target_lengths, rows_count=scale > 0)
    (losses["total"] * scale / run_cfg.accum_grad).backward()
    zero = losses["ce"].detach() * 0
    return torch.stack([losses.get(k, zero) for k in LOSSES]).detach()


def trains_in(run_cfg, device, hidden_size: int) -> str:
    """The precision training runs in: as resolved and recorded for the run (run.py), else from --precision."""
    resolved = getattr(run_cfg, "precision_resolved", None)
    return resolved["training"] if resolved else training_precision(device, run_cfg.precision, hidden_size)


def mean_losses(weighted: list, weight: float) -> list[float]:
    """Micro-batch mean of the finite losses (0 when none was finite)."""
    return [value / weight if weight else 0.0 for value in weighted]


@torch.inference_mode()
def predict_loader(model, loader, device, precision: str):
    """-> names, true labels, predicted labels, class probabilities [N, 4] (loader order;
    a rank may have no evaluation batch). In fp32 unless `precision` is bf16."""
    model.eval()
    names, labels, probs = [], [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, model.config.num_classes)]
    for batch in loader:
        names += batch.names
        labels.append(batch.labels)
        batch = batch.to(device, non_blocking=True)
        with autocast(device, evaluation_precision(precision)):
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
    return emotion_metrics(y_true, y_pred, model.config.num_classes)


def write_predictions(path: Path, names, y_true, y_pred, probs, classes) -> None:
    """One row per test utterance: FileName, true and predicted class, each class's probability."""
    frame = pd.DataFrame({"FileName": names,
                          "true_label": [classes[i] for i in y_true],
                          "predicted_label": [classes[i] for i in y_pred]})
    for k, name in enumerate(classes):
        frame[f"prob_{name}"] = probs[:, k]
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def build_training(model_cfg, run_cfg, device):
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


def fixed_lengths(run_cfg, spec) -> bool:
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
        target = corpus.dataset.target(i)
        needed = len(target) + sum(a == b for a, b in zip(target, target[1:]))
        if needed > n_frames:
            too_long.append(f"{corpus.dataset.names[i]} ({needed} > {n_frames} frames)")
    if too_long:
        log.warning("%d utterance(s) have transcripts longer than their audio allows for CTC; their CTC loss "
                    "is zeroed (zero_infinity): %s%s", len(too_long), ", ".join(too_long[:10]),
                    " ..." if len(too_long) > 10 else "")


CTC_WARNING_RATIO = 10.0  # weighted CTC term over CE in the first epoch


def warn_ctc_scale(record: dict, model_cfg, session) -> bool:
    """Say when the weighted CTC term dwarfs the cross-entropy in the first epoch (-> said).
    Tiny or random encoders with long transcripts then predict one class (README, "When the CTC
    term dominates")."""
    weighted = model_cfg.alpha * record.get("ctc_loss", 0.0)
    if not model_cfg.alpha or weighted <= CTC_WARNING_RATIO * max(record["ce_loss"], 1e-12):
        return False
    log.warning("fold %s epoch 1: the weighted CTC term (alpha %g x CTC %.1f = %.2f) is %.0fx the cross-entropy "
                "(%.3f). The CTC gradient may swamp the emotion loss: if UA stays at chance, lower --alpha "
                "(e.g. 0.01; README, \"When the CTC term dominates\")", session, model_cfg.alpha,
                record["ctc_loss"], weighted, weighted / max(record["ce_loss"], 1e-12), record["ce_loss"])
    return True


def check_skipped(record: dict, run_cfg, session: int) -> None:
    if record["skipped_steps"]:
        log.warning("fold %s epoch %d: %d optimizer step(s) skipped for non-finite gradients", session,
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
    log.info("fold %s epoch %d: loss %.4f (ce %.4f, ctc %.4f) dev UA %s test UA %.4f%s [%.1fs]", session,
             record["epoch"], record["loss"], record["ce_loss"], record["ctc_loss"], dev, record["test"]["ua"],
             " *" if record["best_epoch"] == record["epoch"] else "", record["seconds"])


