"""Audio I/O: read any wav as 16 kHz mono float32 (soundfile to read, soxr to
resample), write wavs atomically, and normalise like the encoder's feature extractor."""
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from utils.files import atomic_path

log = logging.getLogger(__name__)
TARGET_SR = 16000
_warned: set[str] = set()


# File name endings of the formats this soundfile build reads (mp3 where libsndfile has it);
# header-less and exotic formats are left out of folder searches.
_SUFFIXES = {"WAV": (".wav",), "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",),
             "AIFF": (".aif", ".aiff"), "AU": (".au",), "CAF": (".caf",), "W64": (".w64",), "RF64": (".rf64",)}


def audio_suffixes() -> tuple[str, ...]:
    formats = sf.available_formats()
    return tuple(suffix for name, suffixes in _SUFFIXES.items() if name in formats for suffix in suffixes)


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the fix."""


def _warn_once(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        log.warning(message + " (said once; later files are converted silently)")


def read_audio(path, target_sr: int = TARGET_SR) -> np.ndarray:
    """Return the file's samples as float32 mono at target_sr (see prepare_samples)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found; check the audio folder or the csv's FileName")
    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: unreadable audio ({err}); re-export it as a 16 kHz PCM wav") from err
    if samples.size == 0:
        raise AudioError(f"{path}: the audio file holds no samples; re-export it or drop the utterance")
    return prepare_samples(samples, sr, target_sr, str(path))


def prepare_samples(samples: np.ndarray, sr: int, target_sr: int = TARGET_SR, name: str = "audio") -> np.ndarray:
    """[samples] or [samples, channels] at `sr` -> float32 mono at target_sr. Stereo is averaged
    to mono and other sample rates are resampled, each with one warning per process."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or samples.size == 0:
        raise AudioError(f"{name}: expected [samples] or [samples, channels] audio, got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: the audio holds NaN or infinite samples")
    if samples.shape[1] > 1:
        _warn_once("downmix", f"{name}: {samples.shape[1]} channels, averaging to mono")
        samples = samples.mean(axis=1, keepdims=True)
    samples = samples[:, 0]
    if sr != target_sr:
        _warn_once(f"resample{sr}", f"{name}: sample rate {sr} Hz, resampling to {target_sr} Hz")
        samples = soxr.resample(samples, sr, target_sr).astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def write_wav(path, samples: np.ndarray, sr: int = TARGET_SR, subtype: str = "PCM_16") -> None:
    """Write a wav atomically: a temporary file in the same folder, then a rename."""
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(str(tmp), samples, sr, subtype=subtype, format="WAV")


NORMALIZE_EPS = 1e-7  # in the variance, as transformers' Wav2Vec2FeatureExtractor


def normalize(samples: np.ndarray, eps: float = NORMALIZE_EPS) -> np.ndarray:
    """Zero-mean unit-variance per utterance, as Wav2Vec2FeatureExtractor(do_normalize=True)."""
    samples = samples.astype(np.float32)
    return (samples - samples.mean()) / np.sqrt(samples.var() + eps)
