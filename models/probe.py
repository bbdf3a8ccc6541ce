"""The frozen-encoder protocol of SUPERB and EmoBox: a learnable weighted sum of a frozen
encoder's cached hidden states (s3prl's Featurizer) and, for `--run probe`, a small head.

LayerFeaturizer replaces the fine-tuned encoder in every variant trained with --data_path_ssl;
Probe is the baseline itself:
    superb  (EmoBox's downstream, and emotion2vec's released one): Linear(D, 256) -> ReLU -> mean over the
            valid frames -> Linear(256, classes); SUPERB's own has no ReLU (docs/BASELINES.md)
    linear  (a linear probe of pooled features): mean over the valid frames -> Linear(D, classes)"""
import torch
import torch.nn.functional as F
from torch import nn

from .base import AudioFrames, EmotionOutput, SpeechEmotionModel
from .fusion import masked_mean
from .settings import PROBE_HEADS, PROBE_HIDDEN


class LayerFeaturizer(nn.Module):
    """Hidden states [B, T, states, D] -> one frame sequence [B, T, D]: softmax(weights)-weighted
    sum, the weights learnable and initialised equal (s3prl's Featurizer), optionally each state
    layer-normalised first (without affine parameters, as s3prl's); or one fixed state ("last",
    or the state at `index`)."""

    def __init__(self, states: int, mode: str = "learnable", layer_norm: bool = False, index: int | None = None):
        super().__init__()
        self.states, self.mode, self.layer_norm = states, mode, layer_norm
        if mode == "learnable":
            self.weights = nn.Parameter(torch.zeros(states))
            self.index = None
        else:
            self.index = states - 1 if mode == "last" else int(index if index is not None else mode)
            if not 0 <= self.index < states:
                raise ValueError(f"layer_weights {mode}: the cache holds {states} hidden states (0 to {states - 1})")

    def layer_weights(self) -> torch.Tensor:
        """[states] the weight of each state, summing to 1."""
        if self.index is None:
            return torch.softmax(self.weights.float(), dim=0)
        return F.one_hot(torch.tensor(self.index), self.states).float()

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        states = states.float()                                          # the cache may hold float16
        if self.index is not None:
            chosen = states[:, :, self.index]                            # [B, T, D]
            return F.layer_norm(chosen, chosen.shape[-1:]) if self.layer_norm else chosen
        if self.layer_norm:
            states = F.layer_norm(states, states.shape[-1:])
        return torch.matmul(states.transpose(-1, -2), self.layer_weights().to(states.device))   # [B, T, D]

    def extra_repr(self) -> str:
        return f"states={self.states}, mode={self.mode!r}, layer_norm={self.layer_norm}"


def featurizer_for(config) -> LayerFeaturizer:
    """The featurizer a configuration asks for; --layer_weights K names the encoder's hidden state K,
    found among the cached ones (config.ssl_layers; a folder of another tool: the K-th array row)."""
    index = None
    if config.layer_weights not in ("learnable", "last"):
        wanted = int(config.layer_weights)
        kept = list(config.ssl_layers) if config.ssl_layers else list(range(config.ssl_states))
        if wanted not in kept:
            raise ValueError(f"--layer_weights {wanted}: the cache holds the hidden states {kept}")
        index = kept.index(wanted)
    return LayerFeaturizer(config.ssl_states, config.layer_weights, config.probe_layer_norm, index)


class Probe(SpeechEmotionModel):
    """--run probe: the frozen encoder's weighted hidden states and a small head (module docstring)."""

    def __init__(self, config, encoder=None):
        super().__init__(config, encoder)
        if config.probe_head not in PROBE_HEADS:
            raise ValueError(f"probe_head {config.probe_head!r}: choose one of {', '.join(PROBE_HEADS)}")
        if config.probe_head == "superb":
            self.projector = nn.Linear(self.audio_dim, PROBE_HIDDEN)
            pooled_dim = PROBE_HIDDEN
        else:
            pooled_dim = self.audio_dim
        self.classifier = nn.Linear(pooled_dim, config.num_classes)
        self.add_objective_heads(pooled_dim)

    def classify(self, audio: AudioFrames, text=None, text_lengths=None) -> EmotionOutput:
        frames = audio.frames                                            # [B, T, D]
        if self.config.probe_head == "superb":
            frames = torch.relu(self.projector(frames))                  # [B, T, 256]
        pooled = masked_mean(frames, audio.valid)                        # [B, 256 or D]
        return EmotionOutput(logits=self.classifier(pooled), frame_lengths=audio.lengths, embedding=pooled)
