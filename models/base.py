"""What the three variants share: the model settings, the wav2vec2 audio path
(encoder -> dropout -> valid frames), the CTC head, the 2023 projection heads and the loss.

The loss of a micro-batch of B utterances (upstream's scale, see README "The loss"):
    CE_mean + alpha * CTC + supcon_weight * SelfCon + aug_weight * Aug
with CTC = (2 / B) * sum_i CTC_i, CTC_i utterance i's CTC loss summed over its frames (not
divided by its target length): at upstream's micro-batch of 2 exactly upstream's
F.ctc_loss(reduction="sum"), and a weight that does not change with --batch_size, bucketing or
DDP shards. ctc_reduction="batch_sum" is upstream's sum as it is at any batch size; "mean"
divides each CTC_i by its target length (F.ctc_loss's "mean").

The 2023 terms (models/objectives.py) compare the projections of the classifier's input e: the
self-contrastive term over the batch's labels (projection(e)), the augmentation term between
each utterance and its augmented view (projection(e) against view_projection(e') of the view,
which runs through the model in its own pass of the same forward call, as upstream's).
With the three weights at 0.1 this is upstream's 2023 loss
cls_loss + 0.1 * (cl_loss + cl_self_loss + ctc_loss) (src/run_iemocap.py:423)."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dimensional import AttributeHead, attribute_loss, focal_loss, soft_target_loss
from .encoders import encode_conv_features, frame_lengths
from .fusion import lengths_to_mask
from .objectives import (AUGMENTATION_CONTRASTIVE, SELF_CONTRASTIVE, AudioPooling, ProjectionHead, gather_pool,
                         stand_in_loss)
from .settings import (AUDIO_DROPOUT, CATEGORICAL_LOSSES, CLASS_WEIGHTS, CONTRASTIVE_FORMS, CTC_REDUCTIONS,
                       DIM_LOSSES, TASKS, ATTRIBUTES, TEXT_POOLING_METHODS, UPSTREAM_MICRO_BATCH, ModelConfig)


@dataclass
class AudioFrames:
    """The encoded audio every variant starts from."""
    frames: torch.Tensor       # [B, T_audio, D_audio] what fusion and pooling read (audio_dropout="all": dropped out)
    valid: torch.Tensor        # [B, T_audio] bool, True on valid frames
    lengths: torch.Tensor      # [B] valid frame counts
    ctc_frames: torch.Tensor | None = None  # [B, T_audio, D_audio] the CTC head's input: dropout(last hidden state)

    def __post_init__(self):
        if self.ctc_frames is None:
            self.ctc_frames = self.frames


@dataclass
class EmotionOutput:
    logits: torch.Tensor                      # [B, num_classes]
    frame_lengths: torch.Tensor               # [B] valid audio frames
    ctc_logits: torch.Tensor | None = None    # [B, T_audio, vocab]
    embedding: torch.Tensor | None = None     # [B, classifier input]: what the contrastive heads read
    projection: torch.Tensor | None = None    # [B, D] the 2023 head's projection of the embedding
    view: "EmotionOutput | None" = None       # the augmented views' output (training with aug_weight)
    attributes: torch.Tensor | None = None    # [B, A] the attribute head's output, on the normalised [0, 1] scale


class SpeechEmotionModel(nn.Module):
    """Base of the variants. Attribute names are fixed by the published checkpoints."""
    uses_text = False
    has_ctc = False

    def __init__(self, config: ModelConfig, encoder: nn.Module | None):
        """encoder: the speech encoder, fine-tuned; for a model on cached hidden states
        (config.ssl_states) None while training, or the frozen encoder that computes those
        states from audio for prediction (attach_ssl_encoder)."""
        super().__init__()
        check_choices(config)
        self.config = config
        if config.ssl_states:
            from .probe import featurizer_for   # probe.py builds on this module
            self.featurizer = featurizer_for(config)
            self.audio_dim = config.ssl_width
            self.wav2vec2 = None
            if encoder is not None:
                self.attach_ssl_encoder(encoder)
        else:
            self.wav2vec2 = encoder
            self.audio_dim = encoder.config.hidden_size
        self.dropout = nn.Dropout(config.dropout)
        if self.has_ctc:
            self.ctc_linear = nn.Linear(self.audio_dim, config.vocab_size)
        self.audio_pooling = AudioPooling(config.pooling, self.audio_dim)  # parameters only for attention
        self.pooled_dim = self.audio_pooling.output_dim
        # --class_weights: one weight per class, set by training from the fold's labels (not saved: a
        # training setting, recomputed on resume); None: every class weighs the same
        self.register_buffer("class_weight", None, persistent=False)

    def add_objective_heads(self, embedding_dim: int) -> None:
        """The 2023 projection heads, after every other layer (the 2022 layers draw the same
        initial weights with or without them): `projection` for the utterance (both terms;
        upstream's orgin_linear_change), `view_projection` for its view (augment_linear_change)."""
        if self.config.supcon_weight or self.config.aug_weight:
            self.projection = ProjectionHead(embedding_dim, self.audio_dim, self.audio_dim)
        if self.config.aug_weight:
            self.view_projection = ProjectionHead(embedding_dim, self.audio_dim, self.audio_dim)
        if self.config.task != "categorical":   # last: the categorical layers draw the same weights with or without it
            self.attribute_head = AttributeHead(embedding_dim, self.config.attributes or ATTRIBUTES)

    def attach_ssl_encoder(self, encoder: nn.Module) -> None:
        """Give a model on cached hidden states the frozen encoder that computes them from audio
        (prediction, exports): it is not trained, and its weights are the encoder's own."""
        encoder.requires_grad_(False)
        self.wav2vec2 = encoder.eval()

    def forward(self, input_values=None, sample_lengths=None, attention_mask=None, text=None, text_lengths=None,
                conv_features=None, views: dict | None = None, ssl_states=None) -> EmotionOutput:
        """Audio [B, samples] (or its cached conv features) and, for mmer, text features
        [B, T_text, D_text] -> logits, CTC logits for the variants with a CTC head, and the
        projection of the classifier's input where a 2023 head exists. views: the model inputs
        of the utterances' augmented views, run in their own pass (upstream's second
        forward_encoder call, so their padding never meets the originals'); their output is
        `.view`, projected by view_projection. One call for both, as DDP needs."""
        output = self.classify(self.encode_audio(input_values, sample_lengths, attention_mask, conv_features,
                                                 ssl_states), text, text_lengths)
        if hasattr(self, "projection"):
            output.projection = self.projection(output.embedding)
        if hasattr(self, "attribute_head"):   # the attributes from the embedding the classifier reads
            output.attributes = self.attribute_head(output.embedding)          # [B, A]
        if views is not None:
            view = self.classify(self.encode_audio(views["input_values"], views["sample_lengths"],
                                                   views.get("attention_mask"), views.get("conv_features"),
                                                   views.get("ssl_states")),
                                 views.get("text"), views.get("text_lengths"))
            if hasattr(self, "view_projection"):
                view.projection = self.view_projection(view.embedding)
            output.view = view
        return output

    def classify(self, audio: "AudioFrames", text=None, text_lengths=None) -> EmotionOutput:
        raise NotImplementedError

    def encode_audio(self, input_values, sample_lengths, attention_mask=None, conv_features=None,
                     ssl_states=None) -> AudioFrames:
        """-> the frames fusion and pooling read, the CTC head's input (dropout(last hidden state)),
        the valid-frame mask [B, T_audio] and lengths [B]. conv_features: the frozen feature
        encoder's cached output [B, T_audio, C], used instead of running it on input_values
        (see models.encoders.conv_cache_refusal). ssl_states: a frozen encoder's cached hidden
        states [B, T_audio, states, D] (then sample_lengths holds their frame counts), weighed
        by the featurizer instead of the fine-tuned encoder's last hidden state."""
        if self.config.ssl_states:
            if ssl_states is None:   # prediction: the attached frozen encoder computes them
                ssl_states, sample_lengths = self.ssl_states_of(input_values, sample_lengths, attention_mask)
            lengths = sample_lengths.to(torch.long)
            hidden = self.featurizer(ssl_states)                          # [B, T_audio, D]
            valid = lengths_to_mask(lengths, hidden.shape[1])
            dropped = self.dropout(hidden)
            return AudioFrames(hidden if self.config.audio_dropout == "ctc" else dropped, valid, lengths, dropped)
        lengths = frame_lengths(self.wav2vec2, sample_lengths)
        if conv_features is None:
            hidden = self.wav2vec2(input_values, attention_mask=attention_mask).last_hidden_state
            valid = lengths_to_mask(lengths, hidden.shape[1])
        else:
            valid = lengths_to_mask(lengths, conv_features.shape[1])
            hidden = encode_conv_features(self.wav2vec2, conv_features, valid)
        dropped = self.dropout(hidden)
        return AudioFrames(hidden if self.config.audio_dropout == "ctc" else dropped, valid, lengths, dropped)

    def ssl_states_of(self, input_values, sample_lengths, attention_mask=None):
        """The cached states' equivalent from audio, by the attached frozen encoder: -> hidden
        states [B, T_audio, states, D] (those config.ssl_layers names) and frame counts [B]."""
        if self.wav2vec2 is None:
            raise ValueError("a model on cached hidden states scores audio only with its frozen encoder: "
                             "attach_ssl_encoder(encoder) first")
        from .hidden_states import hidden_states
        states, _ = hidden_states(self.wav2vec2, input_values, attention_mask, self.config.ssl_layers)
        return states.transpose(1, 2), frame_lengths(self.wav2vec2, sample_lengths)

    def pooled_audio(self, audio_frames, frame_valid):
        return self.audio_pooling(audio_frames, frame_valid)  # [B, D_audio], statistics [B, 2 D_audio]

    def ctc_head(self, audio: AudioFrames):
        return self.ctc_linear(audio.ctc_frames) if self.has_ctc else None

    def loss(self, output: EmotionOutput, labels, ctc_targets=None, ctc_target_lengths=None,
             rows_count: bool = True, attributes=None, soft_targets=None) -> dict:
        """CE + alpha * CTC (upstream's scale, module docstring) + the 2023 contrastive terms
        whose weights are set. With alpha = 0 the CTC term is computed for the log only,
        detached, so the CTC head receives no gradient. rows_count: False for a stand-in shard
        (utils/distributed.py, loss scale 0), which still takes part in gathering the batch and
        in the gathered pools' backward, its contrastive terms exactly 0 (objectives.stand_in_loss).
        Dimensional emotion (config.task): "dim" is the attribute loss of the normalised ratings
        `attributes` [B, A]; under "dimensional" it replaces the categorical term (no "ce"),
        under "both" it adds dim_weight times it. "ce" is the categorical term in the form the
        config names (cross-entropy, focal, or against the vote fractions `soft_targets`)."""
        losses = {}
        if self.config.task != "dimensional":
            losses["ce"] = self.categorical_loss(output.logits.float(), labels, soft_targets)
            losses["total"] = losses["ce"]
        if self.config.task != "categorical":
            if attributes is None:
                raise ValueError(f"task {self.config.task!r} needs the batch's attribute ratings (attributes)")
            losses["dim"] = attribute_loss(output.attributes.float(), attributes.to(output.attributes.device),
                                           self.config.dim_loss)
            weighted = losses["dim"] if self.config.task == "dimensional" else self.config.dim_weight * losses["dim"]
            losses["total"] = losses["total"] + weighted if "total" in losses else weighted
        if self.has_ctc and ctc_targets is not None:
            ctc_logits = output.ctc_logits if self.config.alpha else output.ctc_logits.detach()
            per_utterance = ctc_loss(ctc_logits, output.frame_lengths, ctc_targets, ctc_target_lengths,
                                     self.config.ctc_reduction)
            losses["ctc"] = batch_ctc(per_utterance, self.config.ctc_reduction)
            if self.config.alpha:
                losses["total"] = losses["total"] + self.config.alpha * losses["ctc"]
        for name, value in self.contrastive_losses(output, labels, rows_count).items():
            losses[name] = value
            losses["total"] = losses["total"] + getattr(self.config, f"{name}_weight") * value
        return losses

    def categorical_loss(self, logits, labels, soft_targets=None):
        """The classifier's loss: cross-entropy (F.cross_entropy, as upstream), focal, or the
        cross-entropy against the annotators' vote fractions; each weighted by class_weight when
        it is set (--class_weights). Rows with a label < 0 (a label the label set leaves out, kept
        for the attributes under task "both") count for nothing; a batch of only those is a zero
        that keeps the graph."""
        kept = labels >= 0
        if not kept.all():
            if not kept.any():
                return logits.sum() * 0.0
            logits, labels = logits[kept], labels[kept]
            soft_targets = soft_targets[kept.to(soft_targets.device)] if soft_targets is not None else None
        if self.config.soft_targets:
            if soft_targets is None:
                raise ValueError("soft_targets is set: the batch needs its vote fractions (soft_targets)")
            return soft_target_loss(logits, soft_targets.to(logits.device), self.class_weight)
        if self.config.loss == "focal":
            return focal_loss(logits, labels, self.config.focal_gamma, self.class_weight)
        if self.class_weight is None:
            return F.cross_entropy(logits, labels)
        return F.cross_entropy(logits, labels, weight=self.class_weight)

    def contrastive_losses(self, output: EmotionOutput, labels, rows_count: bool = True) -> dict:
        """The 2023 terms whose weight is set, in the form config.contrastive names: the
        self-contrastive term of the batch's projections, and the augmentation term between
        each utterance and its view (needs output.view). Under torchrun they span every
        process's shard (models.objectives.gather_pool)."""
        losses = {}
        if not (self.config.supcon_weight or self.config.aug_weight):
            return losses
        anchors = output.projection
        if self.config.supcon_weight:
            pool = gather_pool(anchors, labels, rows_count)
            losses["supcon"] = SELF_CONTRASTIVE[self.config.contrastive](anchors, labels, self.config.temperature,
                                                                          pool=pool)
        if self.config.aug_weight:
            if output.view is None:
                raise ValueError("aug_weight > 0 needs the augmented views' output (forward(..., views=...))")
            pool = gather_pool(output.view.projection, labels, rows_count)
            losses["aug"] = AUGMENTATION_CONTRASTIVE[self.config.contrastive](anchors, output.view.projection,
                                                                               self.config.temperature, pool=pool)
        if not rows_count:  # a stand-in shard: in step with the others (its pool's backward too), adding nothing
            losses = {name: stand_in_loss(value) for name, value in losses.items()}
        return losses


def check_choices(config: ModelConfig) -> None:
    """Settings outside their choices are refused by name (checkpoints and flags alike)."""
    for name, choices in (("ctc_reduction", CTC_REDUCTIONS), ("audio_dropout", AUDIO_DROPOUT),
                          ("text_pooling", TEXT_POOLING_METHODS), ("contrastive", CONTRASTIVE_FORMS),
                          ("task", TASKS), ("dim_loss", DIM_LOSSES), ("loss", CATEGORICAL_LOSSES),
                          ("class_weights", CLASS_WEIGHTS)):
        if getattr(config, name) not in choices:
            raise ValueError(f"{name} {getattr(config, name)!r}: choose one of {', '.join(choices)}")


def ctc_loss(ctc_logits, frame_lengths, targets, target_lengths, reduction: str = "sum"):
    """CTC loss (blank = 0) of each utterance over its true frame count, in fp32 -> [B]:
    summed over the frames ("sum", "batch_sum": upstream's), or divided by the target length
    ("mean"). zero_infinity, so an utterance whose transcript is longer than its audio cannot
    poison the step."""
    if reduction not in CTC_REDUCTIONS:
        raise ValueError(f"ctc_reduction {reduction!r}: choose one of {', '.join(CTC_REDUCTIONS)}")
    log_probs = F.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # [T_audio, B, vocab]
    per_utterance = F.ctc_loss(log_probs, targets, frame_lengths, target_lengths,
                               blank=0, reduction="none", zero_infinity=True)
    if reduction == "mean":
        per_utterance = per_utterance / target_lengths.clamp(min=1).to(per_utterance.dtype)
    return per_utterance


def batch_ctc(per_utterance: torch.Tensor, reduction: str) -> torch.Tensor:
    """The micro-batch's CTC term from its utterances' losses: sum, (2 / B) x the sum (upstream's
    value at its micro-batch of 2, whatever B), or the mean of the length-normalised losses."""
    if reduction == "batch_sum":
        return per_utterance.sum()
    return per_utterance.mean() * (UPSTREAM_MICRO_BATCH if reduction == "sum" else 1)
