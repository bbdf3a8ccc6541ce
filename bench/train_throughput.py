"""Training throughput of our path (run.py's loader, length bucketing, in-memory audio and
loop) against the upstream configuration, measured in one process on the same model and
effective batch; each row's achieved FLOP/s as a fraction of this machine's measured matmul
peak; evaluation time exact (padding-exact batches, as run.py scores) against padded; plus
FLOPs per audio second of the base-size models, an H100 projection (labelled as such) and
CPU real-time factors of evaluation and prediction.

    python bench/train_throughput.py                     # tiny encoders on CPU, a few minutes
    python bench/train_throughput.py --quick             # ~30 s smoke run
    python bench/train_throughput.py --size base         # base-size architectures, short clips on CPU
    python bench/train_throughput.py --device cuda --also gradient_checkpointing=true compile=true
    bash bench/gpu_check.sh                              # every GPU figure in one 8-minute script

The synthetic bench corpus (IEMOCAP's duration distribution) and the encoders are prepared
once under data/bench/. The last line printed is `speedup_vs_upstream_config: <float>`:
ours / upstream training throughput for the first --runs variant (mmer by default)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from torch.utils.flop_counter import (FlopCounterMode, conv_flop_count, sdpa_backward_flop_count,  # noqa: E402
                                     sdpa_flop_count)

import run  # noqa: E402
from training import loop as training  # noqa: E402
from bench.matmul_peak import describe as describe_matmul_peak  # noqa: E402
from bench.matmul_peak import matmul_peak  # noqa: E402
from models import MODELS, ModelConfig, build_model  # noqa: E402
from models.encoders import audio_input_spec, conv_cache_refusal, encoder_config  # noqa: E402
from dataio.audio import normalize, read_audio  # noqa: E402
from dataio.dataset import BucketBatchSampler, RandomBatchSampler, fixed_length, read_text_feature  # noqa: E402
from utils.device import (autocast, evaluation_precision, native_bf16, resolve_device, seed_everything,  # noqa: E402
                          training_precision)

BENCH_DIR = ROOT / "data" / "bench"
SR = 16000
# The paper's protocol on the real corpus: 5531 utterances, mean 4.55 s.
IEMOCAP_AUDIO_S = 5531 * 4.55
# Per fold and epoch: train on 4 sessions less a 10 % dev split (forward + backward);
# forward only on dev and on the test session (a fifth of the corpus).
IEMOCAP_TRAIN_S = IEMOCAP_AUDIO_S * 0.8 * 0.9
IEMOCAP_EVAL_S = IEMOCAP_AUDIO_S - IEMOCAP_TRAIN_S
PROTOCOL_EPOCHS = 3 * 5 * 100  # variants x folds x epochs
FOLD_EPOCHS = 5 * 100  # one variant's protocol: folds x epochs
PEAK_BF16_DENSE = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
ASSUMED_MFU = 0.40
# Everything but the loop, the data path and these settings stays as in RunConfig.
UPSTREAM = dict(batching="random", batch_size=2, accum_grad=4, precision="fp32", num_workers=1)
# Ours is run.py's RunConfig defaults for the same settings (plus --ours overrides).
SETTINGS = tuple(UPSTREAM)
# Cumulative changes from UPSTREAM towards ours, one optimisation per row:
# (label, training loop, data path, RunConfig changes).
LADDER = [
    ("+ decoded audio in memory, no worker", "upstream", "memory", dict(num_workers=0)),
    ("+ no per-step host sync (run.py loop)", "ours", "memory", {}),
    ("+ length bucketing", "ours", "memory", dict(batching="bucket")),
]
# Measured beside ours with the ladder: the same effective batch in one micro-batch.
OPTION = ("ours with micro-batch 8, no accumulation", dict(batch_size=8, accum_grad=1))
# Measured beside ours on a CPU that multiplies bf16 natively (AVX512-BF16/AMX): ours in the
# other precision (precision=auto trains small encoders in fp32 there, base-size ones in bf16).
CPU_BF16 = ("ours + --precision bf16 (native bf16 CPU)", dict(precision="bf16"))
CPU_FP32 = ("ours + --precision fp32 (native bf16 CPU)", dict(precision="fp32"))
# Measured beside ours wherever run.py accepts --cache_conv_features for the speech encoder
# (conv_cache_allowed asks run.py's own check, so the bench follows it without an edit).
CONV_CACHE = ("ours + --cache_conv_features", dict(cache_conv_features=True))
# Evaluation batches of the padded comparison (run.py's --eval_batch_size default).
EVAL_BATCH = 8


@dataclass(frozen=True)
class Arm:
    """One training configuration to time."""
    label: str
    loop: str      # "upstream" (emulated, .item() every micro-batch) or "ours" (run.train_epoch)
    data: str      # "disk" (decode every step, upstream emulation) or "memory" (run.make_loader)
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


# ---------------------------------------------------------------- machine
def describe_machine(device: torch.device) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "unknown")
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "device": str(device), "load_average_1min_at_start": load()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load() -> float:
    """Other processes' demand on the CPU: timings on a shared machine are only as good as this."""
    return round(os.getloadavg()[0], 2)


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Dense bf16 peak of the GPU (MFU is quoted against it for every row), None on CPU."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_DENSE.items() if key in name), None)


def release_memory(device) -> None:
    """Hand the previous arm's freed memory back to the OS, so that each arm's peak RSS is its
    own (glibc keeps freed heap otherwise, and the process's RSS only grows)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each arm gets its own peak.
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process lifetime peak


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- bench corpus (cached)
def prepare_bench_corpus(per_session: int, seed: int = 0, bench_dir: Path = BENCH_DIR) -> dict:
    """Synthetic IEMOCAP-format release with IEMOCAP's durations -> csv + audio -> tiny
    RoBERTa features, plus the tiny encoders; every step skips work already done."""
    from dataio.text_features import extract
    from dataio.iemocap import prepare
    from synthetic.iemocap import make_corpus
    from synthetic.tiny_models import make_tiny_models

    corpus_dir = Path(bench_dir) / f"iemocap-durations-{per_session}-seed{seed}"
    models_dir = Path(bench_dir) / "models"
    paths = {"csv": corpus_dir / "prepared" / "iemocap.csv", "audio": corpus_dir / "prepared" / "audio",
             "roberta": corpus_dir / "prepared" / "roberta-tiny", "tiny_wav2vec2": models_dir / "tiny" / "wav2vec2",
             "tiny_roberta": models_dir / "tiny" / "roberta", "models": models_dir}
    if not paths["tiny_wav2vec2"].is_dir():
        make_tiny_models(models_dir / "tiny", seed=0)
    # The synthetic corpus's class and session counts differ from IEMOCAP's by design; the
    # preparation's loud warning about that says nothing here.
    quiet = logging.getLogger("data_prep.iemocap_prep")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        if not paths["csv"].is_file():
            with contextlib.redirect_stderr(io.StringIO()):  # progress bars
                make_corpus(corpus_dir / "release", per_session=per_session, seed=seed, durations="iemocap")
            prepare(corpus_dir / "release", corpus_dir / "prepared", link=True)
    finally:
        quiet.level = level
    extract(paths["csv"], paths["roberta"], roberta=str(paths["tiny_roberta"]), batch_size=32, device="cpu")
    return paths


def speech_encoder_dir(paths: dict, size: str, norm: str = "group") -> Path:
    """The speech encoder the bench trains, with random weights, saved like the real ones so
    that it loads through the project's own loader: tiny (data_prep/make_tiny_models.py) or
    wav2vec2-base-sized (its default config). norm="layer": the same sizes with a layer-norm
    feature encoder (wav2vec2-large-lv60's architecture choice), whose output
    --cache_conv_features may cache."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from synthetic.tiny_models import save_speech_encoder, tiny_speech_encoder

    if size == "tiny" and norm == "group":
        return paths["tiny_wav2vec2"]
    path = paths["models"] / f"wav2vec2-{size}-random{'-layer-norm' if norm == 'layer' else ''}"
    if not (path / "preprocessor_config.json").is_file():
        layer = dict(feat_extract_norm="layer", do_stable_layer_norm=True) if norm == "layer" else {}
        torch.manual_seed(0)
        encoder = (tiny_speech_encoder("wav2vec2", **layer) if size == "tiny"
                   else Wav2Vec2Model(Wav2Vec2Config(**layer)))
        save_speech_encoder(encoder, path)
    return path


def base_roberta_dir(paths: dict) -> Path:
    """A RoBERTa-base-sized text encoder with random weights and the tiny tokenizer, for the
    prediction path that embeds transcripts on the fly."""
    from transformers import AutoTokenizer, RobertaModel

    from synthetic.tiny_models import tiny_roberta_config

    path = paths["models"] / "roberta-base-random"
    if not (path / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(paths["tiny_roberta"])
        torch.manual_seed(0)
        config = tiny_roberta_config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=3072, max_position_embeddings=514, vocab_size=len(tokenizer))
        RobertaModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def random_text_features(paths: dict, dim: int = 768, seed: int = 0) -> Path:
    """RoBERTa-base-sized stand-ins: random [1, T, dim] arrays with the token counts of the
    tiny RoBERTa's features (only their shapes matter for speed)."""
    out = paths["roberta"].parent / f"roberta-random-{dim}"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for source in sorted(paths["roberta"].glob("*.npy")):
        target = out / source.name
        if not target.exists():
            tokens = read_text_feature(source).shape[0]
            np.save(target, rng.standard_normal((1, tokens, dim), dtype=np.float32))
    return out


# ---------------------------------------------------------------- UPSTREAM EMULATION
# The only data path besides utils/data's: what the upstream code did, for comparison only.
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
    its rung of utils.data.fixed_length as --compile does) over `batches`."""
    width = fixed_length if fixed else int
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * width(int(lengths[b].max())) for b in batches)
    return real, padded


def build_arm(arm: Arm, model_cfg, corpus, indices, base_cfg, device, sources: dict):
    """-> model (its blocks compiled in place under compile=true), optimizer, loader, loop function, RunConfig."""
    run_cfg = dataclasses.replace(base_cfg, **arm.settings)
    release_memory(device)
    seed_everything(run_cfg.seed)  # every arm starts from the same weights
    model, optimizer = run.build_training(model_cfg, run_cfg, device)
    run.use_conv_cache(model, corpus, run_cfg, device)  # as run.run_fold does; off: the audio
    if arm.loop == "ours" and run_cfg.compile:
        run.compile_regions(model, static_shapes=run.fixed_lengths(run_cfg, corpus.collate.spec))
    if arm.data == "disk":
        loader = upstream_loader(corpus, indices, run_cfg, sources["audio"], sources.get("roberta"),
                                 sources.get("max_samples"))
    else:
        loader = run.make_loader(corpus, indices, run_cfg, True, device)
    loop = upstream_train_epoch if arm.loop == "upstream" else run.train_epoch
    return model, optimizer, loader, loop, run_cfg


def run_quietly(loop, model, loader, optimizer, run_cfg, device, epoch: int) -> dict:
    # run.train_epoch draws a tqdm bar on stderr; the bench prints its own table.
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
    fixed = arm.data == "memory" and run.fixed_lengths(run_cfg, corpus.collate.spec)
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


def resolved(settings: dict, device, hidden_size: int | None) -> dict:
    """precision 'auto' spelled out as what run.py trains in (utils.device.training_precision)
    for a speech encoder of `hidden_size`, so rows compare by what they run; left as it is
    without a hidden size (for the settings that do not depend on it)."""
    if settings.get("precision") == "auto" and hidden_size is not None:
        settings = {**settings, "precision": training_precision(device, "auto", hidden_size)}
    return settings


def ours_settings(overrides: dict, device, hidden_size: int | None = None) -> dict:
    defaults = run.RunConfig()
    return resolved({key: getattr(defaults, key) for key in SETTINGS} | overrides, device, hidden_size)


def arms_for(ours: dict, ladder: bool, cpu_bf16: bool = False, conv_cache: bool = False,
             also: list | tuple = ()) -> list[Arm]:
    """The upstream configuration, the ladder of optimisations (if asked), ours, (with the
    ladder) ours in one micro-batch of 8, (cpu_bf16) ours in the other precision (bf16 where ours
    is fp32, fp32 where --precision auto made ours bf16), (conv_cache)
    ours with the feature encoder's output cached and, for each (name, value) of `also`, ours
    with that one RunConfig setting changed."""
    arms = [Arm("upstream configuration (emulated)", "upstream", "disk", dict(UPSTREAM), "upstream")]
    if ladder:
        for label, loop, data, change in LADDER:
            arms.append(Arm(label, loop, data, {**arms[-1].settings, **change}))
    if arms[-1].loop == "ours" and arms[-1].settings == ours:
        arms[-1] = dataclasses.replace(arms[-1], label=arms[-1].label + " = ours (run.py)", role="ours")
    else:
        changed = [f"{k}={v}" for k, v in ours.items() if arms[-1].settings.get(k) != v] if ladder else []
        arms.append(Arm("ours" + (f" (+ {', '.join(changed)})" if changed else ""), "ours", "memory", ours, "ours"))
    label, change = OPTION
    if ladder and ours | change != ours:
        arms.append(Arm(label, "ours", "memory", ours | change, "option"))
    other_precision = CPU_FP32 if ours.get("precision") == "bf16" else CPU_BF16
    for wanted, (label, change), role in [(cpu_bf16, other_precision, "precision"),
                                          (conv_cache, CONV_CACHE, "conv_cache")]:
        if wanted and ours | change != ours:
            arms.append(Arm(label, "ours", "memory", ours | change, role))
    for name, value in also:
        if ours | {name: value} != ours:
            flag = f"--{name}" if value is True else f"{name}={value}"
            arms.append(Arm(f"ours + {flag}", "ours", "memory", ours | {name: value}, "also"))
    return arms


def conv_cache_allowed(encoder: str) -> str | None:
    """None where run.py accepts --cache_conv_features for this speech encoder, else why it
    refuses it (the bench then measures no cache row): the bench asks run.py's own check, so
    the row appears by itself for any encoder run.py comes to accept (group norm too)."""
    return conv_cache_refusal(encoder_config(encoder), audio_input_spec(encoder))


def pick(result: dict, role: str) -> Measurement:
    return next(m for m in result["measurements"] if m.role == role)


# ---------------------------------------------------------------- FLOPs
@dataclass
class FlopModel:
    """FLOPs of one utterance padded to n samples: a fixed part (the transcript's tokens),
    a linear part and a quadratic one (attention), fitted on three exact FlopCounterMode counts."""
    constant: float
    linear: float
    quadratic: float

    def __call__(self, samples) -> float:
        samples = np.asarray(samples, dtype=float)
        return self.constant + self.linear * samples + self.quadratic * samples**2

    def per_audio_second(self, sample_counts) -> float:
        """Useful FLOPs per audio second over utterances of these lengths (no padding)."""
        return float(self(sample_counts).sum() / (np.sum(sample_counts) / SR))


def synthetic_batch(model_cfg, seconds: float, device):
    """One utterance of the given length; text length and CTC target grow with it
    (about 2.5 words and 12 characters per second of speech)."""
    samples = int(seconds * SR)
    tokens, chars = 2 + int(2.5 * seconds), max(1, int(12 * seconds))
    inputs = {"input_values": torch.randn(1, samples), "sample_lengths": torch.tensor([samples]),
              "attention_mask": None, "text": None, "text_lengths": None}
    if MODELS[model_cfg.run].uses_text:
        inputs["text"], inputs["text_lengths"] = torch.randn(1, tokens, model_cfg.text_dim), torch.tensor([tokens])
    targets = (torch.randint(1, model_cfg.vocab_size, (chars,)), torch.tensor([chars]))
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return moved, torch.tensor([0], device=device), targets[0].to(device), targets[1].to(device)


def cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def conv_backward_flops(grad_out, x, weight, bias, stride, padding, dilation, transposed, output_padding,
                        groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient asked for (input, weight) costs what the forward did. torch's own formula
    ignores `groups` and counts wav2vec2's grouped positional convolution 16 times over."""
    return conv_flop_count(x, weight, grad_out, transposed) * (int(output_mask[0]) + int(output_mask[1]))


# Corrections to torch's counter: it knows only the GPU attention kernels (the CPU one computes
# the same products) and miscounts the backward of grouped convolutions.
FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward_flops,
                 torch.ops.aten.convolution_backward: conv_backward_flops}


def count_flops(model, model_cfg, seconds: float, device, train: bool) -> float:
    """Exact FLOPs of one forward (+ backward when train) on one utterance. LayerDrop is off
    while counting, so the count is that of every layer (training skips 10 % of them at random)."""
    inputs, labels, targets, target_lengths = synthetic_batch(model_cfg, seconds, device)
    model.train(train)
    config = model.wav2vec2.config
    layerdrop, config.layerdrop = config.layerdrop, 0.0
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    try:
        with counter, torch.set_grad_enabled(train):
            output = model(**inputs)
            if train:
                model.loss(output, labels, targets, target_lengths)["total"].backward()
    finally:
        config.layerdrop = layerdrop
        model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def fit_flop_model(model, model_cfg, device, train: bool, lengths_s=(2.0, 4.0, 8.0)) -> FlopModel:
    samples = np.asarray(lengths_s) * SR
    counts = [count_flops(model, model_cfg, s, device, train) for s in lengths_s]
    quadratic, linear, constant = np.polyfit(samples, counts, deg=2)
    return FlopModel(float(constant), float(linear), float(quadratic))


def base_model_cfg(run_name: str, paths: dict) -> ModelConfig:
    return ModelConfig(run=run_name, wav2vec2=str(speech_encoder_dir(paths, "base")), text_dim=768)


def flop_models(model_cfg: ModelConfig, device, lengths_s=(2.0, 4.0, 8.0)) -> tuple[FlopModel, FlopModel]:
    """FLOP models of a training step and of an evaluation forward of this configuration."""
    model = build_model(model_cfg).to(device)
    return (fit_flop_model(model, model_cfg, device, True, lengths_s),
            fit_flop_model(model, model_cfg, device, False, lengths_s))


def flop_report(run_name: str, models: tuple[FlopModel, FlopModel], pad_efficiency: float) -> dict:
    """FLOPs per audio second (train step and evaluation) over IEMOCAP-like durations, and the
    FLOPs of one IEMOCAP epoch they imply (for the projection)."""
    samples = iemocap_durations() * SR
    train, evaluation = (m.per_audio_second(samples) for m in models)
    epoch_flops = IEMOCAP_TRAIN_S * train / pad_efficiency + IEMOCAP_EVAL_S * evaluation
    return {"run": run_name, "train_gflop_per_audio_s": train / 1e9, "eval_gflop_per_audio_s": evaluation / 1e9,
            "epoch_pflop": epoch_flops / 1e15, "padding_efficiency": pad_efficiency}


def iemocap_durations(n: int = 5531, seed: int = 0) -> np.ndarray:
    """n utterance durations (s) drawn like the synthetic generator's IEMOCAP-like corpus."""
    from synthetic.iemocap import target_durations

    return target_durations(n, "iemocap", np.random.default_rng(seed))


def iemocap_scale_padding(settings: dict, seed: int = 0) -> float:
    """Padding efficiency of a configuration's sampler over one IEMOCAP fold's training set
    (about 3,980 utterances of IEMOCAP-like durations); samplers only, since a small bench
    corpus has fewer similar lengths to group than the real one."""
    lengths = (iemocap_durations(round(5531 * 0.72), seed) * SR).astype(int)
    sampler_cls = BucketBatchSampler if settings["batching"] == "bucket" else RandomBatchSampler
    sampler = sampler_cls(lengths, settings["batch_size"], shuffle=True, seed=seed)
    real, padded = padded_totals(lengths, sampler.batches())
    return real / padded


def projected_seconds(epoch_pflop: float, peak: float, utilisation: float) -> float:
    return epoch_pflop * 1e15 / (peak * utilisation)


# ---------------------------------------------------------------- real-time factor (CPU)
def rtf_report(run_name: str, paths: dict, n_utterances: int, threads: int, repeats: int = 3) -> dict:
    """Real-time factor (compute seconds / audio seconds) with the base-size model on the CPU:
    evaluation = training.predict_loader on the in-memory corpus (cached text features); prediction =
    inference.EmotionRecognizer.predict_many on the wav files and transcripts (decoding, tokenizing
    and embedding with RoBERTa-base included; loading RoBERTa-base is timed apart). The fastest
    of `repeats` passes after a warm-up, in fp32 and, where the CPU has native bf16, in bf16."""
    from inference.recognizer import EmotionRecognizer

    device = torch.device("cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model_cfg = base_model_cfg(run_name, paths)
        run_cfg = run.RunConfig(csv_path=str(paths["csv"]), data_path_audio=str(paths["audio"]),
                                data_path_roberta=str(random_text_features(paths)), eval_batch_size=n_utterances)
        corpus = quiet_load_corpus(model_cfg, run_cfg)
        durations = corpus.dataset.lengths() / SR
        chosen = np.flatnonzero((durations >= 2) & (durations <= 5))[:n_utterances]
        model = build_model(model_cfg).eval()
        loader = run.make_loader(corpus, chosen, run_cfg, False, device)
        audio_s = float(durations[chosen].sum())
        wavs = [str(paths["audio"] / f"{corpus.dataset.names[i]}.wav") for i in chosen]
        transcripts = corpus.table["Sentences"].iloc[chosen].tolist()
        start = time.perf_counter()
        recognizer = EmotionRecognizer({"bench": model}, str(base_roberta_dir(paths)), device, "fp32", batch_size=1)
        load_s = time.perf_counter() - start
        report = {"run": run_name, "threads": threads, "utterances": len(chosen), "audio_seconds": audio_s,
                  "load": load(), "text_encoder_load_s": load_s}
        for precision in ["fp32"] + (["bf16"] if native_bf16(device) else []):
            evaluate_s = fastest(lambda: training.predict_loader(model, loader, device, precision), repeats)
            recognizer.precision = precision
            with contextlib.redirect_stderr(io.StringIO()):  # progress bars
                predict_s = fastest(lambda: recognizer.predict_many(wavs, transcripts), repeats)
            report[f"evaluate_rtf_{precision}"] = evaluate_s / audio_s
            report[f"predict_rtf_{precision}"] = predict_s / audio_s
    finally:
        torch.set_num_threads(previous)
    return report


def fastest(work, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` runs after a warm-up run."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------- evaluation: exact against padded
def padded_eval_loader(corpus, indices, device, batch_size: int = EVAL_BATCH):
    """PADDED COMPARISON, not run.py's path: length-sorted batches of `batch_size` padded to
    their longest, as evaluation ran before it was padding-exact (otherwise as run.make_loader)."""
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
    """{mode: seconds} of training.predict_loader over each loader, the fastest of `repeats` passes
    after a warm-up on each loader's first batch; the order of the modes alternates."""
    for loader in loaders.values():
        training.predict_loader(model, [next(iter(loader))], device, precision)
    best = dict.fromkeys(loaders, float("inf"))
    for round_ in range(repeats):
        for mode in list(loaders) if round_ % 2 == 0 else list(loaders)[::-1]:
            start = time.perf_counter()
            training.predict_loader(model, loaders[mode], device, precision)
            synchronize(device)
            best[mode] = min(best[mode], time.perf_counter() - start)
    return best


def eval_comparison(run_name: str, paths: dict, size: str, n_utterances: int, device, precision: str,
                    repeats: int) -> list[dict]:
    """Evaluation of the same utterances (spread over the bench corpus's IEMOCAP-like
    durations, uncropped) two ways, for a group-norm encoder without attention mask
    (wav2vec2-base) and its layer-norm twin with one: exact = run.make_loader's
    ExactBatchSampler (padding_exact per the encoder: equal lengths only for group norm, batches
    of 8 for layer norm), padded = length-sorted batches of 8 padded to their longest."""
    rows = []
    for norm in ("group", "layer"):
        release_memory(device)
        roberta = random_text_features(paths) if size == "base" else paths["roberta"]
        model_cfg = ModelConfig(run=run_name, wav2vec2=str(speech_encoder_dir(paths, size, norm)), alpha=0.1)
        run_cfg = run.RunConfig(csv_path=str(paths["csv"]), data_path_audio=str(paths["audio"]),
                                data_path_roberta=str(roberta), limit_utterances=math.ceil(4 * n_utterances / 5),
                                eval_batch_size=EVAL_BATCH, device=str(device))
        corpus = quiet_load_corpus(model_cfg, run_cfg)
        lengths = corpus.dataset.lengths()
        chosen = spread_over_durations(lengths, n_utterances)
        seed_everything(0)
        model = build_model(model_cfg).to(device).eval()
        loaders = {"exact": run.make_loader(corpus, chosen, run_cfg, False, device),
                   "padded": padded_eval_loader(corpus, chosen, device)}
        seconds = time_evaluation(model, loaders, device, precision, repeats)
        audio_s = float(lengths[chosen].sum() / SR)
        row = {"run": run_name, "size": size, "encoder_norm": norm, "padding_exact": corpus.padding_exact,
               "utterances": len(chosen), "audio_seconds": audio_s, "precision": precision, "repeats": repeats}
        for mode, loader in loaders.items():
            real, padded = padded_totals(lengths[chosen], loader.batch_sampler.batches())
            row[mode] = {"seconds": seconds[mode], "audio_s_per_s": audio_s / seconds[mode],
                         "batches": len(loader.batch_sampler.batches()), "padding_efficiency": real / padded}
        row["exact_over_padded_time"] = seconds["exact"] / seconds["padded"]
        rows.append(row)
        del model, corpus
    return rows


def format_evaluation(rows: list[dict], threads: int, device) -> list[str]:
    first = rows[0]
    threads = f", {threads} threads" if device.type == "cpu" else ""
    lines = [(f"evaluation of the same {first['utterances']} utterances ({first['audio_seconds']:.1f} s of audio, "
              f"spread over the bench corpus's durations, uncropped), {first['size']}-size {first['run']}, "
              f"{first['precision']}, {device}{threads}; fastest of {first['repeats']} pass(es) after a warm-up "
              f"batch: exact = run.py's padding-exact batches (ExactBatchSampler), padded = length-sorted batches "
              f"of {EVAL_BATCH} padded to their longest")]
    names = {"group": "group norm, no attention mask (as wav2vec2-base)",
             "layer": "layer norm + attention mask (its layer-norm twin)"}
    for row in rows:
        exact, padded = row["exact"], row["padded"]
        lines.append(f"  {names[row['encoder_norm']]}: exact {exact['seconds']:.3f} s ({exact['audio_s_per_s']:.1f} "
                     f"audio-s/s, {exact['batches']} batches, pad eff {exact['padding_efficiency']:.3f}) | padded "
                     f"{padded['seconds']:.3f} s ({padded['audio_s_per_s']:.1f} audio-s/s, {padded['batches']} "
                     f"batches, pad eff {padded['padding_efficiency']:.3f}) | exact_over_padded_time "
                     f"{row['exact_over_padded_time']:.2f}")
    return lines


def fold_epoch_projection(train_throughput: float, eval_throughput: float) -> dict:
    """One IEMOCAP fold-epoch PROJECTED from measured throughputs (no IEMOCAP-sized epoch is
    timed): one fold's training audio at ours' training throughput plus its dev and test audio
    at the exact evaluation's throughput; and the protocol of 5 folds x 100 epochs."""
    train_s, eval_s = IEMOCAP_TRAIN_S / train_throughput, IEMOCAP_EVAL_S / eval_throughput
    epoch = train_s + eval_s
    return {"method": "projected: measured throughputs x one IEMOCAP fold's audio (not a timed epoch)",
            "train_audio_s": IEMOCAP_TRAIN_S, "eval_audio_s": IEMOCAP_EVAL_S,
            "train_throughput": train_throughput, "eval_throughput": eval_throughput,
            "train_seconds": train_s, "eval_seconds": eval_s, "fold_epoch_seconds": epoch,
            "protocol_minutes_per_variant": epoch * FOLD_EPOCHS / 60,
            "protocol_hours_three_variants": epoch * PROTOCOL_EPOCHS / 3600}


def format_projection(p: dict) -> list[str]:
    return [(f"IEMOCAP fold-epoch, PROJECTED from the measured throughputs (not a timed epoch): train "
             f"{p['train_audio_s']:.0f} s of audio / {p['train_throughput']:.1f} audio-s/s (ours) = "
             f"{p['train_seconds']:.1f} s + dev and test {p['eval_audio_s']:.0f} s / {p['eval_throughput']:.1f} "
             f"audio-s/s (exact evaluation) = {p['eval_seconds']:.1f} s"),
            f"fold_epoch_seconds: {p['fold_epoch_seconds']:.1f}",
            (f"protocol (5 folds x 100 epochs, one variant): {p['protocol_minutes_per_variant']:.1f} min; "
             f"three variants: {p['protocol_hours_three_variants']:.2f} h")]


# ---------------------------------------------------------------- one variant
def quiet_load_corpus(model_cfg, run_cfg):
    run_cfg.cache_dir = run_cfg.cache_dir or str(Path(run_cfg.csv_path).parent / "cache")  # beside the bench's corpus
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars
        return run.prepared_corpus(model_cfg, run_cfg)


def corpus_megabytes(corpus) -> float:
    """The decoded audio and text features in the corpus's caches (streamed: not held in memory)."""
    stores = [corpus.dataset.waves.samples, corpus.dataset.text_features]
    return sum(store.nbytes for store in stores if store is not None) / 2**20


def crop(corpus, max_samples: int | None) -> None:
    """Cut every wave to max_samples (base size on CPU: short clips only)."""
    if max_samples:
        corpus.dataset.waves.max_samples = max_samples
        corpus.dataset.sample_lengths = corpus.dataset.waves.lengths()


def bench_run(run_name: str, args, paths: dict, device, first: bool) -> dict:
    """Load the corpus for one variant and time every arm on it."""
    encoder = str(speech_encoder_dir(paths, args.size, args.encoder_norm))
    roberta = random_text_features(paths) if args.size == "base" else paths["roberta"]
    model_cfg = ModelConfig(run=run_name, wav2vec2=encoder, alpha=0.1)
    base_cfg = run.RunConfig(csv_path=str(paths["csv"]), data_path_audio=str(paths["audio"]),
                             data_path_roberta=str(roberta), limit_utterances=math.ceil(args.utterances / 5),
                             seed=0, device=str(device))
    corpus = quiet_load_corpus(model_cfg, base_cfg)
    durations_s = corpus.dataset.lengths() / SR  # before cropping: what the corpus line describes
    max_samples = int(args.max_seconds * SR) if args.max_seconds else None
    crop(corpus, max_samples)
    indices = np.arange(len(corpus.table))
    sources = {"audio": paths["audio"], "roberta": roberta if MODELS[run_name].uses_text else None,
               "max_samples": max_samples}
    plan = Plan(warmup_steps=args.warmup_steps, epochs=args.epochs_measured, steps=args.steps)
    refusal = conv_cache_allowed(encoder)
    arms = arms_for(ours_settings(args.ours, device, encoder_config(encoder).hidden_size), ladder=first and args.ladder,
                    cpu_bf16=first and device.type == "cpu" and native_bf16(device) and args.cpu_bf16_row is not False,
                    conv_cache=first and refusal is None and args.conv_cache_row is not False,
                    also=list(args.also.items()) if first else ())

    def measure(arm):
        m = measure_arm(arm, model_cfg, corpus, indices, base_cfg, device, plan, sources)
        print(f"  {run_name:<18} {arm.label:<48} {m.throughput:8.1f} audio-s/s", flush=True)
        return m

    results = measure_rounds(arms, args.rounds, measure)
    ours = next(arm for arm in arms if arm.role == "ours")
    profile = profile_arm(ours, model_cfg, corpus, indices, base_cfg, device) if args.profile and first else None
    return {"run": run_name, "utterances": len(indices), "audio_seconds": float(corpus.dataset.lengths().sum() / SR),
            "corpus_mb": corpus_megabytes(corpus), "measurements": results, "model_cfg": model_cfg,
            "profile": profile, "conv_cache_refusal": refusal, "durations_s": durations_s}


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


def add_flops(result: dict, flops: FlopModel) -> None:
    """Executed FLOPs of the timed batches (padding included), for FLOP/s and MFU, and the
    timed utterances' own FLOPs (the FLOP model per audio second x the audio trained on), for
    the fraction of the matmul peak."""
    for m in result["measurements"]:
        m.model_flops = float(sum(size * flops(samples) for size, samples in m.batch_shapes))
        m.useful_flops = float(flops(np.asarray(m.utterance_samples)).sum())


# ---------------------------------------------------------------- against the measured matmul peak
def peak_precisions(results: list[dict], device) -> list[str]:
    """The matmul peaks to measure: bf16 on a GPU (every row is quoted against it, the MFU
    convention); on a CPU fp32, and bf16 where it is native or some row runs in it."""
    if device.type == "cuda":
        return ["bf16", "fp32"]
    used = {m.precision for r in results for m in r["measurements"]}
    return ["fp32"] + (["bf16"] if native_bf16(device) or "bf16" in used else [])


def efficiency(m: Measurement, peak: dict, device) -> dict:
    """A training row's achieved TFLOP/s (useful FLOPs: its utterances' own, from the FLOP
    model, over the timed seconds) as a fraction of the measured matmul peak of the precision
    its products run in (on a GPU: bf16 for every row)."""
    precision = "bf16" if device.type == "cuda" else m.precision
    achieved = m.useful_flops / m.seconds / 1e12 if m.useful_flops else None
    peak_tflops = peak["tflops"].get(precision)
    return {"achieved_tflops": achieved, "peak_tflops": peak_tflops, "peak_precision": precision,
            "fraction_of_matmul_peak": achieved / peak_tflops if achieved and peak_tflops else None}


def format_efficiency(results: list[dict], peak: dict, device) -> list[str]:
    every_row = " (bf16 on a GPU, for every row)" if device.type == "cuda" else ""
    lines = [describe_matmul_peak(peak),
             ("achieved = model FLOPs of the timed utterances per second: the FLOP model's count of each utterance "
              "as if alone (padding, recomputation under checkpointing and work the conv cache skips do not change "
              "it; every encoder layer counted, LayerDrop skips ~10 %); fraction = achieved / the measured peak of "
              f"the row's precision{every_row}")]
    for result in results:
        for m in result["measurements"]:
            e = efficiency(m, peak, device)
            if e["fraction_of_matmul_peak"] is None:
                continue
            lines.append(f"  {result['run']:<18} {m.label:<48} achieved_tflops {e['achieved_tflops']:.4g}  "
                         f"peak_tflops {e['peak_tflops']:.4g} ({e['peak_precision']})  "
                         f"fraction_of_matmul_peak {e['fraction_of_matmul_peak']:.3f}")
    return lines


# ---------------------------------------------------------------- report
def describe_corpus(durations_s: np.ndarray) -> str:
    d = np.asarray(durations_s)
    return (f"{len(d)} utterances, {d.sum():.0f} s of audio (mean {d.mean():.2f} s, median {np.median(d):.2f} s, "
            f"p90 {np.percentile(d, 90):.1f} s, max {d.max():.1f} s)")


def format_rows(results: list[dict], peak: float | None) -> list[str]:
    head = (f"{'run':<18} {'configuration':<48} {'audio-s/s':>9} {'epoch s':>9} {'pad eff':>7} "
            f"{'peak MB':>8} {'GFLOP/s':>8} {'MFU':>6} {'IEMOCAP train':>13} {'x upstream':>10}")
    lines = [head, "-" * len(head)]
    for result in results:
        upstream = pick(result, "upstream").throughput
        for m in result["measurements"]:
            gflops = m.model_flops / m.seconds / 1e9 if m.model_flops else None
            mfu = f"{100 * gflops * 1e9 / peak:5.1f}%" if gflops and peak else "-"
            epoch = f"{m.epoch_seconds:.1f}{'' if m.epoch_measured else ' e'}"
            lines.append(f"{result['run']:<18} {m.label:<48} {m.throughput:9.1f} {epoch:>9} "
                         f"{m.padding_efficiency:7.3f} {m.peak_memory_mb:8.0f} "
                         f"{(f'{gflops:8.1f}' if gflops else '-'):>8} {mfu:>6} "
                         f"{IEMOCAP_TRAIN_S / m.throughput / 60:11.1f} m {m.throughput / upstream:10.2f}")
    return lines


def format_flops(flops: list[dict], measured_mfu: float | None) -> list[str]:
    peak = PEAK_BF16_DENSE["H100"]
    lines = [f"{'run':<18} {'train GFLOP/audio-s':>19} {'eval GFLOP/audio-s':>18} {'PFLOP/epoch':>11} "
             f"{'H100 epoch @40%':>15} {'protocol @40%':>13}" + (f" {'@measured MFU':>13}" if measured_mfu else "")]
    for f in flops:
        at_40 = projected_seconds(f["epoch_pflop"], peak, ASSUMED_MFU)
        line = (f"{f['run']:<18} {f['train_gflop_per_audio_s']:19.1f} {f['eval_gflop_per_audio_s']:18.1f} "
                f"{f['epoch_pflop']:11.2f} {at_40:13.1f} s {at_40 * PROTOCOL_EPOCHS / 3600:11.2f} h")
        if measured_mfu:
            line += f" {projected_seconds(f['epoch_pflop'], peak, measured_mfu):11.1f} s"
        lines.append(line)
    return lines


def print_report(machine: dict, args, corpus_line: str, results, flops, rtfs, peak, padding,
                 sections: list[list[str]] = ()) -> float:
    """The tables, then `sections` (matmul peak, evaluation, projection), then the speedup lines;
    the last line is `speedup_vs_upstream_config: <float>`."""
    plan = (f"{args.steps} optimizer steps (epoch time extrapolated: 'e')" if args.steps
            else f"{args.epochs_measured} full epoch(s)")
    print("\n== MMER training throughput ==")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print(f"corpus: synthetic IEMOCAP-format, IEMOCAP durations: {corpus_line}"
          + (f"; cropped to {args.max_seconds} s" if args.max_seconds else "")
          + f"; {results[0]['corpus_mb']:.0f} MB in the corpus's decode-once caches ({results[0]['run']}), streamed from disk")
    ours = ours_settings(args.ours, torch.device(machine["device"]))
    batch = ("effective batch 8 on every row" if ours["batch_size"] * ours["accum_grad"] == 8 else
             f"WARNING: ours' effective batch is {ours['batch_size'] * ours['accum_grad']}, upstream's 8")
    print(f"encoders: {args.size}; timed: {plan} after {args.warmup_steps} warm-up optimizer steps, fastest of "
          f"{args.rounds} round(s); {batch}; same model, initial weights and AdamW")
    print("upstream = batch 2 x accumulation 4, random order, fp32, wav decoded + normalised from disk per item, "
          "1 loader worker, loss.item() every micro-batch")
    print(f"IEMOCAP train = one fold's {IEMOCAP_TRAIN_S:.0f} s of training audio / throughput, extrapolated; "
          "GFLOP/s = executed FLOPs (padding included, FlopCounterMode) / time; MFU against bf16 dense peak\n")
    print("\n".join(format_rows(results, peak)))
    print(f"\npadding efficiency at IEMOCAP scale (samplers only, one fold's ~3,980 training utterances): "
          f"upstream {padding['upstream']:.3f}, ours {padding['ours']:.3f}")
    if flops:
        mfu = measured_mfu(results, peak)
        print(f"\nbase-size FLOPs (torch FlopCounterMode; train = forward + backward of a training step, eval = "
              f"forward) per audio second over 5531 IEMOCAP-like durations; epoch = {IEMOCAP_TRAIN_S:.0f} s train "
              f"+ {IEMOCAP_EVAL_S:.0f} s eval, training at ours' IEMOCAP-scale padding efficiency")
        print("PROJECTION, not a measurement: H100 at 40 % of 989 TFLOP/s bf16 dense"
              + (f", and at the measured MFU {100 * mfu:.1f} %" if mfu else "")
              + f"; protocol = {PROTOCOL_EPOCHS} epochs (3 variants x 5 folds x 100)")
        print("\n".join(format_flops(flops, mfu)))
    for rtf in rtfs:
        print(f"\nCPU real-time factor (compute s / audio s), base-size {rtf['run']}, {rtf['threads']} threads, "
              f"{rtf['utterances']} utterances of 2-5 s ({rtf['audio_seconds']:.1f} s), load {rtf['load']}; "
              "evaluation = training.predict_loader (cached text features), prediction = "
              "EmotionRecognizer.predict_many (decoding, RoBERTa-base embedding included)")
        for precision in ("fp32", "bf16"):
            if f"evaluate_rtf_{precision}" in rtf:
                print(f"  {precision}: evaluation {rtf[f'evaluate_rtf_{precision}']:.3f}, "
                      f"prediction {rtf[f'predict_rtf_{precision}']:.3f}")
        print(f"  loading RoBERTa-base (once per predict.py call, not per audio second): "
              f"{rtf['text_encoder_load_s']:.2f} s")
    if results[0]["profile"]:
        print("\nprofile of " + results[0]["profile"])
    for lines in sections:
        print("\n" + "\n".join(lines))
    ours, upstream = pick(results[0], "ours"), pick(results[0], "upstream")
    speedup = ours.throughput / upstream.throughput
    print(f"\n{results[0]['run']}: ours {ours.throughput:.1f} vs upstream {upstream.throughput:.1f} "
          f"audio-s/s on {args.size} encoders ({machine['device']}), peak memory {ours.peak_memory_mb:.0f} MB")
    if results[0]["conv_cache_refusal"]:
        print(f"{results[0]['run']}: no --cache_conv_features row: run.py refuses it, the speech encoder "
              f"{results[0]['conv_cache_refusal']}")
    for m in results[0]["measurements"]:
        if m.role in ("precision", "conv_cache", "also"):
            print(f"{results[0]['run']}: {m.label} {m.throughput:.1f} audio-s/s, "
                  f"{m.throughput / ours.throughput:.2f} x ours, {m.throughput / upstream.throughput:.2f} x upstream, "
                  f"peak memory {m.peak_memory_mb:.0f} MB")
    print(f"speedup_vs_upstream_config: {speedup:.2f}")
    return speedup


def measured_mfu(results, peak) -> float | None:
    ours = pick(results[0], "ours")
    return ours.model_flops / ours.seconds / peak if ours.model_flops and peak else None


def write_json(path: Path, machine, args, results, flops, rtf, speedup, padding, extra: dict) -> None:
    """Every figure; `extra`: the matmul peak, the evaluation comparison, the fold-epoch projection."""
    device = torch.device(machine["device"])
    rows = [{"run": r["run"], **{k: v for k, v in dataclasses.asdict(m).items()
                                 if k not in ("batch_shapes", "utterance_samples")},
             "throughput_audio_s_per_s": m.throughput, "padding_efficiency": m.padding_efficiency,
             **(efficiency(m, extra["matmul_peak"], device) if extra.get("matmul_peak") else {})}
            for r in results for m in r["measurements"]]
    record = {"machine": machine, "command": " ".join(sys.argv), "args": {k: str(v) for k, v in vars(args).items()},
              "measurements": rows, "iemocap_scale_padding_efficiency": padding, "flops": flops, "rtf": rtf,
              "conv_cache_refusal": results[0]["conv_cache_refusal"], **extra,
              "speedup_vs_upstream_config": speedup}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------- main
def key_value(text: str) -> tuple:
    """`name=value` for a RunConfig field, the value typed like the field's default."""
    name, _, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(run.RunConfig)}
    if name not in fields or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
    default = getattr(run.RunConfig(), name)
    if isinstance(default, bool):
        return name, value.lower() in ("1", "true", "yes")
    return name, type(default)(value) if default is not None else (int(value) if value.isdigit() else value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--size", choices=["tiny", "base"], help="encoder size (default: tiny on CPU, base on GPU)")
    p.add_argument("--encoder_norm", choices=["group", "layer"], default="group",
                   help="the speech encoder's feature-encoder norm: group (wav2vec2-base, default) or layer "
                        "(wav2vec2-large-lv60's choice at the same size); a --cache_conv_features row is added "
                        "wherever run.py accepts the flag for the encoder")
    p.add_argument("--runs", nargs="+", choices=list(MODELS),
                   help="variants to time; the first one gives the speedup line and the ladder (default: all "
                        "three, mmer only with --size base on CPU)")
    p.add_argument("--utterances", type=int, help="bench corpus size (default: 100 tiny CPU, 15 base CPU, 1000 GPU)")
    p.add_argument("--epochs_measured", type=int, help="full epochs timed after the warm-up (default 1)")
    p.add_argument("--steps", type=int, help="time only this many optimizer steps (the same batches in every "
                   "round) and extrapolate the epoch time")
    p.add_argument("--warmup_steps", type=int, help="optimizer steps run before timing (default 2; 1 on CPU "
                   "with --size base)")
    p.add_argument("--rounds", type=int, help="times each configuration is timed, order alternating; the fastest "
                   "counts (default on CPU: 3, 2 with --size base; on GPU: 1)")
    p.add_argument("--max_seconds", type=float, help="crop every utterance (default on CPU with --size base: 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch.set_num_threads for training, both configurations (default: torch's own "
                        "default, which upstream and run.py both run with; upstream's loader worker shares "
                        "the cores)")
    p.add_argument("--rtf_threads", type=int, nargs="+", default=[2],
                   help="torch threads for the CPU real-time factors (one measurement per value)")
    p.add_argument("--ours", nargs="*", type=key_value, default=[],
                   help="RunConfig fields of our configuration (default: run.py's defaults for "
                        f"{', '.join(SETTINGS)}), e.g. batch_size=8 accum_grad=1 compile=true")
    p.add_argument("--also", nargs="*", type=key_value, default=[],
                   help="one more row per NAME=VALUE: ours with that one RunConfig setting changed (first run), "
                        "e.g. gradient_checkpointing=true compile=true")
    p.add_argument("--cpu_bf16_row", action=argparse.BooleanOptionalAction,
                   help="time ours in the other precision on CPU, bf16 or fp32 (default: where the CPU multiplies "
                        "bf16 natively)")
    p.add_argument("--conv_cache_row", action=argparse.BooleanOptionalAction,
                   help="time ours + --cache_conv_features (default: wherever run.py accepts it for the encoder)")
    p.add_argument("--ladder", action=argparse.BooleanOptionalAction,
                   help="one row per optimisation for the first run (default: on, off for base size on CPU)")
    p.add_argument("--rtf_utterances", type=int, default=6, help="utterances for the CPU real-time factors (0: skip)")
    p.add_argument("--no_flops", action="store_true", help="skip the base-size FLOP count and projection")
    p.add_argument("--matmul_size", type=int,
                   help="block size of the matmul-peak micro-benchmark (default 2048 on CPU, 8192 on GPU)")
    p.add_argument("--eval_utterances", type=int,
                   help="utterances of the exact-vs-padded evaluation comparison (default 8 on CPU, 4 with "
                        "--quick, 200 on GPU; 0: skip)")
    p.add_argument("--eval_size", choices=["tiny", "base"], default="base",
                   help="encoder size of the evaluation comparison (default base: wav2vec2-base and its "
                        "layer-norm twin)")
    p.add_argument("--bench_dir", type=Path, default=BENCH_DIR,
                   help="where the bench corpus and encoders are built once and kept (default data/bench)")
    p.add_argument("--corpus_per_session", type=int,
                   help="utterances per session of the bench corpus built (default: max(100, utterances / 5), "
                        "so that the default runs share one corpus)")
    p.add_argument("--prepare_only", action="store_true",
                   help="build the corpus and the encoders this command would use, then stop")
    p.add_argument("--peak_tflops", type=float, help="accelerator peak for MFU (default: known GPUs, bf16 dense)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of ours (first run)")
    p.add_argument("--json", type=Path, help="also write the figures to this json file")
    p.add_argument("--quick", action="store_true", help="~30 s smoke run: mmer only, small corpus, no ladder")
    return p.parse_args(argv)


def resolve_defaults(args, device) -> None:
    """Defaults that depend on the device and size, chosen so a CPU run takes minutes."""
    on_cpu = device.type == "cpu"
    args.size = args.size or ("tiny" if on_cpu else "base")
    base_on_cpu = on_cpu and args.size == "base"
    args.ours = dict(args.ours)
    args.runs = args.runs or (["mmer"] if base_on_cpu else list(MODELS))
    if args.quick:
        args.runs, args.ladder, args.rounds = args.runs[:1], bool(args.ladder), args.rounds or 1
        args.utterances = args.utterances or (10 if base_on_cpu else 40)
        args.warmup_steps = 1 if args.warmup_steps is None else args.warmup_steps
        args.rtf_utterances = min(args.rtf_utterances, 2)
    # A shared CPU is noisy: small corpora timed whole, so that every configuration trains on
    # the same utterances, and several rounds, so that a slow spell spoils a round, not a figure.
    args.utterances = args.utterances or ((15 if base_on_cpu else 100) if on_cpu else 1000)
    args.rounds = args.rounds or ((2 if base_on_cpu else 3) if on_cpu else 1)
    args.epochs_measured = args.epochs_measured or 1
    args.warmup_steps = (1 if base_on_cpu else 2) if args.warmup_steps is None else args.warmup_steps
    args.max_seconds = args.max_seconds or (3.0 if base_on_cpu else None)
    if args.ladder is None:  # with base size on CPU the ladder would triple a 3-minute run
        args.ladder = not base_on_cpu
    # Three lengths fit the FLOP model exactly when 2.5 tokens per second is a whole number.
    args.flop_lengths = (1.2, 2.0, 4.0) if args.quick else (2.0, 4.0, 8.0)
    args.rtf_repeats = 1 if args.quick else 3
    args.also = dict(args.also)
    args.corpus_per_session = args.corpus_per_session or max(100, math.ceil(args.utterances / 5))
    if args.eval_utterances is None:
        args.eval_utterances = (4 if args.quick else 8) if on_cpu else 200
    args.eval_repeats = 1 if args.quick else (2 if on_cpu else 3)


def prepare_encoders(args, paths: dict) -> list[Path]:
    """Every encoder and text-feature folder this command will load, built now (the first
    base-size run saves random wav2vec2-base weights; gpu_check.sh times this apart)."""
    built = [speech_encoder_dir(paths, args.size, args.encoder_norm)]
    if args.size == "base" or (args.eval_size == "base" and args.eval_utterances):
        built.append(random_text_features(paths))
    if args.size == "base" or not args.no_flops:
        built.append(speech_encoder_dir(paths, "base"))
    if args.eval_utterances:
        built += [speech_encoder_dir(paths, args.eval_size, norm) for norm in ("group", "layer")]
    if args.rtf_utterances:
        built.append(base_roberta_dir(paths))
    return built


def main(argv=None) -> float | None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    resolve_defaults(args, device)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths = prepare_bench_corpus(per_session=args.corpus_per_session, bench_dir=args.bench_dir)
    if args.prepare_only:
        built = prepare_encoders(args, paths)
        print(f"prepared: {paths['csv'].parent} and {', '.join(str(p.name) for p in built)} under {args.bench_dir}")
        return None
    machine = describe_machine(device)
    print(f"bench on {device} ({args.size} encoders, {args.threads} threads), runs {args.runs}", flush=True)
    results = [bench_run(name, args, paths, device, first=i == 0) for i, name in enumerate(args.runs)]
    peak = peak_flops(device, args.peak_tflops)
    machine["load_average_1min_at_end"] = load()
    padding = {"upstream": iemocap_scale_padding(UPSTREAM),
               "ours": iemocap_scale_padding(ours_settings(args.ours, device))}
    base = {} if args.no_flops and args.size != "base" else {
        name: flop_models(base_model_cfg(name, paths), device, args.flop_lengths) for name in args.runs}
    for result in results:  # FLOP/s and MFU of the size actually trained
        trained = base[result["run"]] if args.size == "base" else flop_models(result["model_cfg"], device)
        add_flops(result, trained[0])
    flops = [] if args.no_flops else [flop_report(name, base[name], padding["ours"]) for name in args.runs]
    extra, sections = measure_against_hardware(args, paths, device, results)
    rtfs = [rtf_report(args.runs[0], paths, args.rtf_utterances, threads, args.rtf_repeats)
           for threads in args.rtf_threads if args.rtf_utterances]
    speedup = print_report(machine, args, describe_corpus(results[0]["durations_s"]), results, flops, rtfs, peak,
                           padding, sections)
    if args.json:
        write_json(args.json, machine, args, results, flops, rtfs, speedup, padding, extra)
    return speedup


def measure_against_hardware(args, paths: dict, device, results: list[dict]) -> tuple[dict, list[list[str]]]:
    """The matmul peak and each row's fraction of it; the exact-vs-padded evaluation; and, where
    that evaluation ran at the trained size, the IEMOCAP fold-epoch projected from both."""
    extra = {"matmul_peak": matmul_peak(device, args.matmul_size, peak_precisions(results, device))}
    sections = [format_efficiency(results, extra["matmul_peak"], device)]
    if args.eval_utterances:
        precision = evaluation_precision(ours_settings(args.ours, device)["precision"])
        extra["evaluation"] = eval_comparison(args.runs[0], paths, args.eval_size, args.eval_utterances, device,
                                              precision, args.eval_repeats)
        sections.append(format_evaluation(extra["evaluation"], args.threads, device))
        if args.eval_size == args.size:
            exact = next(r for r in extra["evaluation"] if r["encoder_norm"] == args.encoder_norm)["exact"]
            extra["fold_epoch_projection"] = fold_epoch_projection(pick(results[0], "ours").throughput,
                                                                   exact["audio_s_per_s"])
            sections.append(format_projection(extra["fold_epoch_projection"]))
    return extra, sections


if __name__ == "__main__":
    main()
    # Spare the interpreter's last collection over torch's, transformers' and scikit-learn's objects
    # (about 3 s of exit on a busy 2-core machine, each of gpu_check.sh's steps): nothing left needs it.
    gc.freeze()
