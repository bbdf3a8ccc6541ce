"""Every hidden state of a speech encoder (the embedding output, then each layer's), stacked: the
one function that feature extraction (dataio/ssl_features.py) and prediction share, for
wav2vec2, HuBERT, WavLM, data2vec-audio and Whisper's encoder (whisper_encoder.py) alike."""
from typing import NamedTuple

import torch

from .encoders import frame_lengths, sample_counts


class LayerStates(NamedTuple):
    states: torch.Tensor   # [B, states, T, D], T the batch's longest frame count
    frames: torch.Tensor   # [B] each utterance's valid frame count


def state_count(config) -> int:
    """Hidden states an encoder gives: its embedding output and one per layer."""
    return int(config.num_hidden_layers) + 1  # Whisper's config maps num_hidden_layers to encoder_layers


def resolve_layers(layers, count: int) -> list[int]:
    """`layers` (None or "all": every state; else indices, negative from the end) as indices in
    0..count-1, in the order given. ValueError names the valid range."""
    if layers is None or layers == "all":
        return list(range(count))
    bad = [i for i in layers if not -count <= int(i) < count]
    if bad:
        raise ValueError(f"hidden state(s) {bad} out of range: this encoder has {count} (0 = the embedding "
                         f"output, {count - 1} = the last layer; negative counts from the end)")
    return [int(i) % count for i in layers]


@torch.no_grad()
def hidden_states(encoder: torch.nn.Module, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  layers=None) -> LayerStates:
    """Audio [B, samples] (normalised as the encoder's feature extractor says) -> LayerStates:
    the hidden states [B, states, T, D] that transformers' output_hidden_states gives, in order
    (layers: indices into them, default all), and the frame counts [B]. In eval mode (no
    dropout, no SpecAugment), without gradients; the encoder's mode is restored after."""
    was_training = encoder.training
    encoder.eval()
    try:
        output = encoder(input_values, attention_mask=attention_mask, output_hidden_states=True)
    finally:
        encoder.train(was_training)
    every = output.hidden_states
    chosen = [every[i] for i in resolve_layers(layers, len(every))]
    frames = frame_lengths(encoder, sample_counts(input_values, attention_mask))
    return LayerStates(torch.stack(chosen, dim=1), frames)   # [B, states, T, D]
