"""Frozen speech-encoder features, the field's per-utterance layout (EmoBox, emotion2vec): every
hidden state a speech encoder gives (its embedding output, then each layer's), or the ones asked
for, written as `<out_dir>/<FileName>.npy` of shape [hidden states, frames, width] (float16 by
default) with `<out_dir>/encoder.json` saying what made them. Each file is what transformers'
output_hidden_states gives for that utterance alone. Resumable, sharded under torchrun, each file
written atomically. Disk: frames x states x width x bytes; IEMOCAP's 5,531 four-class
utterances (about 7 h, 1.26 M frames at 50 per second) with wav2vec2-base, 13 states of 768 in
float16, is about 25 GB; the last state alone (--layers -1) is about 2 GB."""
import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dataio.audio import AudioError, audio_info, normalize, read_audio
from dataio.corpus import audio_paths, read_listing
from dataio.text_features import save_npy
from models.encoders import (
    ENCODER_FIX,
    audio_input_spec,
    frame_lengths,
    frame_rate_of,
    load_speech_encoder,
    padding_is_exact,
)
from models.errors import MMERError
from models.hidden_states import hidden_states, resolve_layers, state_count
from utils import distributed
from utils.cli import some
from utils.device import resolve_device
from utils.files import atomic_write_text
from utils.hub import check_model_name

log = logging.getLogger(__name__)
DTYPES = {"float16": np.float16, "float32": np.float32}
STAMP = "encoder.json"
NPY_HEADER_BYTES = 128   # np.save's header for a 3-d array
# What must agree between a folder's encoder.json and a resumed extraction, with the flag that sets it.
MUST_AGREE = {"weights_sha256": "--encoder", "layers": "--layers", "dtype": "--dtype",
              "feature_extractor": "--encoder"}


class SSLFeatureError(MMERError, ValueError):
    """Bad input to the hidden-state extraction; the message names the file or flag and the fix."""


# ---------------------------------------------------------------- inputs
def read_utterances(csv, audio_dir) -> tuple[list[str], list[Path]]:
    """The table's FileNames and their audio files (`path` column or `<FileName>.wav`), every
    one checked to exist before anything is loaded."""
    table = read_listing(csv, SSLFeatureError)
    if not Path(audio_dir).is_dir():
        raise SSLFeatureError(f"{audio_dir}: no such audio folder; fix --data_path_audio")
    paths = audio_paths(table, audio_dir)
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SSLFeatureError(f"{len(missing)} audio file(s) of {csv} not found: {some(missing)}; fix "
                              "--data_path_audio, or drop those rows from the csv")
    return table["FileName"].tolist(), paths


def table_checksum(names, paths) -> str:
    """sha256 over the utterances the table lists and where their audio is."""
    text = "\n".join(f"{name}\t{Path(path).name}" for name, path in zip(names, paths))
    return hashlib.sha256(text.encode()).hexdigest()


def load_encoder(name: str, device) -> tuple[torch.nn.Module, object]:
    """The speech encoder (eval mode, on `device`) and its audio-input settings."""
    try:
        device = resolve_device(str(device))
        check_model_name(name, "--encoder")
        spec = audio_input_spec(name)
        encoder = load_speech_encoder(name, pretrained=True)
    except (OSError, ValueError) as err:
        raise SSLFeatureError(f"cannot load speech encoder {name!r} ({err}); {ENCODER_FIX}") from err
    return encoder.to(device).eval(), spec


def weights_sha256(encoder: torch.nn.Module) -> str:
    """sha256 over the encoder's parameters and buffers (names and values, in fp32): the same
    weights from any file format or folder give the same hash."""
    digest = hashlib.sha256()
    for key, value in sorted(encoder.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def encoder_stamp(name: str, encoder, spec, layers: list[int], dtype: str, table_sha256: str) -> dict:
    """encoder.json: what made the features (the name as given; a local folder also as an absolute
    path) and how to read them."""
    config = encoder.config
    local = Path(str(name)).expanduser()
    return {"encoder": str(name), "encoder_folder": str(local.resolve()) if local.is_dir() else None,
            "model_type": config.model_type, "weights_sha256": weights_sha256(encoder),
            "layers": layers, "states": len(layers), "encoder_states": state_count(config),
            "width": int(config.hidden_size), "dtype": dtype,
            "frame_rate": frame_rate_of(config, spec.sampling_rate), "feature_extractor": asdict(spec),
            "layout": "[hidden states, frames, width]", "table_sha256": table_sha256}


def check_stamp(out_dir: Path, stamp: dict, names, overwrite: bool) -> None:
    """Features already in out_dir must come from the same encoder, hidden states and dtype, or a
    resumed extraction would mix two; then (re)write encoder.json."""
    path = out_dir / STAMP
    if not overwrite:
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise SSLFeatureError(f"{path}: not the encoder.json extract_ssl.py writes ({err}); pass "
                                      "--overwrite to redo the folder, or another --out_dir") from err
            differ = [f"{key} ({old.get(key)!r} there, {stamp[key]!r} now; {flag})"
                      for key, flag in MUST_AGREE.items() if old.get(key) != stamp[key]]
            if differ:
                raise SSLFeatureError(f"{out_dir}: holds features of {old.get('encoder')} that differ in "
                                      f"{', '.join(differ)}; pass --overwrite to redo them all, or another --out_dir")
        elif any((out_dir / f"{name}.npy").exists() for name in names):
            raise SSLFeatureError(f"{out_dir}: holds .npy files but no {STAMP} saying what made them; pass "
                                  "--overwrite to redo them all, or another --out_dir")
    atomic_write_text(path, json.dumps(stamp, indent=1) + "\n")


# ---------------------------------------------------------------- disk
def sample_count(path, sampling_rate: int) -> int:
    """Samples at `sampling_rate` from the file's header (nothing is decoded)."""
    info = audio_info(path)
    return round(info.frames * sampling_rate / info.samplerate)


def samples_of(paths, sampling_rate: int) -> list[int]:
    try:
        return [sample_count(path, sampling_rate) for path in paths]
    except AudioError as err:
        raise SSLFeatureError(str(err)) from err


def disk_needed(frames: int, states: int, width: int, dtype: str, files: int) -> int:
    """Bytes the features take: frames x states x width x bytes, and each file's header."""
    return frames * states * width * np.dtype(DTYPES[dtype]).itemsize + files * NPY_HEADER_BYTES


def check_disk(out_dir: Path, needed: int, states: int, dtype: str) -> None:
    free = shutil.disk_usage(out_dir).free
    log.info("the features will take about %s on disk (%d hidden state(s) in %s; %s free in %s)",
             human_bytes(needed), states, dtype, human_bytes(free), out_dir)
    if free < needed:
        raise SSLFeatureError(f"{out_dir}: the features need about {human_bytes(needed)} but the disk has "
                              f"{human_bytes(free)} free; keep fewer hidden states (--layers, e.g. --layers -1), "
                              "store them as float16 (--dtype float16), or free space or pick another --out_dir")


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


# ---------------------------------------------------------------- the encoder's hidden states
def batches(lengths: list[int], batch_size: int, exact: bool) -> list[list[int]]:
    """Indices into `lengths`, longest first, batch_size at most per batch; where padding is not
    exact (padding_is_exact) a batch holds utterances of one length only."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups = []
    for i in order:
        last = groups[-1] if groups else None
        if last is not None and len(last) < batch_size and (exact or lengths[last[0]] == lengths[i]):
            last.append(i)
        else:
            groups.append([i])
    return groups


def encode(encoder, spec, waves: list[np.ndarray], layers: list[int]) -> list[torch.Tensor]:
    """[states, frames, width] float32 per wave (prepared as the feature extractor says), the
    waves run as one zero-padded batch with an attention mask: the caller makes sure that padding
    is exact, or that the waves are of one length."""
    if spec.do_normalize:
        waves = [normalize(wave) for wave in waves]
    lengths = torch.tensor([len(wave) for wave in waves])
    batch = torch.full((len(waves), int(lengths.max())), spec.padding_value, dtype=torch.float32)
    for row, wave in enumerate(waves):
        batch[row, :len(wave)] = torch.from_numpy(np.asarray(wave, dtype=np.float32))
    mask = (torch.arange(batch.shape[1]) < lengths[:, None]).long()
    device = next(encoder.parameters()).device
    uses_mask = len(waves) > 1 and bool(torch.any(lengths != lengths.max()))
    out = hidden_states(encoder, batch.to(device), mask.to(device) if uses_mask else None, layers)
    frames = frame_lengths(encoder, lengths)
    return [out.states[row, :, :int(frames[row])].float().cpu() for row in range(len(waves))]


def extract(csv, audio_dir, out_dir, encoder_name: str, layers=None, dtype: str = "float16", batch_size: int = 8,
            device="auto", overwrite: bool = False) -> dict:
    """Write `<out_dir>/<FileName>.npy` for every csv row not done yet (all with `overwrite`).
    Returns {"written": n, "skipped": m}. Under torchrun process r encodes the r-th share of
    those left to do; each file is what one process writes."""
    if dtype not in DTYPES:
        raise SSLFeatureError(f"--dtype {dtype}: choose one of {sorted(DTYPES)}")
    names, paths = read_utterances(csv, audio_dir)
    out_dir = Path(out_dir)
    try:
        device = distributed.init_distributed(str(device))
    except ValueError as err:
        raise SSLFeatureError(str(err)) from err
    encoder, spec = load_encoder(encoder_name, device)
    try:
        kept = resolve_layers(layers, state_count(encoder.config))
    except ValueError as err:
        raise SSLFeatureError(f"--layers {' '.join(map(str, layers))}: {err}") from err
    targets = [out_dir / f"{name}.npy" for name in names]
    todo = [i for i, path in enumerate(targets) if overwrite or not path.exists()]
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = encoder_stamp(encoder_name, encoder, spec, kept, dtype, table_checksum(names, paths))
        check_stamp(out_dir, stamp, names, overwrite)
        lengths = samples_of([paths[i] for i in todo], spec.sampling_rate)
        frames = int(frame_lengths(encoder, torch.tensor(lengths)).sum()) if lengths else 0
        check_disk(out_dir, disk_needed(frames, len(kept), stamp["width"], dtype, len(todo)), len(kept), dtype)
    distributed.barrier()   # every process has its list and the stamp is agreed before any writes
    skipped = len(targets) - len(todo)
    if skipped:
        log.info("%d of %d feature files already in %s, skipped (--overwrite redoes them)", skipped, len(targets),
                 out_dir)
    todo = todo[distributed.rank()::distributed.world_size()]
    if todo:
        write_features(encoder, spec, [paths[i] for i in todo], [targets[i] for i in todo], kept, dtype, batch_size)
        log.info("wrote %d feature files to %s", len(todo), out_dir)
    return {"written": sum(distributed.gather_objects(len(todo))), "skipped": skipped}


def write_features(encoder, spec, paths, targets, layers: list[int], dtype: str, batch_size: int) -> None:
    """Encode and save, batch by batch (a killed run keeps what it finished)."""
    exact = padding_is_exact(encoder.config, spec)
    groups = batches(samples_of(paths, spec.sampling_rate), batch_size, exact)
    with logging_redirect_tqdm(), tqdm(total=len(paths), desc="hidden states", unit="utt") as bar:
        for group in groups:
            try:
                waves = [read_audio(paths[i], spec.sampling_rate) for i in group]
            except AudioError as err:
                raise SSLFeatureError(str(err)) from err
            if not exact and len({len(wave) for wave in waves}) > 1:  # headers and decoding disagreed
                outputs = [state for wave in waves for state in encode(encoder, spec, [wave], layers)]
            else:
                outputs = encode(encoder, spec, waves, layers)
            for i, states in zip(group, outputs):
                save_npy(targets[i], states.numpy().astype(DTYPES[dtype]))   # [states, frames, width]
            bar.update(len(group))
