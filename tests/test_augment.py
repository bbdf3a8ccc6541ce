"""Augmented audio views (dataio/augment.py): reproducible under the seed, exact SNR, speed
and tempo change the length by the factor (tempo keeping the pitch), masks zero the share
asked, and every view is finite float32 1-D."""
import numpy as np
import pytest
from scipy import signal

from dataio.augment import (AudioViewSettings, add_noise, frequency_mask, make_view, mask_spans, speed_perturb,
                           tempo_perturb, time_mask, view_rng)

SR = 16000
ALL_STAGES = AudioViewSettings(speed_range=(0.9, 1.1), tempo_range=(0.8, 1.2), snr_db_range=(5.0, 20.0),
                               noise_color="pink", time_masks=3, time_mask_share=0.1, freq_masks=2)


def speech_like(seconds=1.0, seed=0):
    """A few harmonics with a wandering envelope plus a little noise: no exact zeros."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((180, 360, 540), 1))
    wave *= 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * wave + 0.01 * rng.standard_normal(len(t)) + 0.5).astype(np.float32)


def sine(freq, seconds=2.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wave):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / SR)[np.argmax(spectrum)]


def snr_db(clean, noisy):
    clean = clean.astype(np.float64)
    return 10 * np.log10(np.sum(clean ** 2) / np.sum((noisy.astype(np.float64) - clean) ** 2))


# ---- determinism ----

def test_same_seed_same_view_and_different_seeds_differ():
    wave = speech_like()
    first = make_view(wave, 0, ALL_STAGES)
    assert np.array_equal(first, make_view(wave, 0, ALL_STAGES))
    assert np.array_equal(first, make_view(wave, np.random.default_rng(0), ALL_STAGES))
    other = make_view(wave, 1, ALL_STAGES)
    assert len(other) != len(first) or not np.array_equal(first, other)


@pytest.mark.parametrize("stage", [
    lambda w, rng: add_noise(w, 10.0, rng, "brown"),
    lambda w, rng: time_mask(w, 2, 0.1, rng),
    lambda w, rng: frequency_mask(w, 2, 0.1, rng),
])
def test_each_random_stage_follows_its_seed(stage):
    wave = speech_like()
    assert np.array_equal(stage(wave, np.random.default_rng(3)), stage(wave, np.random.default_rng(3)))
    assert not np.array_equal(stage(wave, np.random.default_rng(3)), stage(wave, np.random.default_rng(4)))


def test_view_rng_depends_on_seed_epoch_and_index_only():
    wave = speech_like(0.5)
    view = make_view(wave, view_rng(0, 2, 17), ALL_STAGES)
    assert np.array_equal(view, make_view(wave, view_rng(0, 2, 17), ALL_STAGES))
    for other in (view_rng(0, 3, 17), view_rng(0, 2, 18), view_rng(1, 2, 17)):
        changed = make_view(wave, other, ALL_STAGES)
        assert len(changed) != len(view) or not np.array_equal(changed, view)


# ---- noise ----

@pytest.mark.parametrize("color", ["white", "pink", "brown"])
@pytest.mark.parametrize("target", [0.0, 7.5, 30.0])
def test_noise_is_added_at_the_asked_snr(color, target):
    wave = speech_like()
    noisy = add_noise(wave, target, np.random.default_rng(0), color)
    assert noisy.dtype == np.float32
    assert snr_db(wave, noisy) == pytest.approx(target, abs=0.1)


def test_noise_colours_have_their_spectral_slope():
    slopes = {}
    for color in ("white", "pink", "brown"):
        noisy = add_noise(np.ones(1 << 16, dtype=np.float32), 0.0, np.random.default_rng(0), color) - 1.0
        freqs, power = signal.welch(noisy, fs=SR, nperseg=1024)
        band = (freqs > 100) & (freqs < 4000)
        slopes[color] = np.polyfit(np.log10(freqs[band]), np.log10(power[band]), 1)[0]
    assert slopes["white"] == pytest.approx(0.0, abs=0.2)
    assert slopes["pink"] == pytest.approx(-1.0, abs=0.2)
    assert slopes["brown"] == pytest.approx(-2.0, abs=0.2)


def test_noise_on_silence_leaves_silence():
    assert np.array_equal(add_noise(np.zeros(100, np.float32), 10.0, 0), np.zeros(100, np.float32))


# ---- speed and tempo ----

@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_divides_length_and_multiplies_pitch_by_the_factor(factor):
    wave = sine(440.0)
    fast = speed_perturb(wave, factor, SR)
    assert abs(len(fast) - len(wave) / factor) <= 1
    assert peak_frequency(fast) == pytest.approx(440.0 * factor, abs=2.0)


@pytest.mark.parametrize("factor", [0.8, 0.9, 1.1, 1.25])
def test_tempo_divides_length_and_keeps_pitch(factor):
    wave = sine(440.0)
    fast = tempo_perturb(wave, factor, SR)
    assert len(fast) == round(len(wave) / factor)
    assert peak_frequency(fast) == pytest.approx(440.0, abs=2.0)
    # Overlap-add of aligned frames keeps the level: no holes or doubled segments.
    rms = np.sqrt(np.mean(fast[200:-200] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_tempo_moves_events_to_the_scaled_times(factor):
    wave = sine(440.0)
    on = (np.arange(len(wave)) >= 0.5 * SR) & (np.arange(len(wave)) < 1.0 * SR)
    fast = tempo_perturb(np.where(on, wave, 0.0).astype(np.float32), factor, SR)
    loud = np.flatnonzero(np.abs(fast) > 0.25) / SR
    # Within a frame (32 ms) of where the burst should start and end now.
    assert loud[0] == pytest.approx(0.5 / factor, abs=0.032)
    assert loud[-1] == pytest.approx(1.0 / factor, abs=0.032)


def test_factor_one_is_the_identity():
    wave = speech_like(0.2)
    assert np.array_equal(speed_perturb(wave, 1.0), wave)
    assert np.array_equal(tempo_perturb(wave, 1.0), wave)


# ---- masks ----

@pytest.mark.parametrize("num,share", [(1, 0.1), (2, 0.05), (3, 0.2), (4, 1.0), (5, 0.0)])
def test_mask_spans_cover_the_share_without_overlap(num, share):
    for seed in range(5):
        spans = mask_spans(1000, num, share, seed)
        covered = np.zeros(1000, dtype=int)
        for start, stop in spans:
            assert 0 <= start < stop <= 1000
            covered[start:stop] += 1
        assert covered.max(initial=0) <= 1
        assert covered.sum() == round(share * 1000)


@pytest.mark.parametrize("num,share", [(1, 0.1), (2, 0.05), (3, 0.25)])
def test_time_masks_zero_the_asked_share(num, share):
    wave = speech_like()                       # offset by 0.5: no natural zeros
    masked = time_mask(wave, num, share, np.random.default_rng(0))
    assert np.sum(masked == 0) == round(share * len(wave))
    kept = masked != 0
    assert np.array_equal(masked[kept], wave[kept])


def test_frequency_mask_removes_the_masked_band():
    noise = np.random.default_rng(0).standard_normal(4 * SR).astype(np.float32)
    masked = frequency_mask(noise, 1, 0.2, np.random.default_rng(5), n_fft=512)
    (start, stop), = mask_spans(257, 1, 0.2, np.random.default_rng(5))   # the same draw
    assert len(masked) == len(noise) and masked.dtype == np.float32
    _, before = signal.welch(noise, nperseg=512, noverlap=256)
    _, after = signal.welch(masked, nperseg=512, noverlap=256)
    inside = slice(start + 3, stop - 3)       # Welch's window leaks a couple of bins at the edges
    assert np.max(after[inside]) < 1e-3 * np.median(before)
    outside = np.r_[0:max(start - 3, 0), min(stop + 3, 257):257]
    assert np.median(after[outside]) == pytest.approx(np.median(before[outside]), rel=0.1)


# ---- the composed view ----

@pytest.mark.parametrize("wave", [
    speech_like(1.0),
    speech_like(0.01),                                   # shorter than one WSOLA frame
    np.zeros(8000, dtype=np.float32),                    # silence
    speech_like(0.5).astype(np.float64) * 3,             # float64 in
], ids=["speech", "very-short", "silence", "float64"])
def test_views_are_finite_float32_1d(wave):
    for seed in range(3):
        view = make_view(wave, seed, ALL_STAGES)
        assert view.dtype == np.float32 and view.ndim == 1 and len(view) > 0
        assert np.all(np.isfinite(view))


def test_default_view_changes_length_by_the_drawn_speed():
    wave = speech_like(2.0)
    view = make_view(wave, 0)
    factor = np.random.default_rng(0).uniform(0.9, 1.1)   # the first draw is the speed
    assert abs(len(view) - len(wave) / factor) <= 1


@pytest.mark.parametrize("bad", [np.zeros((2, 100), np.float32), np.array([0.0, np.nan, 1.0])])
def test_make_view_refuses_non_finite_or_multichannel_input(bad):
    with pytest.raises(ValueError, match="finite 1-D wave"):
        make_view(bad, 0)
