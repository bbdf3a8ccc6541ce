"""Dimensional emotion and imbalanced classes: the attribute head, the concordance correlation
coefficient (CCC) and its loss, focal and soft-target cross-entropy, and the attribute scale.

The convention: attributes (arousal, valence, dominance) are learned on [0, 1], each corpus's
rating scale mapped there by normalise_attributes (IEMOCAP 1-5, MSP-Podcast 1-7: x -> (x - low) /
(high - low)), as the MSP-Podcast Challenge baseline does (utils/dataset/dataset.py, ADV_EmoSet);
AttributeHead gives unbounded numbers on that scale (no sigmoid, as the baseline's head), and
denormalise_attributes maps them back to the corpus's scale for reporting. A missing rating is
NaN: every loss here leaves that row out of that attribute only."""
import torch
import torch.nn.functional as F
from torch import nn

from .errors import MMERError
from .settings import ATTRIBUTES, DIM_LOSSES as ATTRIBUTE_LOSSES  # noqa: F401 (the names this module has always had)

DENOMINATOR_FLOOR = 1e-12  # CCC's 0/0 (constant, equal predictions and ratings) reads 0, with a zero gradient


class DimensionalError(MMERError, ValueError):
    """Attribute values, scales or loss settings that cannot be used; the message says the fix."""


class AttributeHead(nn.Module):
    """One linear layer from pooled features [B, in_dim] to one number per attribute [B, A]
    (the order of `attributes`), on the normalised [0, 1] scale but not clamped to it (see the
    module docstring): the MSP-Podcast baseline's regression output on pooled features."""

    def __init__(self, in_dim: int, attributes=ATTRIBUTES, dropout: float = 0.0):
        super().__init__()
        if not attributes:
            raise DimensionalError("AttributeHead needs at least one attribute: name them, e.g. "
                                   f"{ATTRIBUTES}")
        self.attributes = tuple(attributes)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(in_dim, len(self.attributes))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))  # [B, A]


def _check_pair(pred: torch.Tensor, true: torch.Tensor) -> None:
    if pred.shape != true.shape or pred.dim() != 2:
        raise DimensionalError(f"predictions {tuple(pred.shape)} and ratings {tuple(true.shape)} must both be "
                               "[rows, attributes]; give one column per attribute, in the same order")


def ccc(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Lin's (1989) concordance correlation coefficient of each column [A]:
    2 cov(p, t) / (var p + var t + (mean p - mean t)^2), population moments, over the rows whose
    rating is not NaN (per column); NaN for a column with no rated row. Differentiable in pred."""
    _check_pair(pred, true)
    rated = ~torch.isnan(true)
    weights = rated.to(pred.dtype)
    count = weights.sum(0)
    n = count.clamp(min=1)
    true = torch.where(rated, true, torch.zeros_like(true)).to(pred.dtype)
    pred = pred * weights  # rows without a rating get no weight (and no gradient)
    mean_p, mean_t = pred.sum(0) / n, true.sum(0) / n
    dev_p, dev_t = (pred - mean_p) * weights, (true - mean_t) * weights
    var_p, var_t = (dev_p ** 2).sum(0) / n, (dev_t ** 2).sum(0) / n
    cov = (dev_p * dev_t).sum(0) / n
    denominator = (var_p + var_t + (mean_p - mean_t) ** 2).clamp(min=DENOMINATOR_FLOOR)
    value = 2 * cov / denominator
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))


def _mean_over_rated(per_column: torch.Tensor) -> torch.Tensor:
    """Mean of the columns that had a rated row (the caller checks that one had)."""
    return per_column[~torch.isnan(per_column)].mean()


def ccc_loss(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """1 - the mean CCC over the attributes with a rated row (the MSP-Podcast baseline trains
    on 1 - CCC of each attribute, summed: three times this); a batch with no rating at all is a
    zero that keeps the graph."""
    if torch.isnan(true).all():
        return pred.sum() * 0.0
    return 1.0 - _mean_over_rated(ccc(pred, true))


def mse(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each column [A] over its rated rows; NaN for a column with none."""
    _check_pair(pred, true)
    rated = ~torch.isnan(true)
    weights = rated.to(pred.dtype)
    count = weights.sum(0)
    squared = (pred - torch.where(rated, true, torch.zeros_like(true)).to(pred.dtype)) ** 2 * weights
    value = squared.sum(0) / count.clamp(min=1)
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))


def attribute_loss(pred: torch.Tensor, true: torch.Tensor, kind: str = "ccc") -> torch.Tensor:
    """The attribute loss: "ccc" (1 - mean CCC) or "mse" (mean over attributes of each one's MSE;
    with every row rated, scikit-learn's mean_squared_error of the two [rows, A] arrays)."""
    if kind not in ATTRIBUTE_LOSSES:
        raise DimensionalError(f"unknown attribute loss {kind!r}: choose one of {', '.join(ATTRIBUTE_LOSSES)}")
    if kind == "ccc":
        return ccc_loss(pred, true)
    if torch.isnan(true).all():
        return pred.sum() * 0.0
    return _mean_over_rated(mse(pred, true))


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Lin et al.'s (2017) focal loss, -w_y (1 - p_y)^gamma log p_y, averaged with the weights as
    F.cross_entropy(weight=...) averages (sum / sum of the rows' w_y), so gamma = 0 is exactly
    the (weighted) cross-entropy. Rows with a label < 0 (left out) count for nothing; a batch
    with none left is a zero that keeps the graph."""
    if gamma < 0:
        raise DimensionalError(f"focal loss gamma must be >= 0 (0 is cross-entropy), not {gamma}")
    kept = labels >= 0
    if not kept.any():
        return logits.sum() * 0.0
    logits, labels = logits[kept], labels[kept]
    log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)  # [B] log p_y
    per_row = -((1 - log_p.exp()) ** gamma) * log_p
    row_weight = torch.ones_like(per_row) if weight is None else weight.to(per_row)[labels]
    return (row_weight * per_row).sum() / row_weight.sum()


def soft_target_loss(logits: torch.Tensor, target_probs: torch.Tensor,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against the annotators' vote fractions [B, K]: sum_c w_c q_c (-log p_c) per
    row, summed and divided by sum of w_c q_c over the batch, so that one-hot targets give exactly
    F.cross_entropy(weight=...) of the hard labels (torch's own soft-target form divides by B
    instead). Rows whose targets hold a NaN (no votes) count for nothing."""
    if logits.shape != target_probs.shape:
        raise DimensionalError(f"logits {tuple(logits.shape)} and vote fractions {tuple(target_probs.shape)} must "
                               "have the same shape: one column per class, in the model's class order")
    voted = ~torch.isnan(target_probs).any(dim=1)
    if not voted.any():
        return logits.sum() * 0.0
    logits, targets = logits[voted], target_probs[voted].to(logits.dtype)
    if weight is not None:
        targets = targets * weight.to(logits)
    return -(targets * F.log_softmax(logits, dim=-1)).sum() / targets.sum()


def _check_scale(low: float, high: float) -> None:
    if not high > low:
        raise DimensionalError(f"attribute scale low={low}, high={high}: high must be above low "
                               "(IEMOCAP rates 1-5, MSP-Podcast 1-7; set --attribute_range low,high)")


def normalise_attributes(values, low: float, high: float):
    """A corpus's ratings on [low, high] -> [0, 1]: (x - low) / (high - low); NaN stays NaN.
    Works on tensors, numbers, and anything with arithmetic (numpy arrays)."""
    _check_scale(low, high)
    return (values - low) / (high - low)


def denormalise_attributes(values, low: float, high: float):
    """The inverse of normalise_attributes: [0, 1] -> the corpus's [low, high]."""
    _check_scale(low, high)
    return values * (high - low) + low
