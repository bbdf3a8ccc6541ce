"""The auxiliary objectives of the Interspeech 2023 MMER (upstream src/run_iemocap.py):
a supervised contrastive loss over the batch, an InfoNCE loss between each utterance and its
augmented view, the projection heads that feed them, and the audio-frame pooling variants.

Self-contained building blocks: nothing here knows about the models; the caller passes the
1536-wide classifier input (pooled audio ; projected fused text) through the heads.
Both losses run in fp32 on L2-normalised features, so their scale is fixed by the temperature."""
import torch
import torch.nn.functional as F
from torch import nn

from models.fusion import masked_mean

TEMPERATURE = 0.07        # upstream's self.temperature for both losses
POOLING_METHODS = ("max", "mean", "attention", "statistics")
STD_FLOOR = 1e-6          # statistics pooling: variance floor, so a one-frame utterance has a finite gradient


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor,
                                temperature: float = TEMPERATURE) -> torch.Tensor:
    """Supervised contrastive loss, the "L_out" form of Khosla et al. 2020 (eq. 2).

    features [B, D] (L2-normalised here), labels [B]. For each anchor i with a positive
    (same label, j != i): -1/|P(i)| * sum_p log( exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t) ),
    averaged over those anchors. An anchor alone in its class has no positive and adds no
    term of its own, but still serves as a negative in the others' denominators (so it gets
    gradient). A batch where no anchor has a positive returns an exact 0 that is still
    attached to the graph (zero gradient, never NaN).

    How it differs from upstream's inline loss (FuseModel.forward in src/run_iemocap.py):
    upstream takes raw dot products of the projections (no normalisation), keeps the anchor
    itself in the softmax denominator and counts it as one of its own positives, applies the
    temperature after the log-softmax (which only multiplies the loss by 1/t instead of
    sharpening the similarities), and averages over all (anchor, positive) pairs, so anchors of
    large classes weigh more. Here the temperature divides the cosine similarities first.
    """
    labels = labels.reshape(-1)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"supervised_contrastive_loss: {features.shape[0]} feature rows but "
                         f"{labels.shape[0]} labels")
    with _fp32(features):
        return _supcon(F.normalize(features.float(), dim=-1), labels, temperature)


def _supcon(z, labels, temperature):
    """The loss on unit-norm fp32 features z [B, D]."""
    batch = z.shape[0]
    self_pair = torch.eye(batch, dtype=torch.bool, device=z.device)
    logits = (z @ z.T) / temperature                                         # [B, B]
    # The anchor leaves its own denominator. A finite fill (not -inf) keeps every step finite,
    # backward included, for a batch of one; exp(min - rowmax) is exactly 0 whenever another
    # column exists, so the value is the same as with -inf.
    logits = logits.masked_fill(self_pair, torch.finfo(logits.dtype).min)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)         # logsumexp subtracts the row max
    positive = (labels[:, None] == labels[None, :]) & ~self_pair
    positive_count = positive.sum(dim=1)
    mean_log_prob = torch.where(positive, log_prob, 0.0).sum(dim=1) / positive_count.clamp(min=1)
    has_positive = (positive_count > 0).to(z.dtype)
    # Masked sums, not boolean indexing: no host sync, and an exact 0 when no anchor qualifies.
    return -(mean_log_prob * has_positive).sum() / has_positive.sum().clamp(min=1.0)


def augmentation_contrastive_loss(anchors: torch.Tensor, views: torch.Tensor,
                                  temperature: float = TEMPERATURE) -> torch.Tensor:
    """InfoNCE between each utterance and its augmented view, the other utterances' views
    being the negatives: mean over i of cross-entropy(cos(anchor_i, view_j) / t over j, target i).

    One direction only (anchors -> views), as upstream: FuseModel.forward builds the logits
    (original projections) @ (augmented projections)^T / t and takes one cross-entropy with
    targets 0..B-1; it is not symmetrised. Both anchors and views receive gradient. Unlike
    upstream's inline version (raw dot products) the features are L2-normalised here, as in
    upstream's own unused src/infonce_loss.py:info_nce. A batch of one gives log(1) = 0.
    """
    if anchors.shape != views.shape:
        raise ValueError(f"augmentation_contrastive_loss: anchors {tuple(anchors.shape)} and views "
                         f"{tuple(views.shape)} must have the same shape (one view per utterance)")
    with _fp32(anchors):
        a = F.normalize(anchors.float(), dim=-1)
        v = F.normalize(views.float(), dim=-1)
        logits = (a @ v.T) / temperature                                    # [B, B], positives on the diagonal
        return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def _fp32(tensor):
    """Autocast off: under bf16 autocast the similarity matmul would otherwise run in bf16."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


class ProjectionHead(nn.Sequential):
    """Linear - GELU - Linear, from the classifier's input to the contrastive space.
    Parameter names `0.weight, 0.bias, 2.weight, 2.bias` as upstream's nn.Sequential heads
    (`orgin_linear_change.*` for the utterance, `augment_linear_change.*` for its view; their
    GELU is the exact erf form, nn.GELU()'s default)."""

    def __init__(self, in_dim: int = 1536, hidden: int = 768, out_dim: int = 768):
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


# ---- pooling of audio frames over the valid frames; every variant is padding-exact ----

def masked_max(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Max of [B, T, D] over the valid positions -> [B, D]. Padding is -inf, so it never wins
    whatever its value, and gets no gradient. A row with no valid position gives 0."""
    filled = values.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    pooled = filled.amax(dim=1)
    return torch.where(valid.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


def masked_statistics(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[mean ; std] of [B, T, D] over the valid positions -> [B, 2D]. The std is the biased
    (population, divide by N) one, defined for a one-frame utterance; the variance is floored
    at STD_FLOOR so its square root keeps a finite gradient. Upstream's 'stats' option used
    torch.std (unbiased) over all frames, padding included."""
    mean = masked_mean(values, valid)
    variance = masked_mean((values - mean.unsqueeze(1)) ** 2, valid)
    return torch.cat([mean, variance.clamp(min=STD_FLOOR).sqrt()], dim=-1)


def attention_weights(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax of [B, T] scores over the valid positions; padding weighs exactly 0 (and a row
    with no valid position weighs 0 everywhere)."""
    scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) * valid.to(scores.dtype)


class AudioPooling(nn.Module):
    """Pools audio frames [B, T, D] with their valid-frame mask [B, T] to one vector per utterance.

    method: "max" (upstream's default), "mean", "attention" or "statistics" ([mean ; std]).
    output_dim is D, or 2D for statistics. Only attention has parameters: `score.weight` [1, D]
    and `score.bias` [1] (a Linear(D, 1)); with attention_hidden=h the scorer is upstream's
    Linear(D, h) - GELU - Linear(h, 1), named `score.0.*` and `score.2.*` (upstream:
    `output_attention_audio.0.*` / `.2.*` with h = D // 2)."""

    def __init__(self, method: str = "max", dim: int = 768, attention_hidden: int | None = None):
        super().__init__()
        if method not in POOLING_METHODS:
            raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLING_METHODS)}")
        self.method = method
        self.output_dim = 2 * dim if method == "statistics" else dim
        if method == "attention":
            self.score = (nn.Linear(dim, 1) if attention_hidden is None else
                          nn.Sequential(nn.Linear(dim, attention_hidden), nn.GELU(), nn.Linear(attention_hidden, 1)))

    def forward(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.method == "max":
            return masked_max(frames, valid)
        if self.method == "mean":
            return masked_mean(frames, valid)
        if self.method == "statistics":
            return masked_statistics(frames, valid)
        weights = attention_weights(self.score(frames).squeeze(-1), valid)   # [B, T]
        return (weights.unsqueeze(-1) * frames).sum(dim=1)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, output_dim={self.output_dim}"


def build_audio_pooling(method: str = "max", dim: int = 768, attention_hidden: int | None = None) -> AudioPooling:
    """The pooling named by a flag (--pooling), at the encoder's hidden size."""
    return AudioPooling(method, dim, attention_hidden)
