"""The training loop: the loaders (length-bucketed training batches, padding-exact evaluation
batches), one epoch with gradient accumulation (DDP under torchrun), the optimizer step that
skips non-finite gradients, evaluation and predictions, and the speed options (compiled blocks).
training/folds.py runs it for one fold; run.py holds the command line and the fold loop."""
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dataio.dataset import BucketBatchSampler, Collator, ExactBatchSampler, RandomBatchSampler
from dataio.sampling import BalancedBatchSampler
from models import build_model
from models.dimensional import denormalise_attributes
from models.encoders import frame_lengths
from models.fusion import AttentionLayer
from training import runinfo
from training.inputs import Corpus
from training.metrics import attribute_metrics, emotion_metrics
from training.settings import PROBE_WEIGHT_DECAY
from utils import distributed
from utils.device import autocast, evaluation_precision, training_precision
from utils.distributed import DistributedBucketSampler, RoundRobinBatchSampler
from utils.files import atomic_path

log = logging.getLogger("mmer")
PROGRESS_SECONDS = 60.0  # progress lines in a log file, where no bar is drawn


def make_loader(corpus: Corpus, indices, run_cfg, train: bool, device):
    """With several processes each rank loads its part: a shard of every global training
    batch of world x batch_size, or every world-th evaluation batch (utils/distributed.py)."""
    subset = torch.utils.data.Subset(corpus.dataset, indices)
    lengths = corpus.dataset.lengths()[indices]
    world, rank = distributed.world_size(), distributed.rank()
    if train:
        if run_cfg.sampler == "balanced":  # the same draws on every rank (seed, epoch), each taking its shard
            labels = np.asarray(corpus.dataset.labels)[indices]
            sampler = BalancedBatchSampler(labels, run_cfg.batch_size * world, seed=run_cfg.seed, lengths=lengths)
        else:
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


LOSSES = ("total", "ce", "ctc", "supcon", "aug", "dim")  # logged per epoch as loss, ce_loss, ctc_loss, ...


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
        audio_seconds += audio_seconds_of(batch) if scale else 0.0
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
                                 if k in ("total", "ctc") or logged_loss(model, k)
                                 or (k == "ce" and model.config.task != "dimensional"))
                        + f" | {audio_seconds / elapsed:.0f} audio-s/s")
            bar.set_postfix_str(progress)
            if log_line:  # no bar in a log file (nohup, batch jobs): a line a minute instead
                logged = time.perf_counter()
                log.info("epoch %d: %d/%d micro-batches, %s, about %.0f s left", epoch, micro, last, progress,
                         elapsed / micro * (last - micro))
    *weighted, weight, nonfinite, audio_seconds = distributed.sum_floats([*sums.tolist(), audio_seconds], device)
    means = dict(zip(LOSSES, mean_losses(weighted, weight)))
    record = {"loss": means["total"], "ce_loss": means["ce"], "ctc_loss": means["ctc"]}
    record.update({f"{k}_loss": means[k] for k in ("supcon", "aug", "dim") if logged_loss(model, k)})
    if model.config.task == "dimensional":   # no categorical loss is trained
        del record["ce_loss"]
    return {**record, "optimizer_steps": steps, "micro_batches": micro, "skipped_steps": int(skipped.item()),
            "nonfinite_micro_batches": int(nonfinite), "audio_seconds": round(audio_seconds, 2)}


def audio_seconds_of(batch) -> float:
    """The audio a batch holds: its samples at 16 kHz, or its cached hidden states' frames (about
    50 a second for every encoder this project reads: 20 ms frames)."""
    return int(batch.sample_lengths.sum()) / (50 if batch.ssl_states is not None else 16000)


def logged_loss(model, name: str) -> bool:
    """The 2023 losses and the attribute loss are logged when they are trained."""
    if name == "dim":
        return model.config.task != "categorical"
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
    losses = model.loss(output, batch.labels, batch.ctc_targets, batch.ctc_target_lengths, rows_count=scale > 0,
                        attributes=batch.attributes, soft_targets=batch.soft_targets)
    (losses["total"] * scale / run_cfg.accum_grad).backward()
    zero = losses["total"].detach() * 0
    return torch.stack([losses.get(k, zero) for k in LOSSES]).detach()


def trains_in(run_cfg, device, hidden_size: int) -> str:
    """The precision training runs in: as resolved and recorded for the run (run.py), else from --precision."""
    resolved = getattr(run_cfg, "precision_resolved", None)
    return resolved["training"] if resolved else training_precision(device, run_cfg.precision, hidden_size)


def mean_losses(weighted: list, weight: float) -> list[float]:
    """Micro-batch mean of the finite losses (0 when none was finite)."""
    return [value / weight if weight else 0.0 for value in weighted]


@torch.inference_mode()
def predict_loader(model, loader, device, precision: str, logits: bool = False, attributes: bool = False):
    """-> names, true labels, predicted labels, class probabilities [N, 4] (with `logits`: the
    logits instead, in float32; loader order; a rank may have no evaluation batch). In fp32
    unless `precision` is bf16. With `attributes` (a model with an attribute head), the last
    returned array holds, after the K class columns, the predicted attributes [N, A] and then
    the batch's ratings [N, A], both on the normalised scale (NaN where a rating is missing)."""
    model.eval()
    width = model.config.num_classes + (2 * len(model.config.attributes) if attributes else 0)
    names, labels, probs = [], [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, width)]
    for batch in loader:
        names += batch.names
        labels.append(batch.labels)
        rated = batch.attributes
        batch = batch.to(device, non_blocking=True)
        with autocast(device, evaluation_precision(precision)):
            output = model(**batch.model_inputs())
        scores = output.logits.float()
        row = [(scores if logits else torch.softmax(scores, dim=-1)).cpu()]
        if attributes:
            row += [output.attributes.float().cpu(),
                    rated if rated is not None else torch.full(row[-1].shape, float("nan"))]
        probs.append(torch.cat(row, dim=1))
    probs = torch.cat(probs).numpy()
    return names, torch.cat(labels).numpy(), probs[:, :model.config.num_classes].argmax(axis=1), probs


def predict_split(model, loader, device, precision: str, logits: bool = False, attributes: bool = False):
    """predict_loader on this rank's batches, gathered from every rank: one row per utterance,
    ordered by name (the same rows whatever the number of processes). With `attributes`: ->
    names, labels, predictions, probabilities, and (predicted, rated) attributes [N, A] each,
    in the corpus's units (ModelConfig.attribute_range)."""
    names, labels, _, probs = predict_loader(model, loader, device, precision, logits, attributes)
    names, labels, _, probs = distributed.gather_predictions(names, labels, probs)
    k = model.config.num_classes
    y_pred = probs[:, :k].argmax(axis=1)
    if not attributes:
        return names, labels, y_pred, probs
    count = len(model.config.attributes)
    predicted, rated = (denormalise_attributes(probs[:, k + i * count: k + (i + 1) * count],
                                               *model.config.attribute_range) for i in (0, 1))
    return names, labels, y_pred, probs[:, :k], (predicted, rated)


def evaluate(model, loader, device, precision: str) -> dict:
    """The split's metrics: the classes' (not under task "dimensional"; over the utterances with a
    class, labelled()) and the attributes' (in the corpus's units, where the model has an
    attribute head; over every utterance)."""
    task = model.config.task
    split = predict_split(model, loader, device, precision, attributes=task != "categorical")
    classed = labelled(split[1])
    metrics = ({} if task == "dimensional"
               else emotion_metrics(split[1][classed], split[2][classed], model.config.num_classes))
    if task != "categorical":
        metrics.update(attribute_scores(model.config.attributes, *split[4]))
    return metrics


def labelled(y_true) -> np.ndarray:
    """The rows with a class: a label < 0 is one the label set leaves out (kept for the
    attributes under task "both", dataio.corpus.LEFT_OUT), which no categorical metric counts."""
    return np.asarray(y_true) >= 0


def attribute_scores(attributes, predicted, rated) -> dict:
    """attribute_metrics of [N, A] predictions and ratings (training/metrics.py)."""
    return attribute_metrics({name: rated[:, i] for i, name in enumerate(attributes)},
                             {name: predicted[:, i] for i, name in enumerate(attributes)})


def write_predictions(path: Path, names, y_true, y_pred, probs, classes, attributes: dict | None = None) -> None:
    """One row per test utterance: FileName, true (empty for a label the label set leaves out)
    and predicted class, each class's probability (probs None: the class is not predicted, task
    "dimensional"), and for each attribute {name: (ratings, predictions)} its true_<name> and
    pred_<name>, in the corpus's units."""
    frame = pd.DataFrame({"FileName": names, "true_label": [classes[i] if i >= 0 else "" for i in y_true]})
    if probs is not None:
        frame["predicted_label"] = [classes[i] for i in y_pred]
        for k, name in enumerate(classes):
            frame[f"prob_{name}"] = probs[:, k]
    for name, (rated, predicted) in (attributes or {}).items():
        frame[f"true_{name}"], frame[f"pred_{name}"] = rated, predicted
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def build_training(model_cfg, run_cfg, device):
    model = build_model(model_cfg).to(device)
    if run_cfg.gradient_checkpointing and model.wav2vec2 is not None:  # transformers 5's gradient checkpointing
        model.wav2vec2.activation_checkpointing_enable()
    freeze_untrained(model)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = PROBE_WEIGHT_DECAY if model_cfg.run == "probe" else 0.01   # 0.01: torch's AdamW default, the paper's
    optimizer = torch.optim.AdamW(params, lr=run_cfg.learning_rate, weight_decay=decay, fused=True)
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
    """Pad batches to the fixed ladder of lengths (dataio.dataset.fixed_length) under --compile,
    where that changes no result: for encoders that take an attention mask. wav2vec2-base takes
    none, and extra zeros would enter its group norm and attention."""
    return run_cfg.compile and spec.return_attention_mask


def freeze_untrained(model) -> None:
    """Freeze what no loss reaches, so that neither AdamW nor DDP waits for its gradient: the
    CTC head when alpha = 0 (its loss is only logged, detached), the classifier under task
    "dimensional" (no categorical loss) and the encoder's mask embedding when SpecAugment
    masks no time step. (DDP cannot skip these by itself: the heads' outputs are among the
    forward's outputs.)"""
    if model.config.task == "dimensional":
        model.classifier.requires_grad_(False)
    encoder = model.wav2vec2   # None on cached hidden states: no encoder is fine-tuned
    if hasattr(encoder, "masked_spec_embed") and not (
            encoder.config.apply_spec_augment and encoder.config.mask_time_prob > 0):
        model.wav2vec2.masked_spec_embed.requires_grad_(False)
    if model.has_ctc and not model.config.alpha:
        model.ctc_linear.requires_grad_(False)


def uses_layerdrop(model) -> bool:
    """LayerDrop skips whole encoder layers at random, differently on each rank, so DDP must
    then look for parameters without gradient after every backward (find_unused_parameters)."""
    return model.wav2vec2 is not None and getattr(model.wav2vec2.config, "layerdrop", 0.0) > 0


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
    frames = (samples if model.wav2vec2 is None else frame_lengths(model.wav2vec2, samples)).tolist()   # cached: frames
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
    if not model_cfg.alpha or "ce_loss" not in record or weighted <= CTC_WARNING_RATIO * max(record["ce_loss"], 1e-12):
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
        for key in ("loss", "ce_loss", "ctc_loss", "dim_loss", "skipped_steps"):
            if key in record:
                board.add_scalar(f"train/{key}", record[key], record["epoch"])
        for split in ("dev", "test"):
            for key in ("wa", "ua", "macro_f1", "ccc_mean"):
                if record[split] and key in record[split]:
                    board.add_scalar(f"{split}/{key}", record[split][key], record["epoch"])
        board.add_scalar("speed/audio_seconds_per_second", record["audio_seconds"] / record["seconds"], record["epoch"])
        board.flush()
    if "ce_loss" in record and "dim_loss" not in record:   # the categorical task: the line it always had
        dev = f"{record['dev']['ua']:.4f}" if record["dev"] else "-"
        log.info("fold %s epoch %d: loss %.4f (ce %.4f, ctc %.4f) dev UA %s test UA %.4f%s [%.1fs]", session,
                 record["epoch"], record["loss"], record["ce_loss"], record["ctc_loss"], dev, record["test"]["ua"],
                 " *" if record["best_epoch"] == record["epoch"] else "", record["seconds"])
        return
    parts = [f"{name} {record[key]:.4f}" for key, name in (("ce_loss", "ce"), ("dim_loss", "attributes"),
                                                           ("ctc_loss", "ctc")) if key in record]
    scores = [f"{split} {key} {record[split][key]:.4f}" for split in ("dev", "test") if record[split]
              for key in ("ua", "ccc_mean") if key in record[split]]
    log.info("fold %s epoch %d: loss %.4f (%s) %s%s [%.1fs]", session, record["epoch"], record["loss"],
             ", ".join(parts), ", ".join(scores), " *" if record["best_epoch"] == record["epoch"] else "",
             record["seconds"])


