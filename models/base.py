"""What the three variants share: the model settings, the wav2vec2 audio path
(encoder -> dropout -> valid frames), the CTC head and the CE + alpha * CTC loss."""
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.encoders import encode_conv_features, frame_lengths
from models.fusion import lengths_to_mask, masked_mean


@dataclass
class ModelConfig:
    """Model settings; saved in every checkpoint so it can be rebuilt without flags."""
    run: str = "mmer"
    wav2vec2: str = "facebook/wav2vec2-base"
    alpha: float = 0.1                # weight of the auxiliary CTC loss
    dropout: float = 0.1              # on the encoder's last hidden state and the text embeddings
    num_classes: int = 4
    vocab_size: int = 32              # CTC symbols, <pad>=0 is the blank
    text_dim: int = 768               # RoBERTa hidden size (mmer only)
    specaugment: bool = False
    attn_implementation: str = "sdpa"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EmotionOutput:
    logits: torch.Tensor                      # [B, num_classes]
    frame_lengths: torch.Tensor               # [B] valid audio frames
    ctc_logits: torch.Tensor | None = None    # [B, T_audio, vocab]


class SpeechEmotionModel(nn.Module):
    """Base of the variants. Attribute names are fixed by the published checkpoints."""
    uses_text = False
    has_ctc = False

    def __init__(self, config: ModelConfig, encoder: nn.Module):
        super().__init__()
        self.config = config
        self.wav2vec2 = encoder
        self.audio_dim = encoder.config.hidden_size
        self.dropout = nn.Dropout(config.dropout)
        if self.has_ctc:
            self.ctc_linear = nn.Linear(self.audio_dim, config.vocab_size)

    def encode_audio(self, input_values, sample_lengths, attention_mask=None, conv_features=None):
        """-> dropout(last hidden state) [B, T_audio, D_audio], valid-frame mask [B, T_audio], lengths [B].
        conv_features: the frozen feature encoder's cached output [B, T_audio, C], used instead of
        running it on input_values (see models.encoders.conv_cache_refusal)."""
        lengths = frame_lengths(self.wav2vec2, sample_lengths)
        if conv_features is None:
            hidden = self.wav2vec2(input_values, attention_mask=attention_mask).last_hidden_state
            valid = lengths_to_mask(lengths, hidden.shape[1])
        else:
            valid = lengths_to_mask(lengths, conv_features.shape[1])
            hidden = encode_conv_features(self.wav2vec2, conv_features, valid)
        return self.dropout(hidden), valid, lengths

    def pooled_audio(self, audio_frames, frame_valid):
        return masked_mean(audio_frames, frame_valid)  # [B, D_audio]

    def ctc_head(self, audio_frames):
        return self.ctc_linear(audio_frames) if self.has_ctc else None

    def loss(self, output: EmotionOutput, labels, ctc_targets=None, ctc_target_lengths=None) -> dict:
        """CE + alpha * CTC. With alpha = 0 the CTC term is computed for the log only,
        detached, so the CTC head receives no gradient."""
        ce = F.cross_entropy(output.logits.float(), labels)
        losses = {"ce": ce, "total": ce}
        if self.has_ctc and ctc_targets is not None:
            ctc_logits = output.ctc_logits if self.config.alpha else output.ctc_logits.detach()
            ctc = ctc_loss(ctc_logits, output.frame_lengths, ctc_targets, ctc_target_lengths)
            losses["ctc"] = ctc
            if self.config.alpha:
                losses["total"] = ce + self.config.alpha * ctc
        return losses


def ctc_loss(ctc_logits, frame_lengths, targets, target_lengths):
    """Mean CTC loss (blank = 0) over the true frame counts, in fp32; zero_infinity so an
    utterance whose transcript is longer than its audio cannot poison the step."""
    log_probs = F.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # [T_audio, B, vocab]
    return F.ctc_loss(log_probs, targets, frame_lengths, target_lengths,
                      blank=0, reduction="mean", zero_infinity=True)
