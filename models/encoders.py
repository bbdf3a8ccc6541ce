"""Speech encoder loading (wav2vec 2.0, or any transformers speech encoder with the
same outputs: HuBERT, WavLM, data2vec-audio; Whisper's encoder through whisper_encoder.py) and
the audio-input settings its feature extractor fixes."""
import logging
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, HubertModel, WhisperFeatureExtractor

from .whisper_encoder import CONV_STRIDE, HOP_LENGTH, WhisperSpeechEncoder

log = logging.getLogger(__name__)
# Encoders whose forward after the feature encoder encode_conv_features reproduces (tests compare).
CACHEABLE_ENCODERS = ("wav2vec2", "hubert", "wavlm")
# Encoders whose positional embedding is a stack of convolutions (data2vec-audio's: 5 in the released
# models): the second sees what the first made of the masked padding, so no padded batch is exact.
STACKED_POSITION_ENCODERS = ("data2vec-audio",)
WHISPER = "whisper"
ENCODER_FIX = ("pass a local folder written by save_pretrained or a hub name such as facebook/wav2vec2-base "
               "with network access")


@dataclass(frozen=True)
class AudioInputSpec:
    """How raw audio must be prepared for the encoder, read from its feature-extractor config."""
    sampling_rate: int = 16000
    do_normalize: bool = True        # zero-mean unit-variance per utterance
    padding_value: float = 0.0
    return_attention_mask: bool = False  # group-norm encoders (wav2vec2-base) get no mask


def audio_input_spec(name_or_path: str) -> AudioInputSpec:
    """Read the settings from the encoder's saved feature extractor."""
    try:
        extractor = AutoFeatureExtractor.from_pretrained(name_or_path)
    except OSError as err:
        raise OSError(f"{name_or_path}: no feature extractor found ({err}); pass a folder written by "
                      "save_pretrained (with preprocessor_config.json) or a hub name with network access") from err
    # WhisperFeatureExtractor keeps no do_normalize (its __call__ defaults to False): Whisper hears the wave as it is
    whisper = isinstance(extractor, WhisperFeatureExtractor)
    return AudioInputSpec(
        sampling_rate=int(extractor.sampling_rate),
        do_normalize=False if whisper else bool(getattr(extractor, "do_normalize", True)),
        padding_value=float(getattr(extractor, "padding_value", 0.0)),
        return_attention_mask=bool(getattr(extractor, "return_attention_mask", False)),
    )


def load_speech_encoder(name_or_path: str, pretrained: bool = True, specaugment: bool = False,
                        attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The encoder with its convolutional feature encoder frozen and SpecAugment off unless
    asked. pretrained=False builds the architecture only (weights come from a checkpoint). A
    Whisper checkpoint gives its encoder alone (WhisperSpeechEncoder, which takes raw samples)."""
    # apply_spec_augment (not mask_time_prob) turns it off, so masked_spec_embed stays a
    # parameter and checkpoints written with the encoder's own config still load strictly.
    config = encoder_config(name_or_path, apply_spec_augment=bool(specaugment))
    try:
        encoder = _instantiate(name_or_path, config, pretrained, attn_implementation)
    except OSError as err:
        raise OSError(f"{name_or_path}: cannot load the speech encoder ({err}); {ENCODER_FIX}") from err
    return prepare_encoder(encoder)


def speech_encoder_from_config(settings: dict, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The encoder's architecture from its saved configuration (a dict, as `config.to_dict()` gives
    it, e.g. the one a shared model folder carries), without weights: they come with the model's."""
    settings = dict(settings)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    if config.model_type == WHISPER:
        config._attn_implementation = attn_implementation
        return prepare_encoder(WhisperSpeechEncoder(config))
    return prepare_encoder(_instantiate(config.model_type, config, False, attn_implementation))


def encoder_config(name_or_path: str, **overrides):
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        raise OSError(f"{name_or_path}: cannot read the speech encoder's config ({err}); {ENCODER_FIX}") from err
    # Set, not passed to from_pretrained, which drops what a config class does not declare:
    # data2vec-audio's has no apply_spec_augment, yet its model reads one (default on).
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _instantiate(name_or_path, config, pretrained: bool, attn_implementation: str):
    """SDPA attention where the architecture has it; some (WavLM) only have eager attention,
    which computes the same function more slowly."""
    if config.model_type == WHISPER:
        if pretrained:
            return WhisperSpeechEncoder.from_pretrained(name_or_path, config, attn_implementation)
        config._attn_implementation = attn_implementation
        return WhisperSpeechEncoder(config)
    try:
        if pretrained:
            return AutoModel.from_pretrained(name_or_path, config=config, attn_implementation=attn_implementation)
        return AutoModel.from_config(config, attn_implementation=attn_implementation)
    except ValueError as err:
        if attn_implementation == "eager" or "attn" not in str(err).lower() and "sdpa" not in str(err).lower():
            raise
        log.info("%s: %s attention unavailable, using eager attention", name_or_path, attn_implementation)
        return _instantiate(name_or_path, config, pretrained, "eager")


def prepare_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """Freeze the convolutional feature encoder (its output is then a fixed function of the
    audio). HuBERT has no freeze_feature_encoder(), but all share the feature encoder's own (Whisper's:
    its two convolutions over the log-mel spectrogram)."""
    encoder.feature_extractor._freeze_parameters()
    return encoder


def sample_counts(input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The true sample counts [B] of a batch of audio [B, samples]: its attention mask's sums, or,
    without a mask, every row whole (written so that an exported graph keeps the batch dynamic)."""
    if attention_mask is not None:
        return attention_mask.sum(dim=-1)
    return torch.ones_like(input_values[:, 0], dtype=torch.long) * input_values.shape[1]


def frame_lengths(encoder: torch.nn.Module, sample_lengths: torch.Tensor) -> torch.Tensor:
    """Valid frame counts from the encoder's own length formula on the true sample counts."""
    return encoder._get_feat_extract_output_lengths(sample_lengths).to(torch.long)


def frame_rate_of(config, sampling_rate: int = 16000) -> float:
    """Encoder frames per second of audio: the sampling rate over the total stride (50 for
    wav2vec2-base's 320 samples, and for Whisper's 10 ms mel hop halved by its convolution)."""
    if config.model_type == WHISPER:
        return sampling_rate / (HOP_LENGTH * CONV_STRIDE)
    stride = 1
    for step in config.conv_stride:
        stride *= step
    return sampling_rate / stride


def min_samples(name_or_path: str) -> int:
    return min_samples_of(encoder_config(name_or_path))


def min_samples_of(config) -> int:
    """The shortest input (samples at the encoder's rate) that gives one frame: the receptive
    field of the convolutional feature encoder (400 samples, 25 ms, for wav2vec2-base). Whisper
    pads every input to 30 s, so one sample gives its one covering frame."""
    if config.model_type == WHISPER:
        return 1
    needed = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        needed = (needed - 1) * stride + kernel
    return needed


def padding_is_exact(config, spec: AudioInputSpec) -> bool:
    """Whether the encoder gives an utterance inside a padded batch exactly what it gives it
    alone: with a layer-norm feature encoder (each frame normalised on its own) and an attention
    mask over the padded samples. wav2vec2-base's group norm runs over the whole padded length
    and it takes no mask, so its padded batches move the probabilities (by up to 0.18 on the
    upstream fixture); evaluation then batches only utterances of equal length. Whisper pads every
    utterance with silence to 30 s anyway, so zero padding in a batch changes nothing (with or
    without a mask), as long as the wave is not normalised over its padding. data2vec-audio's
    layer-norm feature encoder is exact, but its stacked positional convolutions are not."""
    if config.model_type == WHISPER:
        return not spec.do_normalize
    if config.model_type in STACKED_POSITION_ENCODERS:
        return False
    return bool(spec.return_attention_mask) and getattr(config, "feat_extract_norm", None) == "layer"


def conv_cache_refusal(config, spec: AudioInputSpec) -> str | None:
    """Why the frozen convolutional feature encoder's output cannot be cached (None: it can).
    The cache holds each utterance's output computed alone (unpadded) and runs the rest of the
    encoder with a frame mask (encode_conv_features), so a cached batch gives each utterance
    exactly what scoring it alone gives, for every wav2vec2, HuBERT and WavLM: also for
    wav2vec2-base's group norm, whose uncached padded batches are not exact (padding_is_exact)."""
    if config.model_type not in CACHEABLE_ENCODERS:
        return f"is a {config.model_type} model (encode_conv_features mirrors {', '.join(CACHEABLE_ENCODERS)} only)"
    if getattr(config, "add_adapter", False):
        return "has an adapter after its encoder, which encode_conv_features does not run"
    return None


def conv_cache_changes_training(config, spec: AudioInputSpec) -> bool:
    """Whether training with the cache differs from training without it: not where padded
    batches are exact anyway (layer-norm feature encoder and an attention mask); for
    wav2vec2-base (group norm, no mask) the uncached path lets padding into the group norm and
    attention, the cached one masks it."""
    return not padding_is_exact(config, spec)


@torch.no_grad()
def conv_features(encoder: torch.nn.Module, input_values: torch.Tensor) -> torch.Tensor:
    """The frozen convolutional feature encoder: [B, samples] -> [B, frames, channels]."""
    return encoder.feature_extractor(input_values).transpose(1, 2)


def encode_conv_features(encoder: torch.nn.Module, features: torch.Tensor, frame_valid: torch.Tensor):
    """The rest of the encoder's forward, from its convolutional features [B, frames, channels]
    and valid-frame mask [B, frames] -> last hidden state [B, frames, hidden]. The same steps
    as transformers' Wav2Vec2Model/HubertModel/WavLMModel.forward after `feature_extractor`
    for the encoders conv_cache_refusal accepts (no adapter; tests compare the two)."""
    hidden = encoder.feature_projection(features)
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # wav2vec2 and WavLM also return the normed input
    # SpecAugment: transformers' HubertModel.forward draws its masks without the attention mask
    spec_augment_mask = {} if isinstance(encoder, HubertModel) else {"attention_mask": frame_valid}
    hidden = encoder._mask_hidden_states(hidden, **spec_augment_mask)
    return encoder.encoder(hidden, attention_mask=frame_valid)[0]
