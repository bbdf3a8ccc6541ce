"""Training and evaluation throughput, measured: one training configuration (an Arm: loop, data
path, RunConfig settings) timed after a warm-up with its padding, audio seconds and peak memory,
in alternating rounds; the upstream code's loop and disk data path emulated for comparison; and
evaluation timed exact (run.py's batches) against padded. bench/train_throughput.py reports them."""
import contextlib
import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dataio.audio import TARGET_SR as SR
from dataio.audio import normalize, read_audio
from dataio.dataset import BucketBatchSampler, RandomBatchSampler, fixed_length, read_text_feature
from training.conv_cache import use_conv_cache
from training.loop import build_training, compile_regions, fixed_lengths, make_loader, predict_loader, train_epoch
from utils.device import autocast, seed_everything
from utils.machine import peak_memory_mb, release_memory, reset_peak_memory, synchronize


@dataclass(frozen=True)
class Arm:
    """One training configuration to time."""
    label: str
    loop: str      # "upstream" (emulated, .item() every micro-batch) or "ours" (training.loop.train_epoch)
    data: str      # "disk" (decode every step, upstream emulation) or "memory" (training.loop.make_loader)
    settings: dict  # RunConfig fields
    role: str = "step"  # "upstream", "step" (of the ladder), "ours", "option", "precision", "conv_cache" or "also"


@dataclass
class Plan:
    """How much to time: after `warmup_steps` optimizer steps, `epochs` full epochs, or
    only `steps` optimizer steps (the epoch time is then extrapolated)."""
    warmup_steps: int = 2
    epochs: int = 1
    steps: int | None = None


@dataclass
class Measurement:
    label: str
    role: str
    seconds: float                    # timed part only
    micro_batches: int
    audio_seconds: float              # real audio in the timed micro-batches
    padded_seconds: float             # what the model computed on, padding included
    epoch_padding_efficiency: float   # over every batch of one epoch of the sampler
    epoch_seconds: float
    epoch_measured: bool              # False: extrapolated from the timed steps
    peak_memory_mb: float
    batch_shapes: list = field(default_factory=list, repr=False)  # (batch size, padded samples)
    utterance_samples: list = field(default_factory=list, repr=False)  # each timed utterance's own length
    precision: str = "fp32"           # what the matrix products run in: fp32, or bf16 under autocast
    model_flops: float | None = None  # executed in the timed part, from the FLOP model (padding included)
    useful_flops: float | None = None  # the timed utterances' own FLOPs, each as if alone (no padding)

    @property
    def throughput(self) -> float:
        return self.audio_seconds / self.seconds

    @property
    def padding_efficiency(self) -> float:
        return self.audio_seconds / self.padded_seconds


def efficiency(m: Measurement, peak: dict, device) -> dict:
    """A training row's achieved TFLOP/s (useful FLOPs: its utterances' own, from the FLOP
    model, over the timed seconds) as a fraction of the measured matmul peak
    (utils.machine.matmul_peak) of the precision its products run in (on a GPU: bf16 for every row)."""
    precision = "bf16" if device.type == "cuda" else m.precision
    achieved = m.useful_flops / m.seconds / 1e12 if m.useful_flops else None
    peak_tflops = peak["tflops"].get(precision)
    return {"achieved_tflops": achieved, "peak_tflops": peak_tflops, "peak_precision": precision,
            "fraction_of_matmul_peak": achieved / peak_tflops if achieved and peak_tflops else None}


# ---------------------------------------------------------------- UPSTREAM EMULATION
# The only data path besides dataio/dataset.py's: what the upstream code did, for comparison only.
class UpstreamDiskDataset(torch.utils.data.Dataset):
    """UPSTREAM EMULATION: every __getitem__ decodes and normalises the wav and loads the text
    features from disk again; labels and CTC targets come from the in-memory dataset."""

    def __init__(self, dataset, names, audio_dir, roberta_dir, max_samples: int | None):
        self.dataset, self.names = dataset, list(names)
        self.audio_dir, self.roberta_dir = Path(audio_dir), roberta_dir and Path(roberta_dir)
        self.max_samples = max_samples

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = dict(self.dataset[i])
        item["wave"] = normalize(read_audio(self.audio_dir / f"{self.names[i]}.wav"))[: self.max_samples]
        if item["text"] is not None:
            item["text"] = read_text_feature(self.roberta_dir / f"{self.names[i]}.npy")
        return item


def upstream_loader(corpus, indices, run_cfg, audio_dir, roberta_dir, max_samples):
    """UPSTREAM EMULATION: random batches padded to the longest, decoded by loader workers."""
    dataset = UpstreamDiskDataset(corpus.dataset, corpus.table["FileName"], audio_dir, roberta_dir, max_samples)
    lengths = corpus.dataset.lengths()[indices]
    sampler = RandomBatchSampler(lengths, run_cfg.batch_size, shuffle=True, seed=run_cfg.seed)
    # Persistent workers (upstream restarted them every epoch): the warm-up pays the start, which
    # then stays out of the timed steps, in upstream's favour.
    return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_sampler=sampler,
                                       collate_fn=corpus.collate, num_workers=run_cfg.num_workers,
                                       persistent_workers=run_cfg.num_workers > 0)


def upstream_train_epoch(model, loader, optimizer, run_cfg, device, epoch: int) -> dict:
    """UPSTREAM EMULATION of the loop: the loss is read back (`.item()`) after every
    micro-batch, which makes the host wait for the device each step."""
    model.train()
    total, steps, micro = 0.0, 0, 0
    optimizer.zero_grad()
    for micro, batch in enumerate(loader, start=1):
        batch = batch.to(device)
        with autocast(device, run_cfg.precision):
            output = model(**batch.model_inputs())
        loss = model.loss(output, batch.labels, batch.ctc_targets, batch.ctc_target_lengths)["total"]
        (loss / run_cfg.accum_grad).backward()
        total += loss.item()
        if micro % run_cfg.accum_grad == 0 or micro == len(loader):
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            if run_cfg.max_steps and steps >= run_cfg.max_steps:
                break
    return {"loss": total / max(micro, 1), "optimizer_steps": steps, "micro_batches": micro}


# ---------------------------------------------------------------- timing one arm
def padded_totals(lengths: np.ndarray, batches: list, fixed: bool = False) -> tuple[int, int]:
    """(real samples, samples after padding each batch to its longest, or with fixed=True to
    its rung of dataio.dataset.fixed_length as --compile does) over `batches`."""
    width = fixed_length if fixed else int
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * width(int(lengths[b].max())) for b in batches)
    return real, padded


def build_arm(arm: Arm, model_cfg, corpus, indices, base_cfg, device, sources: dict):
    """-> model (its blocks compiled in place under compile=true), optimizer, loader, loop function, RunConfig."""
    run_cfg = dataclasses.replace(base_cfg, **arm.settings)
    release_memory(device)
    seed_everything(run_cfg.seed)  # every arm starts from the same weights
    model, optimizer = build_training(model_cfg, run_cfg, device)
    use_conv_cache(model, corpus, run_cfg, device)  # as training.folds.run_fold does; off: the audio
    if arm.loop == "ours" and run_cfg.compile:
        compile_regions(model, static_shapes=fixed_lengths(run_cfg, corpus.collate.spec))
    if arm.data == "disk":
        loader = upstream_loader(corpus, indices, run_cfg, sources["audio"], sources.get("roberta"),
                                 sources.get("max_samples"))
    else:
        loader = make_loader(corpus, indices, run_cfg, True, device)
    loop = upstream_train_epoch if arm.loop == "upstream" else train_epoch
    return model, optimizer, loader, loop, run_cfg


def run_quietly(loop, model, loader, optimizer, run_cfg, device, epoch: int) -> dict:
    # training.loop.train_epoch draws a tqdm bar on stderr; the bench prints its own table.
    with contextlib.redirect_stderr(io.StringIO()):
        return loop(model, loader, optimizer, run_cfg, device, epoch)


def measure_arm(arm: Arm, model_cfg, corpus, indices, base_cfg, device, plan: Plan, sources: dict) -> Measurement:
    """Warm up, then time `plan` of training with this arm; padding and audio seconds are
    read off the sampler's batches that the loop consumed."""
    model, optimizer, loader, loop, run_cfg = build_arm(arm, model_cfg, corpus, indices, base_cfg, device, sources)
    sampler, lengths = loader.batch_sampler, corpus.dataset.lengths()[indices]
    sampler.set_epoch(0)
    run_quietly(loop, model, loader, optimizer, dataclasses.replace(run_cfg, max_steps=plan.warmup_steps), device, 0)
    timed_cfg = dataclasses.replace(run_cfg, max_steps=plan.steps)
    consumed = []
    synchronize(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    for epoch in range(1, (1 if plan.steps else plan.epochs) + 1):
        sampler.set_epoch(epoch)
        done = run_quietly(loop, model, loader, optimizer, timed_cfg, device, epoch)
        consumed += sampler.batches()[: done["micro_batches"]]
    synchronize(device)
    seconds = time.perf_counter() - start
    memory = peak_memory_mb(device)
    fixed = arm.data == "memory" and fixed_lengths(run_cfg, corpus.collate.spec)
    real, padded = padded_totals(lengths, consumed, fixed)
    epoch_real, epoch_padded = padded_totals(lengths, sampler.batches(), fixed)
    measured = not plan.steps
    epoch_seconds = seconds / plan.epochs if measured else seconds * epoch_padded / padded
    return Measurement(arm.label, arm.role, seconds, len(consumed), real / SR, padded / SR, epoch_real / epoch_padded,
                       epoch_seconds, measured, memory, [(len(b), int(lengths[b].max())) for b in consumed],
                       [int(n) for b in consumed for n in lengths[b]],
                       run_cfg.precision)


def measure_rounds(arms: list[Arm], rounds: int, measure) -> list[Measurement]:
    """Time every arm `rounds` times, the order reversed every other round so that a slow
    spell on a shared machine hits both sides; keep each arm's fastest round (as timeit
    does) and its highest memory peak."""
    best: dict[str, Measurement] = {}
    for round_ in range(rounds):
        for arm in arms if round_ % 2 == 0 else arms[::-1]:
            new, kept = measure(arm), best.get(arm.label)
            if kept is not None:
                new.peak_memory_mb = kept.peak_memory_mb = max(new.peak_memory_mb, kept.peak_memory_mb)
            if kept is None or new.seconds < kept.seconds:
                best[arm.label] = new
    return [best[arm.label] for arm in arms]


def profile_arm(arm: Arm, model_cfg, corpus, indices, base_cfg, device, steps: int = 4) -> str:
    """torch.profiler's top operators over a few optimizer steps of this arm, after one warm-up step."""
    model, optimizer, loader, loop, run_cfg = build_arm(arm, model_cfg, corpus, indices, base_cfg, device, {})
    run_quietly(loop, model, loader, optimizer, dataclasses.replace(run_cfg, max_steps=1), device, 0)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run_quietly(loop, model, loader, optimizer, dataclasses.replace(run_cfg, max_steps=steps), device, 1)
        synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"{arm.label}, {steps} optimizer steps:\n" + prof.key_averages().table(sort_by=sort, row_limit=15)


# ---------------------------------------------------------------- evaluation: exact against padded
def padded_eval_loader(corpus, indices, device, batch_size: int):
    """PADDED COMPARISON, not run.py's path: length-sorted batches of `batch_size` padded to
    their longest, as evaluation ran before it was padding-exact (otherwise as training.loop.make_loader)."""
    sampler = BucketBatchSampler(corpus.dataset.lengths()[indices], batch_size, shuffle=False)
    return torch.utils.data.DataLoader(torch.utils.data.Subset(corpus.dataset, indices), batch_sampler=sampler,
                                       collate_fn=corpus.collate, pin_memory=device.type == "cuda")


def spread_over_durations(lengths: np.ndarray, n: int) -> np.ndarray:
    """n utterances at evenly spaced quantiles of the lengths, so that a small sample spans the
    corpus's spread of durations (the padding cost depends on it)."""
    order = np.argsort(lengths, kind="stable")
    n = min(n, len(order))
    return np.sort(order[((np.arange(n) + 0.5) / n * len(order)).astype(int)])


def time_evaluation(model, loaders: dict, device, precision: str, repeats: int) -> dict:
    """{mode: seconds} of training.loop.predict_loader over each loader, the fastest of `repeats`
    passes after a warm-up on each loader's first batch; the order of the modes alternates."""
    for loader in loaders.values():
        predict_loader(model, [next(iter(loader))], device, precision)
    best = dict.fromkeys(loaders, float("inf"))
    for round_ in range(repeats):
        for mode in list(loaders) if round_ % 2 == 0 else list(loaders)[::-1]:
            start = time.perf_counter()
            predict_loader(model, loaders[mode], device, precision)
            synchronize(device)
            best[mode] = min(best[mode], time.perf_counter() - start)
    return best


def fastest(work, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` runs after a warm-up run."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)
