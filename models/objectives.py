"""The auxiliary objectives of the Interspeech 2023 MMER (upstream src/run_iemocap.py):
a self-contrastive loss over the batch's labels, a contrastive loss between each utterance and
its augmented view, the projection heads that feed them, and the audio-frame pooling variants.

Two forms of each loss (ModelConfig.contrastive):
- "upstream" (the default): upstream's FuseModel.forward exactly. Raw dot products of the
  projections (no normalisation); the self-contrastive term takes log_softmax over each row of
  p p^T (the anchor itself included), divides it by the temperature afterwards, and averages
  minus the entries of every same-class pair (self pairs included); the augmentation term is
  cross-entropy((p q^T) / t, i -> i) with q the views' projections.
- "normalised": Khosla et al.'s (2020) supervised contrastive loss and InfoNCE on L2-normalised
  projections, the temperature dividing the cosine similarities (differs from upstream).

Under torchrun a process holds one shard of the batch; gather_pool collects every process's
projections (with their gradient), so that each anchor meets the whole batch as in one process,
and each loss returns this process's share such that the gradients DDP averages are those of
the whole batch's loss (see Pool). Nothing here knows about the models."""
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .fusion import masked_mean
from .settings import POOLING_METHODS, TEMPERATURE

STD_FLOOR = 1e-6          # statistics pooling: variance floor, so a one-frame utterance has a finite gradient


# ---------------------------------------------------------------- the batch every anchor meets
@dataclass
class Pool:
    """The utterances this process's b anchors are compared with: all N of the batch (in one
    process, the anchors themselves; under torchrun, every process's shard, gather_pool).

    A loss over the whole batch, sum_i term_i / normaliser, is returned as this process's
    share of it, sum over its anchors / normaliser * N / b: DDP averages the processes'
    gradients, and the training loop weighs each process's loss by b * world / N (its
    DistributedBucketSampler scale), so the average is the gradient of the whole batch's loss.
    In one process that share is the loss itself."""
    features: torch.Tensor    # [N, D] projections of every utterance of the batch
    labels: torch.Tensor      # [N]
    valid: torch.Tensor       # [N] bool: False on rows that pad a shorter shard, or a shard with loss scale 0
    rows: torch.Tensor        # [b] where this process's anchors sit among the N

    @classmethod
    def local(cls, features: torch.Tensor, labels: torch.Tensor) -> "Pool":
        n = features.shape[0]
        return cls(features, labels.reshape(-1), torch.ones(n, dtype=torch.bool, device=features.device),
                   torch.arange(n, device=features.device))

    def share(self, total: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
        """This process's share of a batch loss whose anchors' terms sum to `total` here."""
        n_valid = self.valid.sum().clamp(min=1).to(total.dtype)
        return total / normaliser.clamp(min=1).to(total.dtype) * n_valid / max(len(self.rows), 1)

    @property
    def anchor_labels(self) -> torch.Tensor:
        return self.labels[self.rows]


def gather_pool(features: torch.Tensor, labels: torch.Tensor, valid: bool = True) -> Pool:
    """Pool of the whole batch: this process's rows alone, or, under torch.distributed, every
    process's rows (gradient flowing back to their owners through the all-gather). `valid`:
    whether this process's rows count (a shard with loss scale 0 is a stand-in)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return Pool.local(features, labels)
    from torch.distributed.nn.functional import all_gather
    world, rank, b = dist.get_world_size(), dist.get_rank(), features.shape[0]
    shape = torch.tensor([b, int(valid)], device=features.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    sizes, flags = [int(s[0]) for s in shapes], [bool(s[1]) for s in shapes]
    width = max(sizes)
    padded = F.pad(features, (0, 0, 0, width - b))
    padded_labels = F.pad(labels.reshape(-1), (0, width - b), value=-1)
    label_parts = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(label_parts, padded_labels)
    row = torch.arange(width, device=features.device)
    valid_rows = torch.cat([(row < size) & flag for size, flag in zip(sizes, flags)])
    return Pool(torch.cat(all_gather(padded)), torch.cat(label_parts), valid_rows,
                rank * width + torch.arange(b, device=features.device))


def stand_in_loss(loss: torch.Tensor) -> torch.Tensor:
    """A stand-in shard's contrastive term (utils/distributed.py: a copy of the batch's first
    utterance, loss scale 0): exactly 0, yet computed from its pool, so that its backward runs
    the all-gather's backward collective as every other process does (without it they wait
    forever). A select, not `loss * 0`: the stand-in's own rows are no keys of the pool, so its
    augmentation term is inf, and inf * 0 is NaN; the select passes back a gradient of exactly
    0, which stays finite through every node of the loss."""
    return torch.where(torch.zeros((), dtype=torch.bool, device=loss.device), loss, torch.zeros_like(loss))


def _masked_logits(logits: torch.Tensor, pool: Pool) -> torch.Tensor:
    """Keys that are no utterance of the batch leave every softmax (-inf)."""
    return logits.masked_fill(~pool.valid[None, :], float("-inf"))


# ---------------------------------------------------------------- upstream's forms
def upstream_self_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE,
                                   pool: Pool | None = None) -> torch.Tensor:
    """Upstream's cl_self_loss (src/run_iemocap.py:271-284): with p the projections [B, D],
    L = log_softmax(p p^T, over each row) / t, and P the (anchor, key) pairs of the same class,
    self pairs included: -sum_P L / |P|. No normalisation of p; the temperature only scales
    the loss. A batch whose utterances are all of different classes has only the self pairs,
    whose log-probabilities are near 0 once self-similarity dominates."""
    pool = pool or Pool.local(features, labels)
    _check_rows(features, labels, "upstream_self_contrastive_loss")
    with _fp32(features):
        anchors = features.float()
        log_prob = torch.log_softmax(_masked_logits(anchors @ pool.features.float().T, pool), dim=-1) / temperature
        positive = (labels.reshape(-1)[:, None] == pool.labels[None, :]) & pool.valid[None, :]
        total = -torch.where(positive, log_prob, 0.0).sum()
        kept = pool.labels[pool.valid]
        pairs = (kept[:, None] == kept[None, :]).sum()                    # |P| over the whole batch
        return pool.share(total, pairs)


def upstream_augmentation_loss(anchors: torch.Tensor, views: torch.Tensor, temperature: float = TEMPERATURE,
                               pool: Pool | None = None) -> torch.Tensor:
    """Upstream's cl_loss (src/run_iemocap.py:291-300, 336): cross-entropy of (p q^T) / t with
    targets 0..B-1, p the utterances' projections and q their views' (raw dot products, one
    direction: utterance -> views). `pool`: the views of the whole batch (gather_pool)."""
    if pool is None and anchors.shape != views.shape:
        raise ValueError(f"upstream_augmentation_loss: anchors {tuple(anchors.shape)} and views "
                         f"{tuple(views.shape)} must have the same shape (one view per utterance)")
    pool = pool or Pool.local(views, torch.zeros(views.shape[0], dtype=torch.long, device=views.device))
    with _fp32(anchors):
        logits = _masked_logits(anchors.float() @ pool.features.float().T, pool) / temperature
        total = F.cross_entropy(logits, pool.rows, reduction="sum")
        return pool.share(total, pool.valid.sum())


# ---------------------------------------------------------------- the normalised forms
def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor,
                                temperature: float = TEMPERATURE, pool: Pool | None = None) -> torch.Tensor:
    """Supervised contrastive loss, the "L_out" form of Khosla et al. 2020 (eq. 2): the
    "normalised" form, which differs from upstream's (upstream_self_contrastive_loss).

    features [B, D] (L2-normalised here), labels [B]. For each anchor i with a positive
    (same label, j != i): -1/|P(i)| * sum_p log( exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t) ),
    averaged over those anchors. An anchor alone in its class has no positive and adds no
    term of its own, but still serves as a negative in the others' denominators (so it gets
    gradient). A batch where no anchor has a positive returns an exact 0 that is still
    attached to the graph (zero gradient, never NaN). Upstream instead takes raw dot products,
    keeps the anchor in its own denominator and among its positives, applies the temperature
    after the log-softmax and averages over (anchor, positive) pairs.
    """
    _check_rows(features, labels, "supervised_contrastive_loss")
    if pool is None:
        pool = Pool.local(features, labels)
    with _fp32(features):
        z = F.normalize(features.float(), dim=-1)
        keys = F.normalize(pool.features.float(), dim=-1)
        return _supcon(z, keys, labels.reshape(-1), pool, temperature)


def _supcon(z, keys, labels, pool: Pool, temperature):
    """The loss of unit-norm fp32 anchors z [b, D] against the pool's unit-norm keys [N, D]."""
    self_pair = torch.zeros(z.shape[0], keys.shape[0], dtype=torch.bool, device=z.device)
    self_pair[torch.arange(z.shape[0], device=z.device), pool.rows] = True
    logits = _masked_logits((z @ keys.T) / temperature, pool)                # [b, N]
    # The anchor leaves its own denominator. A finite fill (not -inf) keeps every step finite,
    # backward included, for a batch of one; exp(min - rowmax) is exactly 0 whenever another
    # column exists, so the value is the same as with -inf.
    logits = logits.masked_fill(self_pair, torch.finfo(logits.dtype).min)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)         # logsumexp subtracts the row max
    positive = (labels[:, None] == pool.labels[None, :]) & ~self_pair & pool.valid[None, :]
    positive_count = positive.sum(dim=1)
    mean_log_prob = torch.where(positive, log_prob, 0.0).sum(dim=1) / positive_count.clamp(min=1)
    has_positive = (positive_count > 0).to(z.dtype)
    kept = pool.labels[pool.valid]
    anchors_with_positive = ((kept[:, None] == kept[None, :]).sum(dim=1) > 1).sum()
    # Masked sums, not boolean indexing: no host sync, and an exact 0 when no anchor qualifies.
    return pool.share(-(mean_log_prob * has_positive).sum(), anchors_with_positive)


def augmentation_contrastive_loss(anchors: torch.Tensor, views: torch.Tensor,
                                  temperature: float = TEMPERATURE, pool: Pool | None = None) -> torch.Tensor:
    """InfoNCE between each utterance and its augmented view, the other utterances' views
    being the negatives, on L2-normalised projections (the "normalised" form; upstream takes
    raw dot products, upstream_augmentation_loss): mean over i of
    cross-entropy(cos(anchor_i, view_j) / t over j, target i). One direction only (anchors ->
    views), as upstream. Both anchors and views receive gradient. A batch of one gives 0.
    """
    if pool is None and anchors.shape != views.shape:
        raise ValueError(f"augmentation_contrastive_loss: anchors {tuple(anchors.shape)} and views "
                         f"{tuple(views.shape)} must have the same shape (one view per utterance)")
    pool = pool or Pool.local(views, torch.zeros(views.shape[0], dtype=torch.long, device=views.device))
    with _fp32(anchors):
        a = F.normalize(anchors.float(), dim=-1)
        v = F.normalize(pool.features.float(), dim=-1)
        logits = _masked_logits(a @ v.T, pool) / temperature                # positives at the anchors' rows
        return pool.share(F.cross_entropy(logits, pool.rows, reduction="sum"), pool.valid.sum())


SELF_CONTRASTIVE = {"upstream": upstream_self_contrastive_loss, "normalised": supervised_contrastive_loss}
AUGMENTATION_CONTRASTIVE = {"upstream": upstream_augmentation_loss, "normalised": augmentation_contrastive_loss}


def _check_rows(features, labels, name):
    if labels.reshape(-1).shape[0] != features.shape[0]:
        raise ValueError(f"{name}: {features.shape[0]} feature rows but {labels.reshape(-1).shape[0]} labels")


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
