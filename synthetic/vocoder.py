"""The letter vocoder of the synthetic corpora (synthetic/iemocap.py, synthetic/emobox.py): a
Turn's words spoken letter by letter (formant-filtered pulses and band-passed noise) in its
speaker's voice and its prosody, over room noise, as a 16 kHz float32 wav."""
import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import signal

from dataio.audio import TARGET_SR

SR = TARGET_SR


# ---------------------------------------------------------------- what is spoken, by whom, how
@dataclass(frozen=True)
class Speaker:
    name: str  # `Ses01_F`, as data_prep names speakers
    gender: str
    f0_hz: float
    formant_scale: float  # vocal-tract length: women's formants lie higher
    tempo: float
    level_db: float


@dataclass(frozen=True)
class Prosody:
    """One utterance's delivery: its style, the speaker's habits and random jitter combined."""
    pitch_st: float
    range_st: float
    tempo: float
    level_db: float
    tilt: float
    breath: float
    noise_db: float  # background noise, dB full scale


@dataclass(frozen=True)
class Turn:
    """One labelled utterance as planned: who says what, how, and after how long a silence."""
    id: str
    speaker: Speaker
    label: str
    tokens: tuple  # (word, punctuation after it) pairs
    prosody: Prosody
    lead_s: float    # silence in the wav before the first word
    target_s: float  # wanted wav duration; longer when the words need it
    gap_s: float     # silence in the dialog before this turn
    seed: int


# ---------------------------------------------------------------- the letter vocoder


@dataclass(frozen=True)
class Part:
    """A stretch of one letter's sound: formant-filtered voice plus band-passed noise."""
    seconds: float
    voice: float = 0.0
    formants: tuple = ()  # Hz, scaled by the speaker's formant_scale
    glide_to: tuple = ()  # formants at the end of a glide
    noise: float = 0.0
    band: tuple = ()      # noise band in Hz; empty: noise through the formants (aspiration)
    burst: bool = False   # decays within a few ms, like a released stop


def _vowel(f1, f2, f3):
    return (Part(0.09, voice=1.0, formants=(f1, f2, f3)),)


def _stop(band, voiced):
    # Closure (silent, or a low voice bar if voiced), then a release burst in the letter's band.
    return (Part(0.045, voice=0.12 if voiced else 0.0, formants=(180,)), Part(0.025, noise=0.6, band=band, burst=True))


def _fricative(band, noise, voiced):
    return (Part(0.085, noise=noise, band=band, voice=0.25 if voiced else 0.0, formants=(220,)),)


_W_GLIDE = dict(formants=(300, 650, 2200), glide_to=(650, 1150, 2450))
LETTERS = {
    "A": _vowel(800, 1250, 2550), "E": _vowel(480, 1900, 2600), "I": _vowel(290, 2300, 3050),
    "O": _vowel(520, 880, 2450), "U": _vowel(330, 820, 2250),
    "Y": (Part(0.085, voice=0.9, formants=(280, 2250, 3000), glide_to=(650, 1300, 2500)),),
    "W": (Part(0.075, voice=0.7, **_W_GLIDE),),
    "L": (Part(0.07, voice=0.6, formants=(380, 1000, 2900)),),
    "R": (Part(0.075, voice=0.7, formants=(450, 1250, 1650)),),
    "M": (Part(0.07, voice=0.4, formants=(250, 1100, 2200)),),
    "N": (Part(0.07, voice=0.4, formants=(250, 1750, 2700)),),
    "S": _fricative((4500, 7500), 0.5, False), "Z": _fricative((4000, 7000), 0.35, True),
    "F": _fricative((1200, 7000), 0.25, False), "V": _fricative((1200, 6000), 0.18, True),
    "H": (Part(0.06, noise=0.35, formants=(700, 1250, 2550)),),
    "P": _stop((400, 1500), False), "B": _stop((400, 1500), True),
    "T": _stop((3500, 6500), False), "D": _stop((3500, 6500), True),
    "K": _stop((1500, 3000), False), "G": _stop((1500, 3000), True),
    "C": (Part(0.03), Part(0.07, noise=0.45, band=(2000, 4200))),
    "J": (Part(0.03, voice=0.12, formants=(180,)),
          Part(0.07, noise=0.3, band=(1800, 4000), voice=0.25, formants=(220,))),
    "X": _stop((1500, 3000), False) + (Part(0.06, noise=0.5, band=(4500, 7500)),),
    "Q": _stop((1500, 3000), False) + (Part(0.06, voice=0.7, **_W_GLIDE),),
    "'": (Part(0.04), Part(0.012, voice=1.0, formants=(300, 1500, 2500), burst=True)),  # glottal stop, then a click
}
FORMANT_BANDWIDTHS = (90.0, 110.0, 170.0)
SENTENCE_END = (".", "?", "!")
PAUSE_AFTER = {"": 0.07, ",": 0.22, ".": 0.35, "?": 0.35, "!": 0.35}  # seconds at tempo 1
MIN_TRAIL_S = 0.12
FADE = 64  # samples of raised-cosine fade at both ends of every part (4 ms), against clicks


@functools.lru_cache(maxsize=None)
def formant_sos(formants: tuple) -> np.ndarray:
    """Cascade of Klatt resonators (unity gain at 0 Hz) as second-order sections."""
    sections = []
    for freq, bandwidth in zip(formants, FORMANT_BANDWIDTHS):
        r = math.exp(-math.pi * bandwidth / SR)
        c1, c2 = 2 * r * math.cos(2 * math.pi * freq / SR), -r * r
        sections.append([1 - c1 - c2, 0.0, 0.0, 1.0, -c1, -c2])
    return np.array(sections)


@functools.lru_cache(maxsize=None)
def band_sos(band: tuple) -> np.ndarray:
    return signal.butter(2, band, btype="bandpass", fs=SR, output="sos")


@functools.lru_cache(maxsize=None)
def word_seconds(word: str) -> float:
    return sum(part.seconds for letter in word.upper() for part in LETTERS[letter])


def spoken_seconds(word: str, tempo: float) -> float:
    """A word's share of an utterance: its letters, the pause after it and, on average,
    the longer pauses of commas and sentence ends (0.04 s per word, measured)."""
    return (word_seconds(word) + PAUSE_AFTER[""] + 0.04) / tempo


def unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def scaled(formants: tuple, scale: float) -> tuple:
    # Rounded so that the filter cache holds one entry per speaker and letter.
    return tuple(round(f * scale) for f in formants)


def render_part(part: Part, source: np.ndarray, noise: np.ndarray, scale: float) -> np.ndarray:
    """One part's samples; the voice and noise are each set to unit RMS, then to the part's gains."""
    out = np.zeros(len(source))
    if part.voice:
        voiced = signal.sosfilt(formant_sos(scaled(part.formants, scale)), source)
        if part.glide_to:
            ramp = np.linspace(0.0, 1.0, len(source))
            end = signal.sosfilt(formant_sos(scaled(part.glide_to, scale)), source)
            voiced = (1 - ramp) * voiced + ramp * end
        out += part.voice * unit_rms(voiced)
    if part.noise:
        sos = band_sos(part.band) if part.band else formant_sos(scaled(part.formants, scale))
        out += part.noise * unit_rms(signal.sosfilt(sos, noise))
    if part.burst:
        out *= np.exp(-np.arange(len(out)) / (0.008 * SR))
    fade = min(FADE, len(out) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    out[:fade] *= ramp
    out[len(out) - fade:] *= ramp[::-1]
    return out


def layout(tokens, tempo: float, lead: int):
    """Sample spans of every letter part and every word, spoken from sample `lead` on."""
    parts, words, pos = [], [], lead
    for word, mark in tokens:
        start = pos
        for letter in word.upper():
            for part in LETTERS[letter]:
                length = max(1, round(part.seconds / tempo * SR))
                parts.append((part, pos, pos + length))
                pos += length
        words.append((start, pos, mark))
        pos += round(PAUSE_AFTER[mark] / tempo * SR)
    return parts, words


def pitch_contour(words, prosody: Prosody, f0_hz: float, n: int, rng) -> np.ndarray:
    """Per-sample f0: a random accent on every word, declination over each sentence and a
    final rise on questions; the emotion sets the level and the accents' spread."""
    times, semitones, in_sentence = [], [], 0
    for start, stop, mark in words:
        accent = prosody.range_st * rng.standard_normal() - 0.4 * in_sentence
        if mark == "?":
            accent += 2 * prosody.range_st + 2
        times.append((start + stop) / 2)
        semitones.append(accent)
        in_sentence = 0 if mark in SENTENCE_END else in_sentence + 1
    contour = np.interp(np.arange(n), times, semitones)
    return f0_hz * 2 ** ((prosody.pitch_st + contour) / 12)


def glottal_source(f0: np.ndarray, prosody: Prosody, noise: np.ndarray) -> np.ndarray:
    """Pulse train at f0 through a two-pole glottal low-pass and a lip-radiation
    differentiator (unit RMS), plus aspiration noise."""
    pulses = np.diff(np.floor(np.cumsum(f0 / SR)), prepend=0.0)
    pole = [1.0, -prosody.tilt]
    voice = signal.lfilter([1.0, -1.0], np.polymul(pole, pole), pulses)
    return unit_rms(voice) + prosody.breath * noise


def background(white: np.ndarray, noise_db: float) -> np.ndarray:
    """Room noise: mostly low-frequency rumble, some hiss."""
    rumble = unit_rms(signal.lfilter([1.0], [1.0, -0.95], white))
    return 10 ** (noise_db / 20) * unit_rms(rumble + 0.3 * white)


def synthesize(turn: Turn) -> np.ndarray:
    """The turn's wav as float32: its words spelled letter by letter in its prosody, over noise."""
    rng = np.random.default_rng(turn.seed)
    prosody, speaker = turn.prosody, turn.speaker
    lead = round(turn.lead_s * SR)
    parts, words = layout(turn.tokens, prosody.tempo, lead)
    speech_end = words[-1][1]
    n = max(speech_end + round(MIN_TRAIL_S * SR), round(turn.target_s * SR))
    noise = rng.standard_normal(n)  # aspiration, fricatives and bursts all draw on it
    source = glottal_source(pitch_contour(words, prosody, speaker.f0_hz, n, rng), prosody, noise)
    speech = np.zeros(n)
    for part, start, stop in parts:
        if part.voice or part.noise:
            speech[start:stop] = render_part(part, source[start:stop], noise[start:stop], speaker.formant_scale)
    # Loudness is set over the spoken stretch, so the style's level is what a meter reads.
    speech *= 10 ** (prosody.level_db / 20) / np.sqrt(np.mean(speech[lead:speech_end] ** 2))
    samples = speech + background(rng.standard_normal(n), prosody.noise_db)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)
