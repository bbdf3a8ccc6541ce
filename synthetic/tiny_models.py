"""Tiny randomly initialised models for the tests and the offline demo: a wav2vec2 with
the 32-symbol CTC vocabulary (and HuBERT, WavLM, data2vec-audio of the same shape), a RoBERTa
with a locally trained byte-level BPE tokenizer, a Whisper speech recogniser with Whisper's
special tokens and a Whisper model without tokenizer for its encoder, saved with save_pretrained
so they load exactly like facebook/wav2vec2-base, roberta-base and openai/whisper-small."""
import json
from pathlib import Path


import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioModel,
    GenerationConfig,
    HubertConfig,
    HubertModel,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizerFast,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES


from dataio.text import VOCAB_FILE
from synthetic.lexicon import all_words

# The project's copy of reference/wav2vec2_char_vocab.json (tests check they agree).
CHAR_VOCAB_PATH = VOCAB_FILE

# Sizes of the tiny speech encoders.
TINY_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
# The tiny RoBERTa is wider: with random weights, 64 dimensions blur the identity of the
# words so much that the demo's text signal is lost (a linear probe on mean-pooled
# features of the synthetic corpus: 46 % at 64 dims, 55 % at 128, bag-of-words 65 %).
TINY_TEXT_SIZES = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)

# wav2vec2-base's feature encoder (frames of 20 ms, its real length formula) at 32 channels
# per layer, and a small positional convolution.
TINY_SPEECH_SIZES = dict(
    TINY_SIZES,
    conv_dim=(32,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    feat_extract_norm="group",
    do_stable_layer_norm=False,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    vocab_size=32,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

SPEECH_ENCODERS = {
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "hubert": (HubertConfig, HubertModel),
    "wavlm": (WavLMConfig, WavLMModel),
    "data2vec-audio": (Data2VecAudioConfig, Data2VecAudioModel),
}
# data2vec-audio's feature encoder is always layer-normed and its positional embedding is a stack
# of num_conv_pos_embeddings convolutions of conv_pos_kernel_size (its config would keep the
# wav2vec2 settings it has no use for as stray attributes, so they are replaced).
KIND_SIZES = {
    "data2vec-audio": dict({k: v for k, v in TINY_SPEECH_SIZES.items()
                            if k not in ("feat_extract_norm", "do_stable_layer_norm")},
                           num_conv_pos_embeddings=2, conv_pos_kernel_size=5),
}
# WavLM's gated relative-position attention has no SDPA version in transformers.
EAGER_ONLY = {"wavlm"}

ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in roberta-base
TINY_TEXT_MAX_TOKENS = 128
# Sentence frames that show the BPE trainer every lexicon word sentence-initial and
# mid-sentence (byte-level BPE sees the leading space), in lower, title and upper case.
SENTENCE_FRAMES = ["{w}", "{W}.", "{U}!", "I said {w}.", "Well, {W}, you know?", "Oh {U}!"]

# The tiny Whisper: whisper-small's layout at the tiny sizes. The encoder keeps Whisper's 1500
# positions because the feature extractor pads every clip to 30 s (3000 mel frames, halved by
# the stride-2 convolution) and the encoder refuses any other length; at 64 dimensions that
# costs little. Generation stops after 40 tokens, so random weights finish quickly.
TINY_WHISPER_SIZES = dict(
    d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500,
    max_target_positions=448,
)
TINY_WHISPER_MAX_LENGTH = 40
# Whisper's special tokens, in the order of the multilingual models' ids (after the BPE
# vocabulary): end of text, start of transcript, the 99 languages, the tasks, ... and then
# 1501 timestamps <|0.00|> .. <|30.00|>, which are ordinary (not special) added tokens.
WHISPER_TASK_TOKENS = ["<|translate|>", "<|transcribe|>"]
WHISPER_SPECIAL_TOKENS = (
    ["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES] + WHISPER_TASK_TOKENS
    + ["<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
)
WHISPER_TIMESTAMPS = ["<|%.2f|>" % (i * 0.02) for i in range(1501)]


def tiny_speech_encoder_config(kind: str = "wav2vec2", **overrides):
    """Config of a tiny wav2vec2, HuBERT, WavLM or data2vec-audio, all with wav2vec2-base's
    architecture choices (data2vec-audio: its own layer-norm feature encoder)."""
    if kind not in SPEECH_ENCODERS:
        raise ValueError(f"unknown speech encoder {kind!r}; choose one of {sorted(SPEECH_ENCODERS)}")
    config_class, _ = SPEECH_ENCODERS[kind]
    attention = "eager" if kind in EAGER_ONLY else "sdpa"
    return config_class(**{**KIND_SIZES.get(kind, TINY_SPEECH_SIZES), "attn_implementation": attention, **overrides})


def tiny_speech_encoder(kind: str = "wav2vec2", **overrides):
    """A randomly initialised tiny speech encoder of the given kind."""
    config = tiny_speech_encoder_config(kind, **overrides)
    _, model_class = SPEECH_ENCODERS[kind]
    return model_class(config)


def tiny_wav2vec2_config(**overrides) -> Wav2Vec2Config:
    return tiny_speech_encoder_config("wav2vec2", **overrides)


def tiny_roberta_config(**overrides) -> RobertaConfig:
    """RoBERTa at the tiny sizes. As in roberta-base, positions start after the padding
    index, so max_position_embeddings is the token limit plus 2."""
    settings = dict(
        TINY_TEXT_SIZES,
        vocab_size=1024,
        max_position_embeddings=TINY_TEXT_MAX_TOKENS + 2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    return RobertaConfig(**{**settings, **overrides})


def wav2vec2_feature_extractor(attention_mask: bool = False) -> Wav2Vec2FeatureExtractor:
    """The feature extractor of wav2vec2-base: 16 kHz, per-utterance zero-mean unit-variance,
    zero padding and no attention mask (its group-norm feature encoder must not get one).
    attention_mask=True: that of layer-norm encoders such as wav2vec2-large-lv60."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=attention_mask,
    )


def save_speech_encoder(encoder, path) -> Path:
    """save_pretrained a speech encoder with the feature extractor its feature encoder takes: no
    attention mask for group norm (wav2vec2-base), one for layer norm (wav2vec2-large-lv60)."""
    path = Path(path)
    encoder.save_pretrained(path)
    layer_norm = getattr(encoder.config, "feat_extract_norm", "layer") == "layer"  # data2vec-audio: always
    wav2vec2_feature_extractor(attention_mask=layer_norm).save_pretrained(path)
    return path


def char_ctc_tokenizer() -> Wav2Vec2CTCTokenizer:
    """The 32-symbol character tokenizer of the CTC head (`<pad>`=0 is the blank, `|` the space)."""
    return Wav2Vec2CTCTokenizer(
        str(CHAR_VOCAB_PATH),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        word_delimiter_token="|",
        do_lower_case=False,
    )


def tiny_bpe_corpus() -> list[str]:
    """Training text for the tiny BPE: every lexicon word in every sentence frame."""
    return [
        frame.format(w=word, W=word.capitalize(), U=word.upper())
        for word in all_words()
        for frame in SENTENCE_FRAMES
    ]


def train_byte_level_bpe(vocab_size: int, special_tokens=()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE trained on the synthetic lexicon, the special
    tokens first. Its alphabet is all 256 bytes, so any text tokenizes without `<unk>`. The
    lexicon saturates it below `vocab_size`, so each lexicon word becomes one token
    (contractions two, as in roberta-base)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tiny_bpe_corpus(), trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    return trained["vocab"], [tuple(merge) for merge in trained["merges"]]


def train_roberta_tokenizer(vocab_size: int = 1024) -> RobertaTokenizerFast:
    """The tiny byte-level BPE with roberta-base's special tokens, ids 0..4."""
    vocab, merges = train_byte_level_bpe(vocab_size, ROBERTA_SPECIAL_TOKENS)
    # RobertaTokenizerFast adds roberta-base's pre-tokenizer, decoder and `<s> ... </s>` template.
    return RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=TINY_TEXT_MAX_TOKENS)


def train_whisper_tokenizer(vocab_size: int = 1024) -> WhisperTokenizer:
    """The tiny byte-level BPE with Whisper's special tokens and timestamps after it, as in
    the multilingual Whisper models."""
    vocab, merges = train_byte_level_bpe(vocab_size)
    vocab["<|endoftext|>"] = len(vocab)
    # <|endoftext|> also pads, as in openai/whisper-small (pipelines batch only with a pad token).
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIAL_TOKENS[1:]})
    tokenizer.add_tokens([AddedToken(stamp, special=False, normalized=False) for stamp in WHISPER_TIMESTAMPS])
    return tokenizer


def whisper_generation_config(tokenizer: WhisperTokenizer, max_length: int = TINY_WHISPER_MAX_LENGTH):
    """What WhisperForConditionalGeneration.generate reads to pick language, task and
    timestamps, with the ids of `tokenizer`, laid out as openai/whisper-small's."""
    token_id = tokenizer.convert_tokens_to_ids
    end = token_id("<|endoftext|>")
    return GenerationConfig(
        decoder_start_token_id=token_id("<|startoftranscript|>"),
        bos_token_id=end, eos_token_id=end, pad_token_id=end,
        max_length=max_length,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": token_id(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={task.strip("<|>"): token_id(task) for task in WHISPER_TASK_TOKENS},
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,  # as released checkpoints that say so: clips over 30 s must ask for them
        begin_suppress_tokens=[token_id("Ġ"), end],  # no leading blank or empty transcript
        suppress_tokens=[],
        alignment_heads=[[1, 0], [1, 1]],  # word timestamps: cross-attention heads of the last layer
    )


def tiny_whisper_config(tokenizer: WhisperTokenizer, **overrides) -> WhisperConfig:
    token_id = tokenizer.convert_tokens_to_ids
    end = token_id("<|endoftext|>")
    settings = dict(
        TINY_WHISPER_SIZES,
        vocab_size=len(tokenizer),
        decoder_start_token_id=token_id("<|startoftranscript|>"),
        bos_token_id=end, eos_token_id=end, pad_token_id=end,
        begin_suppress_tokens=[token_id("Ġ"), end],  # WhisperConfig's default holds whisper-small's ids
        attn_implementation="sdpa",
    )
    return WhisperConfig(**{**settings, **overrides})


def save_tiny_whisper(path, seed: int) -> Path:
    """A tiny random Whisper with its processor (80-bin log-mel features of 30 s windows and
    the tiny tokenizer) and generation config, written to `path`."""
    path = Path(path)
    tokenizer = train_whisper_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(tiny_whisper_config(tokenizer))
    model.generation_config = whisper_generation_config(tokenizer)
    model.save_pretrained(path)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    processor.save_pretrained(path)
    return path


def save_whisper_speech_encoder(path, seed: int = 0, **overrides) -> Path:
    """A tiny random WhisperModel (no tokenizer: --wav2vec2 uses its encoder only) with
    WhisperFeatureExtractor, written to `path`; loads like openai/whisper-small as a speech
    encoder. The decoder is one layer over a 64-token vocabulary, never run."""
    path = Path(path)
    settings = dict(TINY_WHISPER_SIZES, decoder_layers=1, vocab_size=64, decoder_start_token_id=1, bos_token_id=0,
                    eos_token_id=0, pad_token_id=0, begin_suppress_tokens=None, suppress_tokens=None,
                    attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperModel(WhisperConfig(**{**settings, **overrides}))
    model.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(path)
    return path


def make_tiny_models(out_dir, seed: int = 0) -> dict[str, Path]:
    """Write `out_dir/wav2vec2`, `out_dir/roberta` and `out_dir/whisper`; the same seed gives
    the same weights."""
    out_dir = Path(out_dir)
    paths = {"wav2vec2": out_dir / "wav2vec2", "roberta": out_dir / "roberta", "whisper": out_dir / "whisper"}
    tokenizer = train_roberta_tokenizer()
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state untouched
        torch.manual_seed(seed)
        wav2vec2 = tiny_speech_encoder("wav2vec2")
        roberta = RobertaModel(tiny_roberta_config(vocab_size=len(tokenizer)))
    save_speech_encoder(wav2vec2, paths["wav2vec2"])
    char_ctc_tokenizer().save_pretrained(paths["wav2vec2"])
    roberta.save_pretrained(paths["roberta"])
    tokenizer.save_pretrained(paths["roberta"])
    # After the others and from its own seeded random state, so adding it changed none of their weights.
    save_tiny_whisper(paths["whisper"], seed)
    return paths
