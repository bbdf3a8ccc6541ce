"""Speech encoders beyond wav2vec 2.0 behind --wav2vec2: Whisper's encoder (WhisperSpeechEncoder,
raw samples in) gives an utterance in a zero-padded batch what it gives it alone, covers the
audio with ceil(samples / 320) frames, and both it and data2vec-audio fine-tune end to end."""
import json
import math

import numpy as np
import pytest
import torch

import run
from models.encoders import (
    audio_input_spec,
    conv_cache_refusal,
    encoder_config,
    frame_lengths,
    load_speech_encoder,
    padding_is_exact,
)
from models.hidden_states import hidden_states
from models.whisper_encoder import WhisperSpeechEncoder
from synthetic.tiny_models import save_speech_encoder, save_whisper_speech_encoder, tiny_speech_encoder

SAMPLES = [4000, 7013, 16000, 321]


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return save_whisper_speech_encoder(tmp_path_factory.mktemp("whisper") / "whisper", seed=0)


@pytest.fixture(scope="module")
def data2vec_dir(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return save_speech_encoder(tiny_speech_encoder("data2vec-audio"),
                                   tmp_path_factory.mktemp("data2vec") / "data2vec")


@pytest.fixture(scope="module")
def whisper(whisper_dir) -> WhisperSpeechEncoder:
    return load_speech_encoder(str(whisper_dir)).eval()


def test_whisper_loads_as_a_speech_encoder_that_pads_exactly(whisper, whisper_dir):
    assert isinstance(whisper, WhisperSpeechEncoder)
    assert not any(p.requires_grad for p in whisper.feature_extractor.parameters())  # convolutions frozen
    spec = audio_input_spec(str(whisper_dir))
    assert not spec.do_normalize and padding_is_exact(encoder_config(str(whisper_dir)), spec)
    assert conv_cache_refusal(encoder_config(str(whisper_dir)), spec) is not None


def test_whisper_frames_cover_the_audio_at_20_ms(whisper):
    samples = torch.tensor([1, 319, 320, 321, 16000, 16001, 480000, 500000])
    expected = [min(math.ceil(n / 320), 1500) for n in samples.tolist()]
    assert frame_lengths(whisper, samples).tolist() == expected


def test_whisper_in_a_zero_padded_batch_gives_each_utterance_what_it_gets_alone(whisper):
    generator = torch.Generator().manual_seed(0)
    waves = [0.3 * torch.randn(n, generator=generator) for n in SAMPLES]
    batch = torch.zeros(len(waves), max(SAMPLES))
    mask = torch.zeros_like(batch, dtype=torch.long)
    for row, wave in enumerate(waves):
        batch[row, :len(wave)], mask[row, :len(wave)] = wave, 1
    together = hidden_states(whisper, batch, mask)
    assert together.frames.tolist() == [math.ceil(n / 320) for n in SAMPLES]
    assert together.states.shape == (len(SAMPLES), 3, math.ceil(max(SAMPLES) / 320), 64)
    for row, wave in enumerate(waves):
        alone = hidden_states(whisper, wave[None])
        assert alone.states.shape[2] == together.frames[row]
        torch.testing.assert_close(together.states[row, :, :together.frames[row]], alone.states[0],
                                   rtol=1e-4, atol=1e-4)


def test_data2vec_audio_batches_only_utterances_of_one_length(data2vec_dir):
    # its stacked positional convolutions carry the masked padding into the valid frames
    assert not padding_is_exact(encoder_config(str(data2vec_dir)), audio_input_spec(str(data2vec_dir)))


def test_data2vec_audio_has_specaugment_off_unless_asked(data2vec_dir):
    # its config class declares no apply_spec_augment, which its model reads with default on
    assert load_speech_encoder(str(data2vec_dir)).config.apply_spec_augment is False
    assert load_speech_encoder(str(data2vec_dir), specaugment=True).config.apply_spec_augment is True


@pytest.mark.parametrize("family", ["whisper", "data2vec-audio"])
def test_fine_tuning_runs_end_to_end_with_another_encoder_family(family, demo, whisper_dir, data2vec_dir, tmp_path):
    encoder = whisper_dir if family == "whisper" else data2vec_dir
    results = run.main(demo.flags(run="unimodal_baseline", wav2vec2=str(encoder), save_path=str(tmp_path),
                                  epochs=1, sessions="1"))
    run_dir = tmp_path / "unimodal_baseline"
    saved = json.loads((run_dir / "results.json").read_text())
    assert set(saved["folds"]) == {"1"}
    assert all(np.isfinite(value) for value in (saved["mean"]["ua"], saved["mean"]["wa"], results["mean"]["ua"]))
    stats = json.loads((run_dir / "1_stats.txt").read_text().splitlines()[0])
    assert np.isfinite(stats["loss"]) and np.isfinite(stats["ctc_loss"])
    assert json.loads((run_dir / "config.json").read_text())["model"]["wav2vec2"] == str(encoder)
