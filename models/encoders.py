"""Speech encoder loading (wav2vec 2.0, or any transformers speech encoder with the
same outputs: HuBERT, WavLM) and the audio-input settings its feature extractor fixes."""
import logging
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

log = logging.getLogger(__name__)


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
    return AudioInputSpec(
        sampling_rate=int(extractor.sampling_rate),
        do_normalize=bool(getattr(extractor, "do_normalize", True)),
        padding_value=float(getattr(extractor, "padding_value", 0.0)),
        return_attention_mask=bool(getattr(extractor, "return_attention_mask", False)),
    )


def load_speech_encoder(name_or_path: str, pretrained: bool = True, specaugment: bool = False,
                        attn_implementation: str = "sdpa") -> torch.nn.Module:
    """The encoder with its convolutional feature encoder frozen and SpecAugment off unless
    asked. pretrained=False builds the architecture only (weights come from a checkpoint)."""
    # apply_spec_augment (not mask_time_prob) turns it off, so masked_spec_embed stays a
    # parameter and checkpoints written with the encoder's own config still load strictly.
    overrides = {"apply_spec_augment": bool(specaugment)}
    try:
        config = AutoConfig.from_pretrained(name_or_path, **overrides)
        encoder = _instantiate(name_or_path, config, pretrained, attn_implementation)
    except OSError as err:
        raise OSError(f"{name_or_path}: cannot load the speech encoder ({err}); pass a local folder written "
                      "by save_pretrained or a hub name such as facebook/wav2vec2-base with network access") from err
    return prepare_encoder(encoder)


def _instantiate(name_or_path, config, pretrained: bool, attn_implementation: str):
    """SDPA attention where the architecture has it; some (WavLM) only have eager attention,
    which computes the same function more slowly."""
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
    audio). HuBERT has no freeze_feature_encoder(), but all three share the feature encoder's own."""
    encoder.feature_extractor._freeze_parameters()
    return encoder


def frame_lengths(encoder: torch.nn.Module, sample_lengths: torch.Tensor) -> torch.Tensor:
    """Valid frame counts from the encoder's own length formula on the true sample counts."""
    return encoder._get_feat_extract_output_lengths(sample_lengths).to(torch.long)
