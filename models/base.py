"""What the three variants share: the model settings, the wav2vec2 audio path
(encoder -> dropout -> valid frames), the CTC head and the CE + alpha * CTC loss.

The loss of a micro-batch of B utterances (upstream's scale, see README "The loss"):
    CE_mean + alpha * (2 / B) * sum_i CTC_i
CTC_i is utterance i's CTC loss summed over its frames (not divided by its target length),
so at upstream's micro-batch of 2 this is exactly upstream's CE + alpha * F.ctc_loss(sum),
and the weight of the CTC task does not change with --batch_size, bucketing or DDP shards.
ctc_reduction="mean" divides each CTC_i by its target length instead (F.ctc_loss's "mean").

The 2023 MMER's objectives (models/objectives.py) add, when their weights are not 0,
    + supcon_weight * SupCon(projection(e), labels) + aug_weight * InfoNCE(projection(e), view_projection(e'))
where e is the classifier's input of the utterance and e' that of its augmented view (a second
forward pass in training only); the heads are kept in checkpoints but serve training only."""
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.encoders import encode_conv_features, frame_lengths
from models.fusion import lengths_to_mask
from models.objectives import (TEMPERATURE, AudioPooling, ProjectionHead, augmentation_contrastive_loss,
                               supervised_contrastive_loss)


@dataclass
class ModelConfig:
    """Model settings; saved in every checkpoint so it can be rebuilt without flags."""
    run: str = "mmer"
    wav2vec2: str = "facebook/wav2vec2-base"
    alpha: float = 0.1                # weight of the auxiliary CTC loss
    ctc_reduction: str = "sum"        # sum: upstream's per-utterance sums; mean: divided by target length
    dropout: float = 0.1              # on the encoder's last hidden state and the text embeddings
    num_classes: int = 4
    labels: dict | None = None        # the label set (labels.LabelSet.to_dict); None: IEMOCAP's 4 classes
    vocab_size: int = 32              # CTC symbols, <pad>=0 is the blank
    text_dim: int = 768               # RoBERTa hidden size (mmer only)
    specaugment: bool = False
    attn_implementation: str = "sdpa"
    # the 2023 configuration (run.py --preset mmer2023); these defaults are the 2022 one
    pooling: str = "mean"             # of the audio frames: mean, max, attention, statistics
    supcon_weight: float = 0.0        # supervised contrastive loss over the batch
    aug_weight: float = 0.0           # contrastive loss between each utterance and its augmented view
    temperature: float = TEMPERATURE  # of both contrastive losses
    max_audio_samples: int | None = None  # audio cut to this many samples (2023: 210,000, about 13 s)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label_set(self):
        """The classes in logit order and the labels they came from (labels.LabelSet)."""
        from labels import LabelSet  # models stay importable without the corpus modules
        return LabelSet.from_dict(self.labels)


@dataclass
class AudioFrames:
    """The encoded audio every variant starts from."""
    frames: torch.Tensor       # [B, T_audio, D_audio] dropout(last hidden state)
    valid: torch.Tensor        # [B, T_audio] bool, True on valid frames
    lengths: torch.Tensor      # [B] valid frame counts


@dataclass
class EmotionOutput:
    logits: torch.Tensor                      # [B, num_classes]
    frame_lengths: torch.Tensor               # [B] valid audio frames
    ctc_logits: torch.Tensor | None = None    # [B, T_audio, vocab]
    embedding: torch.Tensor | None = None     # [B, classifier input]: what the contrastive heads read


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
        self.audio_pooling = AudioPooling(config.pooling, self.audio_dim)  # parameters only for attention
        self.pooled_dim = self.audio_pooling.output_dim

    def add_objective_heads(self, embedding_dim: int) -> None:
        """The 2023 projection heads, after every other layer (the 2022 layers draw the same
        initial weights with or without them): `projection` for the utterance (SupCon and the
        anchor side of the augmentation loss), `view_projection` for its view."""
        if self.config.supcon_weight or self.config.aug_weight:
            self.projection = ProjectionHead(embedding_dim, self.audio_dim, self.audio_dim)
        if self.config.aug_weight:
            self.view_projection = ProjectionHead(embedding_dim, self.audio_dim, self.audio_dim)

    def forward(self, input_values=None, sample_lengths=None, attention_mask=None, text=None, text_lengths=None,
                conv_features=None) -> EmotionOutput:
        """Audio [B, samples] (or its cached conv features) and, for mmer, text features
        [B, T_text, D_text] -> logits, and CTC logits for the variants with a CTC head."""
        return self.classify(self.encode_audio(input_values, sample_lengths, attention_mask, conv_features),
                             text, text_lengths)

    def classify(self, audio: "AudioFrames", text=None, text_lengths=None) -> EmotionOutput:
        raise NotImplementedError

    def encode_audio(self, input_values, sample_lengths, attention_mask=None, conv_features=None) -> AudioFrames:
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
        return AudioFrames(self.dropout(hidden), valid, lengths)

    def pooled_audio(self, audio_frames, frame_valid):
        return self.audio_pooling(audio_frames, frame_valid)  # [B, D_audio], statistics [B, 2 D_audio]

    def ctc_head(self, audio_frames):
        return self.ctc_linear(audio_frames) if self.has_ctc else None

    def loss(self, output: EmotionOutput, labels, ctc_targets=None, ctc_target_lengths=None,
             view: EmotionOutput | None = None) -> dict:
        """CE + alpha * CTC, CTC on upstream's scale (module docstring), + the 2023 contrastive
        terms where their weights are set (`view`: the output of the utterances' augmented views).
        With alpha = 0 the CTC term is computed for the log only, detached, so the CTC head
        receives no gradient."""
        ce = F.cross_entropy(output.logits.float(), labels)
        losses = {"ce": ce, "total": ce}
        losses.update(self.contrastive_losses(output, labels, view))
        for name, weight in (("supcon", self.config.supcon_weight), ("aug", self.config.aug_weight)):
            if name in losses:
                losses["total"] = losses["total"] + weight * losses[name]
        if self.has_ctc and ctc_targets is not None:
            ctc_logits = output.ctc_logits if self.config.alpha else output.ctc_logits.detach()
            per_utterance = ctc_loss(ctc_logits, output.frame_lengths, ctc_targets, ctc_target_lengths,
                                     self.config.ctc_reduction)
            ctc = per_utterance.mean() * (UPSTREAM_MICRO_BATCH if self.config.ctc_reduction == "sum" else 1)
            losses["ctc"] = ctc
            if self.config.alpha:
                losses["total"] = ce + self.config.alpha * ctc
        return losses


    def contrastive_losses(self, output: EmotionOutput, labels, view: EmotionOutput | None) -> dict:
        """The 2023 terms whose weight is set: SupCon of the batch's projections, and the
        augmentation InfoNCE between each utterance and its view (needs `view`)."""
        losses = {}
        if not (self.config.supcon_weight or self.config.aug_weight):
            return losses
        anchors = self.projection(output.embedding)
        if self.config.supcon_weight:
            losses["supcon"] = supervised_contrastive_loss(anchors, labels, self.config.temperature)
        if self.config.aug_weight:
            if view is None:
                raise ValueError("aug_weight > 0 needs the augmented views' output (view=...)")
            losses["aug"] = augmentation_contrastive_loss(anchors, self.view_projection(view.embedding),
                                                          self.config.temperature)
        return losses


UPSTREAM_MICRO_BATCH = 2  # upstream summed the CTC loss over micro-batches of 2 utterances
CTC_REDUCTIONS = ("sum", "mean")


def ctc_loss(ctc_logits, frame_lengths, targets, target_lengths, reduction: str = "sum"):
    """CTC loss (blank = 0) of each utterance over its true frame count, in fp32 -> [B]:
    summed over the frames ("sum", upstream's), or divided by the target length ("mean").
    zero_infinity, so an utterance whose transcript is longer than its audio cannot poison the step."""
    if reduction not in CTC_REDUCTIONS:
        raise ValueError(f"ctc_reduction {reduction!r}: choose one of {', '.join(CTC_REDUCTIONS)}")
    log_probs = F.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # [T_audio, B, vocab]
    per_utterance = F.ctc_loss(log_probs, targets, frame_lengths, target_lengths,
                               blank=0, reduction="none", zero_infinity=True)
    if reduction == "mean":
        per_utterance = per_utterance / target_lengths.clamp(min=1).to(per_utterance.dtype)
    return per_utterance
