"""Augmented audio views made on the fly, with nothing to download: speed and tempo
perturbation, additive noise at an exact SNR, and SpecAugment-style time and frequency masks.
Upstream's views were TTS re-syntheses of back-translated transcripts, generated offline; these
are the cheap stand-in (or complement) for the audio side. Every random choice comes from the
numpy Generator (or seed) passed in: same seed, same view."""
from dataclasses import dataclass

import numpy as np
import soxr
from scipy import signal

NOISE_COLORS = {"white": 0.0, "pink": 1.0, "brown": 2.0}   # power spectrum ~ 1 / f**exponent


@dataclass(frozen=True)
class AudioViewSettings:
    """What make_view does; a stage whose setting is None (or 0 masks) is skipped."""
    sample_rate: int = 16000
    speed_range: tuple[float, float] | None = (0.9, 1.1)    # >1 faster: shorter and higher-pitched
    tempo_range: tuple[float, float] | None = None          # >1 faster: shorter, same pitch (WSOLA)
    snr_db_range: tuple[float, float] | None = (10.0, 30.0)
    noise_color: str = "white"
    time_masks: int = 2
    time_mask_share: float = 0.05                           # of the samples, all masks together
    freq_masks: int = 0
    freq_mask_share: float = 0.1                            # of the STFT bins, all masks together
    n_fft: int = 512


def as_rng(rng) -> np.random.Generator:
    """A Generator, from a Generator (returned as is), an int seed or a seed sequence."""
    return np.random.default_rng(rng)


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for utterance `index` at `epoch`: the same view whatever the worker or
    batch order, a new view each epoch."""
    return np.random.default_rng([seed, epoch, index])


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int = 16000) -> np.ndarray:
    """Play `factor` times faster, as sox's `speed`: resample from sample_rate * factor to
    sample_rate (soxr), so the length is divided by factor and every frequency multiplied by it."""
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return wave.astype(np.float32, copy=True)
    return soxr.resample(wave.astype(np.float32), sample_rate * factor, sample_rate).astype(np.float32)


def tempo_perturb(wave: np.ndarray, factor: float, sample_rate: int = 16000,
                  frame_ms: float = 32.0, search_ms: float = 8.0) -> np.ndarray:
    """Play `factor` times faster at the same pitch: WSOLA (Verhelst & Roelands 1993).
    Hann frames are laid at a fixed output hop (50 % overlap, which sums to one) and read
    at hop * factor in the input, each shifted by up to search_ms to where it best continues
    (normalised cross-correlation) the previous frame's natural continuation.
    Output length round(len / factor)."""
    if factor <= 0:
        raise ValueError(f"tempo factor must be positive, got {factor}")
    if factor == 1.0:
        return wave.astype(np.float32, copy=True)
    frame = 2 * int(sample_rate * frame_ms / 2000)
    hop, tol = frame // 2, int(sample_rate * search_ms / 1000)
    window = signal.get_window("hann", frame)                # periodic: overlapped halves sum to 1
    out_len = int(round(len(wave) / factor))
    n_frames = out_len // hop + 2
    # Input coordinates: hop leading zeros (so output sample 0 is covered by two frames),
    # plus tol on each side for the search, plus enough tail for the last frame.
    needed = int(np.ceil((n_frames - 1) * hop * factor)) + frame + 2 * tol + hop
    x = np.zeros(max(needed, len(wave) + hop + 2 * tol))
    x[tol + hop: tol + hop + len(wave)] = wave
    out = np.zeros((n_frames - 1) * hop + frame)
    start = tol                                              # frame 0 read where it is nominally
    for k in range(n_frames):
        if k:
            start = _best_start(x, int(round(k * hop * factor)) + tol, x[start + hop: start + hop + frame], tol)
        out[k * hop: k * hop + frame] += window * x[start: start + frame]
    return out[hop: hop + out_len].astype(np.float32)


def _best_start(x, nominal, template, tol):
    """The start in [nominal - tol, nominal + tol] whose frame best matches the template."""
    region = x[nominal - tol: nominal + tol + len(template)]
    correlation = np.correlate(region, template, mode="valid")
    energy = np.convolve(region ** 2, np.ones(len(template)), mode="valid")
    return nominal - tol + int(np.argmax(correlation / np.sqrt(energy + 1e-12)))


def coloured_noise(n: int, rng, color: str = "white") -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1 / f**e (white 0, pink 1, brown 2)."""
    if color not in NOISE_COLORS:
        raise ValueError(f"unknown noise colour {color!r}; choose one of {', '.join(NOISE_COLORS)}")
    noise = as_rng(rng).standard_normal(n)
    exponent = NOISE_COLORS[color]
    if exponent and n > 1:
        spectrum = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(n)
        freqs[0] = freqs[1]                                  # keep the mean finite
        noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise


def add_noise(wave: np.ndarray, snr_db: float, rng, color: str = "white") -> np.ndarray:
    """wave + noise scaled so that 10 log10(sum(wave**2) / sum(noise**2)) is exactly snr_db.
    A silent wave is returned unchanged (no noise power makes a finite SNR against nothing)."""
    signal_power = float(np.sum(np.square(wave, dtype=np.float64)))
    if signal_power == 0.0 or len(wave) == 0:
        return wave.astype(np.float32, copy=True)
    noise = coloured_noise(len(wave), rng, color)
    noise *= np.sqrt(signal_power / (np.sum(noise ** 2) * 10.0 ** (snr_db / 10.0)))
    return (wave.astype(np.float64) + noise).astype(np.float32)


def mask_spans(length: int, num_masks: int, share: float, rng) -> list[tuple[int, int]]:
    """num_masks non-overlapping [start, stop) spans covering round(share * length) positions
    together (split as evenly as integers allow), at random places."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"mask share must be in [0, 1], got {share}")
    total = int(round(share * length))
    if num_masks <= 0 or total == 0:
        return []
    sizes = np.full(num_masks, total // num_masks)
    sizes[: total % num_masks] += 1
    # The unmasked positions are cut into num_masks + 1 gaps at random sorted points.
    cuts = np.sort(as_rng(rng).integers(0, length - total + 1, size=num_masks))
    starts = cuts + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [(int(s), int(s + n)) for s, n in zip(starts, sizes) if n]


def time_mask(wave: np.ndarray, num_masks: int, share: float, rng) -> np.ndarray:
    """Zero num_masks spans of samples, round(share * len) samples in all."""
    out = wave.astype(np.float32, copy=True)
    for start, stop in mask_spans(len(out), num_masks, share, rng):
        out[start:stop] = 0.0
    return out


def frequency_mask(wave: np.ndarray, num_masks: int, share: float, rng, n_fft: int = 512) -> np.ndarray:
    """Zero num_masks bands of STFT bins (round(share * bins) in all) and resynthesise:
    Hann STFT at 50 % overlap, bins zeroed, inverse STFT, same length as the input. The
    round trip is not a consistent STFT, so the band is attenuated (tests: > 30 dB), not
    exactly zero in the output's own spectrum."""
    bands = mask_spans(n_fft // 2 + 1, num_masks, share, rng)
    if not bands or len(wave) == 0:
        return wave.astype(np.float32, copy=True)
    padded = np.zeros(max(len(wave), n_fft))               # a wave shorter than one frame is zero-padded
    padded[: len(wave)] = wave
    _, _, spectrum = signal.stft(padded, nperseg=n_fft, noverlap=n_fft // 2)
    for start, stop in bands:
        spectrum[start:stop] = 0.0
    _, resynth = signal.istft(spectrum, nperseg=n_fft, noverlap=n_fft // 2)
    out = np.zeros(len(wave), dtype=np.float32)
    out[: min(len(wave), len(resynth))] = resynth[: len(wave)]
    return out


def make_view(wave: np.ndarray, rng, spec: AudioViewSettings = AudioViewSettings()) -> np.ndarray:
    """One augmented view of a 1-D wave: speed, tempo, noise, frequency masks, time masks,
    in that order (masks last, so masked samples stay exact zeros). float32, 1-D, finite."""
    wave = np.asarray(wave)
    if wave.ndim != 1 or not np.all(np.isfinite(wave)):
        raise ValueError(f"make_view needs a finite 1-D wave, got shape {wave.shape}")
    rng = as_rng(rng)
    view = wave.astype(np.float32, copy=True)
    if spec.speed_range is not None:
        view = speed_perturb(view, float(rng.uniform(*spec.speed_range)), spec.sample_rate)
    if spec.tempo_range is not None:
        view = tempo_perturb(view, float(rng.uniform(*spec.tempo_range)), spec.sample_rate)
    if spec.snr_db_range is not None:
        view = add_noise(view, float(rng.uniform(*spec.snr_db_range)), rng, spec.noise_color)
    if spec.freq_masks:
        view = frequency_mask(view, spec.freq_masks, spec.freq_mask_share, rng, spec.n_fft)
    if spec.time_masks:
        view = time_mask(view, spec.time_masks, spec.time_mask_share, rng)
    return view
