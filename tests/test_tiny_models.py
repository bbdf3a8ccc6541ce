"""The tiny encoders stand in for wav2vec2-base and roberta-base in every test and in the
offline demo: they must load through the same from_pretrained calls and behave alike."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoTokenizer,
    RobertaModel,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2Model,
)

from synthetic.tiny_models import (
    CHAR_VOCAB_PATH,
    make_tiny_models,
    tiny_roberta_config,
    tiny_speech_encoder,
    tiny_speech_encoder_config,
    tiny_wav2vec2_config,
)
from synthetic.lexicon import all_words

REPO = Path(__file__).resolve().parents[1]
REFERENCE_VOCAB = Path(__file__).resolve().parent / "reference" / "wav2vec2_char_vocab.json"
POS_CONV = "encoder.pos_conv_embed.conv"
# How transformers 4.x named the positional convolution's weight norm (g, v).
LEGACY_NAMES = {
    f"{POS_CONV}.parametrizations.weight.original0": f"{POS_CONV}.weight_g",
    f"{POS_CONV}.parametrizations.weight.original1": f"{POS_CONV}.weight_v",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)


def base_frame_count(samples: int) -> int:
    """wav2vec2-base's feature-encoder length formula, written out independently."""
    for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
        samples = (samples - kernel) // stride + 1
    return samples


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_tiny_wav2vec2_loads_with_automodel_and_gives_20ms_frames_of_64_dims(tiny):
    model = AutoModel.from_pretrained(tiny["wav2vec2"]).eval()
    assert isinstance(model, Wav2Vec2Model)
    with torch.no_grad():
        frames = model(torch.randn(2, 16000)).last_hidden_state
    assert frames.shape == (2, 50 - 1, 64)  # one second: 50 frames of 20 ms, less the receptive field


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm"])
def test_speech_encoders_follow_the_base_length_formula(kind):
    torch.manual_seed(0)
    model = tiny_speech_encoder(kind).eval()
    for samples in (400, 1234, 16000, 24007):
        with torch.no_grad():
            frames = model(torch.randn(1, samples)).last_hidden_state
        assert frames.shape == (1, base_frame_count(samples), 64)
        assert int(model._get_feat_extract_output_lengths(torch.tensor(samples))) == base_frame_count(samples)


def test_unknown_speech_encoder_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="hubert.*wav2vec2.*wavlm"):
        tiny_speech_encoder_config("whisper")


def test_config_factories_keep_base_architecture_and_apply_overrides():
    config = tiny_wav2vec2_config(num_hidden_layers=1)
    assert config.num_hidden_layers == 1 and config.hidden_size == 64
    assert (config.feat_extract_norm, config.do_stable_layer_norm, config.vocab_size) == ("group", False, 32)
    assert tiny_roberta_config(hidden_size=32).hidden_size == 32


def test_encoders_use_sdpa_except_wavlm_which_transformers_refuses():
    kinds = ("wav2vec2", "hubert", "wavlm")
    attention = {kind: tiny_speech_encoder_config(kind)._attn_implementation for kind in kinds}
    assert attention == {"wav2vec2": "sdpa", "hubert": "sdpa", "wavlm": "eager"}
    assert tiny_roberta_config()._attn_implementation == "sdpa"


def test_feature_extractor_normalises_like_wav2vec2_base_without_attention_mask(tiny):
    extractor = AutoFeatureExtractor.from_pretrained(tiny["wav2vec2"])
    assert (extractor.sampling_rate, extractor.do_normalize, extractor.padding_value) == (16000, True, 0.0)
    features = extractor([3.0 + 2.0 * torch.randn(8000).numpy()], sampling_rate=16000, return_tensors="pt")
    assert "attention_mask" not in features
    assert abs(float(features.input_values.mean())) < 1e-3
    assert abs(float(features.input_values.std()) - 1.0) < 1e-2


@pytest.mark.parametrize("loader", [AutoTokenizer, Wav2Vec2CTCTokenizer])
def test_ctc_tokenizer_has_the_32_symbols_with_pad_blank_and_word_delimiter(tiny, loader):
    tokenizer = loader.from_pretrained(tiny["wav2vec2"])
    assert isinstance(tokenizer, Wav2Vec2CTCTokenizer)
    assert tokenizer.get_vocab() == json.loads(CHAR_VOCAB_PATH.read_text())
    assert len(tokenizer) == 32 and tokenizer.pad_token_id == 0
    assert tokenizer.word_delimiter_token_id == tokenizer.convert_tokens_to_ids("|")
    assert tokenizer.convert_ids_to_tokens(tokenizer("HI YOU").input_ids) == list("HI|YOU")


def test_project_vocab_copy_equals_the_reference():
    assert json.loads(CHAR_VOCAB_PATH.read_text()) == json.loads(REFERENCE_VOCAB.read_text())


def test_tiny_roberta_gives_one_128_dim_state_per_token_up_to_128_tokens(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny["roberta"])
    model = AutoModel.from_pretrained(tiny["roberta"]).eval()
    assert isinstance(model, RobertaModel) and model.config.vocab_size == len(tokenizer)
    encoded = tokenizer(["I love it.", "okay " * 200], truncation=True, padding=True, return_tensors="pt")
    assert encoded.input_ids.shape[1] == tokenizer.model_max_length == 128
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    assert hidden.shape == (2, 128, 128)


def test_roberta_special_tokens_follow_roberta_base(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny["roberta"])
    config = AutoModel.from_pretrained(tiny["roberta"]).config
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<s>", "<pad>", "</s>", "<unk>")}
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    assert tokenizer.mask_token == "<mask>" and tokenizer("")["input_ids"] == [0, 2]
    assert (config.bos_token_id, config.pad_token_id, config.eos_token_id) == (0, 1, 2)


def test_roberta_tokenizer_keeps_lexicon_words_whole_and_round_trips_them(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny["roberta"])
    for word in all_words():
        ids = tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == f" {word}"
        if "'" not in word:  # contractions split at the apostrophe, as in roberta-base
            assert len(ids) == 1, word
    sentence = "Well, I hate this stupid office. WOW! It's okay."
    assert tokenizer.decode(tokenizer(sentence)["input_ids"], skip_special_tokens=True) == sentence


def test_roberta_tokenizer_handles_arbitrary_text_without_unknown_tokens(tiny):
    tokenizer = AutoTokenizer.from_pretrained(tiny["roberta"])
    text = "Zoë paid 42€ — naïve 日本語 😀?!\ttabs  and  spaces"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_same_seed_gives_identical_weights_and_another_seed_different_ones(tiny, tmp_path):
    again = make_tiny_models(tmp_path / "again", seed=0)
    other = make_tiny_models(tmp_path / "other", seed=1)
    for name in ("wav2vec2", "roberta"):
        first, second, third = weights(tiny[name]), weights(again[name]), weights(other[name])
        assert first.keys() == second.keys() == third.keys()
        assert all(torch.equal(first[key], second[key]) for key in first)
        assert not all(torch.equal(first[key], third[key]) for key in first)
    assert (tiny["roberta"] / "tokenizer.json").read_text() == (other["roberta"] / "tokenizer.json").read_text()


def test_building_leaves_the_callers_random_state_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_models(tmp_path, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_pos_conv_weight_norm_is_saved_as_parametrizations_and_legacy_keys_still_load(tiny):
    """transformers 5 saves the weight norm as parametrizations.weight.original0/1 (g, v);
    checkpoints of transformers 4 hold weight_g/weight_v, which torch's hook maps on load."""
    saved = weights(tiny["wav2vec2"])
    g, v = f"{POS_CONV}.parametrizations.weight.original0", f"{POS_CONV}.parametrizations.weight.original1"
    assert {g, v} <= set(saved)
    legacy = {LEGACY_NAMES.get(key, key): value for key, value in saved.items()}
    model = Wav2Vec2Model(tiny_wav2vec2_config())
    model.load_state_dict(legacy, strict=True)
    assert all(torch.equal(model.state_dict()[key], saved[key]) for key in saved)


def test_cli_writes_both_models(tmp_path):
    result = subprocess.run(
        [sys.executable, "data_prep/make_tiny_models.py", "--out", str(tmp_path), "--seed", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("wav2vec2", "roberta"):
        assert (tmp_path / name / "config.json").is_file() and (tmp_path / name / "model.safetensors").is_file()
    assert (tmp_path / "wav2vec2" / "preprocessor_config.json").is_file()
    assert (tmp_path / "roberta" / "tokenizer.json").is_file()
