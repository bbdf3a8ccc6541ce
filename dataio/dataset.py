"""The one batching path used by training, evaluation, prediction and the bench: audio and
text features streamed from decode-once caches (dataio/store.py) or held in memory,
length-bucketed training batches, padding-exact evaluation batches and padding with exact
lengths."""
import functools
import logging
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.encoders import AudioInputSpec
from models.fusion import lengths_to_mask
from dataio.audio import normalize, read_audio
from dataio.store import Arrays, Store, built, fingerprint, write_items
from dataio.text import ctc_target_ids
from utils.threads import available_cpus
from models.errors import MMERError

log = logging.getLogger(__name__)


class DataError(MMERError, ValueError):
    """Input data that cannot be used; the message names the file and the fix."""


# ---------------------------------------------------------------- features
class Waves:
    """The encoder's input of each utterance from stored samples (a Store on disk, or Arrays in
    memory): the first max_samples samples (the 2023 configuration's 210,000), normalised as
    its extractor says, made when an item is read."""

    def __init__(self, samples, spec: AudioInputSpec | None = None, max_samples: int | None = None):
        self.samples, self.max_samples = samples, max_samples
        self.do_normalize = spec is not None and spec.do_normalize

    def __len__(self) -> int:
        return len(self.samples)

    def lengths(self) -> np.ndarray:
        lengths = self.samples.lengths()
        return lengths if self.max_samples is None else np.minimum(lengths, self.max_samples)

    def __getitem__(self, i: int) -> np.ndarray:
        samples = self.samples.read(i, self.max_samples)
        return normalize(samples) if self.do_normalize else samples


def load_waves(paths, spec: AudioInputSpec, show_progress=True, max_samples: int | None = None) -> Waves:
    """Any audio files decoded into memory: resampled to the encoder's rate, mono (prediction
    and small inputs; a run's corpus goes through stored_waves)."""
    samples = Arrays(read_audio(path, spec.sampling_rate)
                     for path in tqdm(paths, desc="audio", disable=None if show_progress else True, leave=False))
    return Waves(samples, spec, max_samples)


def stored_waves(paths, spec: AudioInputSpec, cache_dir, max_samples: int | None = None, show_progress=True,
                 threads: int | None = None, build_here: bool = True) -> Waves:
    """The same as load_waves, streamed from a decode-once cache in `<cache_dir>/audio/`: each
    file decoded and resampled once (in `threads` threads), stored as int16 where that is exact
    (16-bit PCM at the encoder's rate) and float32 otherwise. A changed file or table builds a
    new cache."""
    paths = [Path(p) for p in paths]
    key = fingerprint(paths, kind="audio", sampling_rate=spec.sampling_rate, version=1)
    build = functools.partial(write_audio, paths=paths, sampling_rate=spec.sampling_rate,
                              show_progress=show_progress, threads=threads or available_cpus())
    return Waves(built(Path(cache_dir) / "audio" / key, build, "audio", build_here), spec, max_samples)


def write_audio(folder: Path, paths, sampling_rate: int, show_progress: bool, threads: int) -> None:
    """Decode every file into a new store: int16 while every file so far is exactly int16
    (checked per file), else the whole store again in float32."""
    def decoded():
        with ThreadPoolExecutor(threads) as pool:   # libsndfile, soxr and FFmpeg release the GIL
            for start in range(0, len(paths), CHUNK):  # bounded: at most CHUNK decoded files held
                yield from pool.map(lambda p: read_audio(p, sampling_rate), paths[start:start + CHUNK])

    def bar():
        return tqdm(decoded(), total=len(paths), desc="decoding audio once", leave=False,
                    disable=None if show_progress else True)
    try:
        write_items(folder, bar(), np.int16, scale=1 / 32768, meta={"sampling_rate": sampling_rate})
    except ValueError as err:
        if "not exactly representable" not in str(err):
            raise
        log.info("the audio is not all 16-bit PCM at %d Hz: caching it as float32", sampling_rate)
        shutil.rmtree(folder)
        write_items(folder, bar(), np.float32, meta={"sampling_rate": sampling_rate})


CHUNK = 64


def stored_text_features(names, roberta_dir, cache_dir, show_progress=True, build_here: bool = True) -> Store:
    """Every utterance's [T, H] text features from `<roberta_dir>/<name>.npy`, streamed from one
    cache file in `<cache_dir>/text/` (150,000 small .npy files would be 150,000 opens)."""
    paths = [Path(roberta_dir) / f"{name}.npy" for name in names]
    key = fingerprint(paths, kind="text", version=1)
    width = text_feature_width(paths[0])

    def build(folder):
        items = (read_text_feature(p) for p in tqdm(paths, desc="text features once", leave=False,
                                                     disable=None if show_progress else True))
        write_items(folder, items, np.float32, tail=(width,))
    return built(Path(cache_dir) / "text" / key, build, "text features", build_here)


def load_text_features(names, roberta_dir, show_progress=True) -> Arrays:
    """One [T, H] float32 array per utterance from `<name>.npy` ([1, T, H] accepted), in memory."""
    roberta_dir = Path(roberta_dir)
    return Arrays(read_text_feature(roberta_dir / f"{name}.npy")
                  for name in tqdm(names, desc="text features", disable=None if show_progress else True, leave=False))


def text_feature_width(path: Path) -> int:
    """H of a [1, T, H] or [T, H] .npy file, from its header."""
    return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[-1])


def read_text_feature(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: RoBERTa features missing; run data_prep/extract_roberta.py on the csv")
    array = np.load(path, allow_pickle=False)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[0] == 0:
        raise DataError(f"{path}: shape {array.shape}, expected [1, T, H] or [T, H]; re-extract it")
    return array.astype(np.float32, copy=False)


def ssl_folder_shape(folder) -> tuple[int, int, str]:
    """(hidden states, width, dtype) of a folder of per-utterance [states, frames, width] .npy
    files (extract_ssl.py's, or another tool's such as EmoBox's), from its first file's header."""
    first = min(Path(folder).glob("*.npy"), default=None)   # the same file whatever the listing order
    if first is None:
        raise DataError(f"{folder}: no <FileName>.npy hidden states; write them with data_prep/extract_ssl.py")
    array = np.load(first, mmap_mode="r", allow_pickle=False)
    if array.ndim != 3:
        raise DataError(f"{first}: shape {array.shape}, expected [hidden states, frames, width] (one utterance's "
                        "hidden states, as data_prep/extract_ssl.py writes them); re-extract the folder")
    return int(array.shape[0]), int(array.shape[2]), array.dtype.name


def read_ssl_states(path: Path, states: int, width: int) -> np.ndarray:
    """One utterance's cached hidden states [states, frames, width] -> [frames, states, width]
    (rows are frames in a store), kept in the file's float dtype."""
    if not path.is_file():
        raise DataError(f"{path}: hidden states missing; run data_prep/extract_ssl.py on the csv (it resumes)")
    array = np.load(path, allow_pickle=False)
    if array.ndim != 3 or array.shape[0] != states or array.shape[2] != width or array.shape[1] == 0:
        raise DataError(f"{path}: shape {array.shape}, but the folder's first file holds {states} hidden states of "
                        f"width {width}; re-extract it")
    return array.transpose(1, 0, 2)


def stored_ssl_states(names, ssl_dir, cache_dir, show_progress=True, build_here: bool = True) -> Store:
    """Every utterance's cached hidden states from `<ssl_dir>/<name>.npy` ([states, frames, width]),
    streamed from one store in `<cache_dir>/ssl/` of [frames, states, width] rows in the files'
    dtype (float16 stays float16): read once, then each batch reads only its utterances."""
    paths = [Path(ssl_dir) / f"{name}.npy" for name in names]
    states, width, dtype = ssl_folder_shape(ssl_dir)
    key = fingerprint(paths, kind="ssl", version=1)

    def build(folder):
        items = (read_ssl_states(p, states, width) for p in tqdm(paths, desc="hidden states once", leave=False,
                                                                  disable=None if show_progress else True))
        write_items(folder, items, dtype if dtype in ("float16", "float32") else np.float32, tail=(states, width),
                    meta={"kind": "ssl"})
    return built(Path(cache_dir) / "ssl" / key, build, "hidden states", build_here)


# ---------------------------------------------------------------- dataset and batches
class EmotionDataset(torch.utils.data.Dataset):
    """Items of a corpus, read when asked: the audio (Waves), the text features (a Store or
    Arrays; None for the audio-only variants), the label and the CTC target. Without labels or
    transcripts (prediction) the items get label -1 and an empty CTC target."""

    def __init__(self, names, waves, labels=None, transcripts=None, text_features=None, ctc_text: str = "clean",
                 ssl_states=None, attributes=None, soft_targets=None):
        """waves: Waves, or a list of ready arrays; None with ssl_states, a store of each
        utterance's cached hidden states [frames, states, width], which the items then carry
        instead of the audio (their `length` is then a frame count). attributes: [N, A] float
        ratings (NaN where missing) and soft_targets: [N, K] vote fractions, for the training
        objectives that read them (None: the items carry none)."""
        self.attributes = None if attributes is None else np.asarray(attributes, dtype=np.float32)
        self.soft_targets = None if soft_targets is None else np.asarray(soft_targets, dtype=np.float32)
        self.names = list(names)
        self.ssl_states = ssl_states
        if ssl_states is not None:
            self.waves, self.sample_lengths = None, ssl_states.lengths()
        else:
            self.waves = waves if isinstance(waves, Waves) else Waves(Arrays(waves))
            self.sample_lengths = self.waves.lengths()
        self.labels = list(labels) if labels is not None else [-1] * len(self.names)
        self.transcripts = list(transcripts) if transcripts is not None else None
        self.ctc_text = ctc_text
        self.text_features = text_features
        # [frames, channels] per utterance when the frozen feature encoder's output is cached
        # (training.conv_cache.use_conv_cache); the items then carry it instead of the wave.
        self.conv_features = None

    def __len__(self):
        return len(self.names)

    def lengths(self) -> np.ndarray:
        return self.sample_lengths.copy()

    def target(self, i: int) -> list[int]:
        return [] if self.transcripts is None else ctc_target_ids(self.transcripts[i], self.ctc_text)

    def __getitem__(self, i):
        conv, ssl = self.conv_features is not None, self.ssl_states is not None
        return {"name": self.names[i], "wave": None if conv or ssl else self.waves[i],
                "length": int(self.sample_lengths[i]), "label": self.labels[i], "target": self.target(i),
                "text": None if self.text_features is None else self.text_features[i],
                "conv_features": self.conv_features[i] if conv else None,
                "ssl_states": self.ssl_states[i] if ssl else None,
                "attributes": None if self.attributes is None else self.attributes[i],
                "soft_targets": None if self.soft_targets is None else self.soft_targets[i]}


@dataclass
class Batch:
    names: list
    input_values: torch.Tensor | None     # [B, samples], padded with the extractor's padding value
    sample_lengths: torch.Tensor          # [B] true sample counts
    labels: torch.Tensor                  # [B]
    ctc_targets: torch.Tensor             # [sum of target lengths]
    ctc_target_lengths: torch.Tensor      # [B]
    attention_mask: torch.Tensor | None = None   # [B, samples], only for encoders that take one
    text: torch.Tensor | None = None             # [B, T_text, H]
    text_lengths: torch.Tensor | None = None     # [B]
    conv_features: torch.Tensor | None = None    # [B, frames, C] cached feature-encoder output (then no input_values)
    ssl_states: torch.Tensor | None = None       # [B, frames, states, D] cached hidden states (then no input_values,
    #                                              and sample_lengths holds frame counts)
    attributes: torch.Tensor | None = None       # [B, A] attribute ratings, normalised (NaN where missing)
    soft_targets: torch.Tensor | None = None     # [B, K] the annotators' vote fractions (NaN where none)

    def to(self, device, non_blocking=False) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[key] = value.to(device, non_blocking=non_blocking)
        return Batch(**moved)

    def model_inputs(self) -> dict:
        return {"input_values": self.input_values, "sample_lengths": self.sample_lengths,
                "attention_mask": self.attention_mask, "text": self.text, "text_lengths": self.text_lengths,
                "conv_features": self.conv_features, "ssl_states": self.ssl_states}


def fixed_length(samples: int, per_octave: int = 4, shortest: int = 16000, frame: int = 320) -> int:
    """The padded length of a batch whose longest utterance has `samples` samples, on a fixed
    ladder of lengths: `shortest` x 2^(k / per_octave), rounded up to whole 20 ms frames.
    Four rungs per octave pad at most 19 % more (and a frame) and give 25 lengths between 1 s
    and 60 s, so that a compiled model (--compile) meets a small fixed set of shapes."""
    k = max(0, math.ceil(per_octave * math.log2(max(samples, 1) / shortest)))
    while True:
        rung = math.ceil(shortest * 2 ** (k / per_octave) / frame) * frame
        if rung >= samples:
            return rung
        k += 1


class Collator:
    """Pads a list of items into a Batch following the encoder's AudioInputSpec; with
    fixed_lengths, the audio (or cached feature-encoder frames) to the batch's rung of the
    `fixed_length` ladder."""

    def __init__(self, spec: AudioInputSpec, fixed_lengths: bool = False):
        self.spec = spec
        self.fixed_lengths = fixed_lengths

    def __call__(self, items) -> Batch:
        lengths = torch.tensor([it["length"] if it.get("wave") is None else len(it["wave"]) for it in items])
        batch = Batch(
            names=[it["name"] for it in items], input_values=None, sample_lengths=lengths,
            labels=torch.tensor([it["label"] for it in items]),
            ctc_targets=torch.tensor([t for it in items for t in it["target"]], dtype=torch.long),
            ctc_target_lengths=torch.tensor([len(it["target"]) for it in items]),
        )
        if items[0].get("ssl_states") is not None:   # kept in the store's dtype: the model makes them float32
            batch.ssl_states = pad_rows([torch.from_numpy(it["ssl_states"]) for it in items])[0]
        elif items[0].get("conv_features") is not None:
            frames = max(len(it["conv_features"]) for it in items)
            width = fixed_length(frames, shortest=50, frame=1) if self.fixed_lengths else None  # 50 frames = 1 s
            batch.conv_features = pad_rows([torch.as_tensor(it["conv_features"]) for it in items], width=width)[0]
        else:
            width = fixed_length(int(lengths.max())) if self.fixed_lengths else None
            batch.input_values = pad_rows([torch.from_numpy(it["wave"]) for it in items], self.spec.padding_value,
                                          width)[0]
            if self.spec.return_attention_mask:
                batch.attention_mask = lengths_to_mask(lengths, batch.input_values.shape[1]).long()
        for key in ("attributes", "soft_targets"):
            if items[0].get(key) is not None:
                setattr(batch, key, torch.from_numpy(np.stack([it[key] for it in items])))
        if items[0]["text"] is not None:
            batch.text, batch.text_lengths = pad_rows([torch.from_numpy(it["text"]) for it in items])
        return batch


def pad_rows(rows: list[torch.Tensor], value: float = 0.0, width: int | None = None):
    """[T_i, ...] tensors -> ([B, width or max T_i, ...] padded with `value`, [B] lengths)."""
    lengths = torch.tensor([len(r) for r in rows])
    width = width or int(lengths.max())
    dtype = rows[0].dtype if rows[0].dtype == torch.float16 else torch.float32
    padded = torch.full((len(rows), width, *rows[0].shape[1:]), value, dtype=dtype)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    return padded, lengths


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of similar length, so little compute goes to padding. Each epoch: shuffle,
    cut into pools of `pool_batches` batches, sort each pool by length, cut into batches,
    shuffle the batch order. Every index appears exactly once per epoch.
    shuffle=False gives length-sorted batches (evaluation)."""

    def __init__(self, lengths, batch_size: int, shuffle: bool = True, seed: int = 0, pool_batches: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool = batch_size * pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start:start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i:i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        # pools hold a whole number of batches, so only the last batch of an epoch can be short
        return -(-len(self.lengths) // self.batch_size)


class ExactBatchSampler(BucketBatchSampler):
    """Evaluation batches in length order that give every utterance exactly what it gets alone.
    Where padding is exact (models.encoders.padding_is_exact: layer-norm feature encoder and an
    attention mask), batches of `batch_size`; otherwise only utterances of equal length share a
    batch, so nothing is padded (on a CPU, one at a time is as fast as padded batches)."""

    def __init__(self, lengths, batch_size: int, padding_exact: bool):
        super().__init__(lengths, batch_size, shuffle=False)
        self.padding_exact = padding_exact

    def batches(self) -> list[list[int]]:
        order = np.argsort(self.lengths, kind="stable")
        if self.padding_exact:
            return [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        groups = np.split(order, np.flatnonzero(np.diff(self.lengths[order])) + 1)
        return [group[i:i + self.batch_size].tolist() for group in groups for i in range(0, len(group), self.batch_size)]

    def __len__(self):
        return len(self.batches())


class RandomBatchSampler(BucketBatchSampler):
    """Upstream's batching: a random order cut into batches (padding to the longest)."""

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        return [order[i:i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
