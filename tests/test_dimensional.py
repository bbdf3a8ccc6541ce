"""Dimensional emotion and imbalanced classes (issue 30's building blocks): CCC, its loss and the
reporting metrics against formulas written out here (and scipy / scikit-learn), missing ratings
left out per attribute, focal and soft-target losses against cross-entropy and hand values, class
weights against hand counts, the balanced sampler's statistics, and the attribute scale."""
import math
import statistics
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr
from sklearn.metrics import mean_squared_error
from sklearn.utils.class_weight import compute_class_weight

from dataio.sampling import BalancedBatchSampler
from models.dimensional import (ATTRIBUTES, AttributeHead, attribute_loss, ccc, ccc_loss, denormalise_attributes,
                                focal_loss, normalise_attributes, soft_target_loss)
from models.errors import MMERError
from training.imbalance import attribute_range, class_counts, class_weights
from training.metrics import attribute_metrics


def ccc_by_hand(pred, true):
    """Lin (1989) with population moments, one column, plain Python."""
    mean_p, mean_t = statistics.fmean(pred), statistics.fmean(true)
    cov = sum((p - mean_p) * (t - mean_t) for p, t in zip(pred, true)) / len(pred)
    return 2 * cov / (statistics.pvariance(pred) + statistics.pvariance(true) + (mean_p - mean_t) ** 2)


def _ratings(rows=24, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.uniform(0, 1, (rows, 3))
    pred = 0.6 * true + rng.normal(0.1, 0.2, (rows, 3))
    return pred, true


# ---------------------------------------------------------------- CCC and its loss
def test_ccc_matches_lins_formula_by_hand():
    pred, true = _ratings()
    got = ccc(torch.tensor(pred), torch.tensor(true))
    expected = [ccc_by_hand(pred[:, a].tolist(), true[:, a].tolist()) for a in range(3)]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    reported = attribute_metrics({n: true[:, a] for a, n in enumerate(ATTRIBUTES)},
                                 {n: pred[:, a] for a, n in enumerate(ATTRIBUTES)})
    assert [reported[f"ccc_{n}"] for n in ATTRIBUTES] == pytest.approx(expected, rel=1e-12)
    assert reported["ccc_mean"] == pytest.approx(sum(expected) / 3, rel=1e-12)


def test_ccc_of_identical_is_one_and_of_a_shifted_copy_is_five_sevenths():
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    assert ccc(x, x).item() == pytest.approx(1.0, abs=1e-15)
    # var = 1.25 each, cov = 1.25, mean difference 1: 2.5 / (1.25 + 1.25 + 1) = 5/7
    assert ccc(x + 1, x).item() == pytest.approx(5 / 7, abs=1e-15)
    reported = attribute_metrics({"arousal": [1, 2, 3, 4]}, {"arousal": [2, 3, 4, 5]})
    assert reported["ccc_arousal"] == pytest.approx(5 / 7, abs=1e-15)
    assert reported["pearson_arousal"] == pytest.approx(1.0, abs=1e-15)  # Pearson ignores the shift


def test_ccc_loss_is_one_minus_the_hand_mean_and_its_gradient_flows():
    pred, true = _ratings()
    pred_t = torch.tensor(pred, requires_grad=True)
    loss = ccc_loss(pred_t, torch.tensor(true))
    hand = 1 - statistics.fmean(ccc_by_hand(pred[:, a].tolist(), true[:, a].tolist()) for a in range(3))
    assert loss.item() == pytest.approx(hand, rel=1e-12)
    loss.backward()
    assert torch.isfinite(pred_t.grad).all() and pred_t.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda p: ccc_loss(p, torch.tensor(true[:6])), (torch.tensor(pred[:6], requires_grad=True),))
    assert attribute_loss(torch.tensor(pred), torch.tensor(true), "ccc").item() == pytest.approx(hand, rel=1e-12)


def test_mse_and_pearson_match_scikit_learn_and_scipy():
    pred, true = _ratings()
    assert attribute_loss(torch.tensor(pred), torch.tensor(true), "mse").item() == pytest.approx(
        mean_squared_error(true, pred), rel=1e-12)
    reported = attribute_metrics({n: true[:, a] for a, n in enumerate(ATTRIBUTES)},
                                 {n: pred[:, a] for a, n in enumerate(ATTRIBUTES)})
    for a, name in enumerate(ATTRIBUTES):
        assert reported[f"mse_{name}"] == pytest.approx(mean_squared_error(true[:, a], pred[:, a]), rel=1e-12)
        assert reported[f"pearson_{name}"] == pytest.approx(pearsonr(true[:, a], pred[:, a])[0], rel=1e-10)
        assert reported[f"n_{name}"] == len(true)


def test_reporting_says_nan_where_a_statistic_is_undefined_and_names_a_missing_prediction():
    reported = attribute_metrics({"valence": [1.0, 2.0, 3.0]}, {"valence": [2.0, 2.0, 2.0]})
    assert math.isnan(reported["pearson_valence"])  # a constant prediction has no correlation
    assert reported["ccc_valence"] == 0.0  # but its concordance is defined: cov = 0 over 2/3 + 0 + 0
    assert reported["mse_valence"] == pytest.approx(2 / 3, abs=1e-15)
    with pytest.raises(ValueError, match="no predictions of arousal"):
        attribute_metrics({"valence": [1.0], "arousal": [2.0]}, {"valence": [1.0]})


def test_missing_ratings_are_left_out_per_attribute():
    pred, true = _ratings()
    true[[1, 5, 9], 0] = np.nan          # arousal missing on three rows, the others rated there
    true[:, 2] = np.nan                  # dominance never rated
    rated = ~np.isnan(true[:, 0])
    pred_t = torch.tensor(pred, requires_grad=True)
    values = ccc(pred_t, torch.tensor(true))
    assert values[0].item() == pytest.approx(ccc_by_hand(pred[rated, 0].tolist(), true[rated, 0].tolist()), rel=1e-12)
    assert values[1].item() == pytest.approx(ccc_by_hand(pred[:, 1].tolist(), true[:, 1].tolist()), rel=1e-12)
    assert math.isnan(values[2].item())
    loss = ccc_loss(pred_t, torch.tensor(true))
    assert loss.item() == pytest.approx(1 - (values[0].item() + values[1].item()) / 2, rel=1e-12)
    loss.backward()
    assert torch.isfinite(pred_t.grad).all()
    assert (pred_t.grad[[1, 5, 9], 0] == 0).all() and (pred_t.grad[:, 2] == 0).all()
    assert (pred_t.grad[rated, 0] != 0).all()
    expected_mse = (mean_squared_error(true[rated, 0], pred[rated, 0]) + mean_squared_error(true[:, 1], pred[:, 1])) / 2
    assert attribute_loss(torch.tensor(pred), torch.tensor(true), "mse").item() == pytest.approx(expected_mse, rel=1e-12)
    reported = attribute_metrics({"arousal": true[:, 0], "dominance": true[:, 2]},
                                 {"arousal": pred[:, 0], "dominance": pred[:, 2]})
    assert reported["n_arousal"] == len(true) - 3 and reported["n_dominance"] == 0
    assert reported["ccc_arousal"] == pytest.approx(values[0].item(), rel=1e-12)
    assert math.isnan(reported["ccc_dominance"]) and reported["ccc_mean"] == reported["ccc_arousal"]


def test_a_batch_without_ratings_gives_a_zero_loss_that_keeps_the_graph():
    pred = torch.randn(4, 3, requires_grad=True)
    for kind in ("ccc", "mse"):
        loss = attribute_loss(pred, torch.full((4, 3), float("nan")), kind)
        loss.backward()
        assert loss.item() == 0 and (pred.grad == 0).all()


def test_attribute_loss_refuses_an_unknown_kind_and_mismatched_shapes():
    with pytest.raises(MMERError, match="ccc, mse"):
        attribute_loss(torch.zeros(2, 3), torch.zeros(2, 3), "l1")
    with pytest.raises(MMERError, match="same order"):
        ccc(torch.zeros(2, 3), torch.zeros(2, 2))


def test_attribute_head_gives_one_unbounded_number_per_attribute():
    torch.manual_seed(0)
    head = AttributeHead(16)
    assert [type(m).__name__ for m in head.children()] == ["Dropout", "Linear"]
    out = head(torch.randn(5, 16) * 100)
    assert out.shape == (5, len(ATTRIBUTES)) and head.attributes == ATTRIBUTES
    assert out.abs().max() > 1  # no squashing onto [0, 1]
    assert AttributeHead(8, ("valence",))(torch.randn(2, 8)).shape == (2, 1)


def test_normalising_maps_each_corpus_scale_onto_zero_one_and_back():
    iemocap = torch.tensor([1.0, 3.0, 5.0, float("nan")])
    assert normalise_attributes(iemocap, 1, 5)[:3].tolist() == [0.0, 0.5, 1.0]
    assert math.isnan(normalise_attributes(iemocap, 1, 5)[3].item())
    msp = np.array([1.0, 4.0, 7.0])
    assert normalise_attributes(msp, 1, 7).tolist() == [0.0, 0.5, 1.0]
    assert denormalise_attributes(normalise_attributes(msp, 1, 7), 1, 7).tolist() == msp.tolist()
    assert denormalise_attributes(0.25, 1, 5) == 2.0
    with pytest.raises(MMERError, match="--attribute_range"):
        normalise_attributes(msp, 7, 1)


# ---------------------------------------------------------------- focal and soft-target losses
def test_focal_loss_with_gamma_zero_is_cross_entropy_weighted_or_not():
    torch.manual_seed(0)
    logits, labels = torch.randn(9, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 3, 3, 0, 1, 3])
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    assert focal_loss(logits, labels, gamma=0).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-12)
    assert focal_loss(logits, labels, gamma=0, weight=weight).item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=weight).item(), rel=1e-12)
    left_out = labels.clone()
    left_out[[2, 5]] = -1
    assert focal_loss(logits, left_out, gamma=0, weight=weight).item() == pytest.approx(
        F.cross_entropy(logits, left_out, weight=weight, ignore_index=-1).item(), rel=1e-12)


def test_focal_loss_with_gamma_two_matches_a_hand_computation():
    logits = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
    labels, weight, gamma = [0, 2], [1.0, 2.0, 3.0], 2.0
    terms, weights = [], []
    for row, y in zip(logits, labels):
        p = math.exp(row[y]) / sum(math.exp(v) for v in row)
        terms.append(weight[y] * -((1 - p) ** gamma) * math.log(p))
        weights.append(weight[y])
    hand = sum(terms) / sum(weights)
    got = focal_loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels), gamma,
                     torch.tensor(weight, dtype=torch.float64))
    assert got.item() == pytest.approx(hand, rel=1e-12)
    assert focal_loss(torch.tensor(logits), torch.tensor([-1, -1])).item() == 0
    with pytest.raises(MMERError, match="gamma"):
        focal_loss(torch.tensor(logits), torch.tensor(labels), gamma=-1)


def test_soft_targets_one_hot_are_cross_entropy_and_vote_fractions_torchs_soft_form():
    torch.manual_seed(1)
    logits, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 3, 1])
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    one_hot = F.one_hot(labels, 4).to(torch.float64)
    assert soft_target_loss(logits, one_hot).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-12)
    assert soft_target_loss(logits, one_hot, weight).item() == pytest.approx(
        F.cross_entropy(logits, labels, weight=weight).item(), rel=1e-12)
    votes = torch.softmax(torch.randn(6, 4, dtype=torch.float64), dim=1)
    assert soft_target_loss(logits, votes).item() == pytest.approx(F.cross_entropy(logits, votes).item(), rel=1e-12)
    unvoted = votes.clone()
    unvoted[2] = float("nan")
    keep = [0, 1, 3, 4, 5]
    assert soft_target_loss(logits, unvoted).item() == pytest.approx(
        F.cross_entropy(logits[keep], votes[keep]).item(), rel=1e-12)
    with pytest.raises(MMERError, match="class order"):
        soft_target_loss(logits, votes[:, :3])


def test_weighted_soft_targets_match_a_hand_computation():
    logits, votes, weight = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]], [[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]], [1.0, 2.0, 4.0]
    numerator = denominator = 0.0
    for row, fractions in zip(logits, votes):
        log_z = math.log(sum(math.exp(v) for v in row))
        for c, q in enumerate(fractions):
            numerator += weight[c] * q * (log_z - row[c])
            denominator += weight[c] * q
    got = soft_target_loss(torch.tensor(logits, dtype=torch.float64), torch.tensor(votes, dtype=torch.float64),
                           torch.tensor(weight, dtype=torch.float64))
    assert got.item() == pytest.approx(numerator / denominator, rel=1e-12)


# ---------------------------------------------------------------- class weights and the sampler
def test_class_weights_against_a_hand_count():
    labels = [0, 0, 1, 0, 2, 1, 0, -1, 0, 1, 0]          # 6 x class 0, 3 x class 1, 1 x class 2, one left out
    counts = class_counts(labels, 3)
    assert counts.tolist() == [6, 3, 1]
    balanced = [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)]
    assert class_weights(counts, "balanced").tolist() == pytest.approx(balanced, rel=1e-15)
    assert class_weights(counts, "sqrt").tolist() == pytest.approx([math.sqrt(w) for w in balanced], rel=1e-15)
    assert class_weights(counts, "none").tolist() == [1.0, 1.0, 1.0]
    # balanced: every class weighs N / K = 10 / 3 in total
    assert (class_weights(counts, "balanced") * counts).tolist() == pytest.approx([10 / 3] * 3, rel=1e-15)
    kept = [label for label in labels if label >= 0]
    assert class_weights(counts, "balanced").tolist() == pytest.approx(
        compute_class_weight("balanced", classes=np.arange(3), y=kept).tolist(), rel=1e-15)


def test_class_weights_refuse_an_empty_class_by_name_and_an_unknown_mode():
    with pytest.raises(MMERError, match="'fear'.*--class_weights none"):
        class_weights([5, 0, 2], "balanced", ("neutral", "fear", "sad"), source="fold 1's training split")
    assert class_weights([5, 0, 2], "none").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(MMERError, match="balanced, sqrt"):
        class_weights([5, 2], "inverse")


def _imbalanced_labels():
    """80 x class 0, 15 x class 1, 5 x class 2 and 10 left out, in a fixed shuffled order."""
    return np.random.default_rng(0).permutation([0] * 80 + [1] * 15 + [2] * 5 + [-1] * 10)


def test_balanced_sampler_draws_the_classes_about_equally_and_never_a_left_out_one():
    labels = _imbalanced_labels()
    sampler = BalancedBatchSampler(labels, batch_size=8, seed=3)
    drawn = []
    for epoch in range(30):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert len(batches) == len(sampler) == math.ceil(len(labels) / 8)
        drawn += [i for batch in batches for i in batch]
    drawn_labels = labels[drawn]
    assert len(drawn) == 30 * len(labels) and (drawn_labels >= 0).all()
    shares = np.bincount(drawn_labels, minlength=3) / len(drawn)
    # 3300 draws: the standard error of a share is sqrt(1/3 * 2/3 / 3300) = 0.008; allow 5 of them
    assert shares == pytest.approx([1 / 3] * 3, abs=0.04)


def test_balanced_sampler_is_deterministic_for_a_seed_and_epoch():
    labels = _imbalanced_labels()
    first, again = BalancedBatchSampler(labels, 8, seed=1), BalancedBatchSampler(labels, 8, seed=1)
    assert first.batches() == again.batches() == list(first)
    again.set_epoch(1)
    assert again.batches() != first.batches()
    assert BalancedBatchSampler(labels, 8, seed=2).batches() != first.batches()


def test_balanced_sampler_groups_lengths_within_a_pool_and_feeds_a_data_loader():
    labels = _imbalanced_labels()
    lengths = np.arange(len(labels)) * 7 % 101
    sampler = BalancedBatchSampler(labels, batch_size=10, seed=0, lengths=lengths, pool_batches=100)
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in sampler.batches())
    assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:]))  # one pool: sorted runs
    loader = torch.utils.data.DataLoader(list(range(len(labels))), batch_sampler=sampler)
    assert sum(len(batch) for batch in loader) == len(labels)
    with pytest.raises(MMERError, match="label map"):
        BalancedBatchSampler([-1, -1], batch_size=2)


def test_balanced_sampler_holds_its_weights_vector_and_one_pool_whatever_the_corpus_size():
    BalancedBatchSampler([0, 1], batch_size=1).batches()  # numpy's first-use allocations, outside the count
    held, iterating, draws = {}, {}, 20_000
    for n in (10_000, 1_000_000):
        labels = np.repeat([0, 1, 2, -1], [n - n // 4, n // 8, n // 8 - 10, 10])
        tracemalloc.start()
        try:
            sampler = BalancedBatchSampler(labels, batch_size=16, seed=0, num_samples=draws)
            held[n] = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            assert sum(1 for _ in sampler) == len(sampler) == draws // 16
            iterating[n] = tracemalloc.get_traced_memory()[1] - held[n]
        finally:
            tracemalloc.stop()
        assert held[n] <= 8 * n + 4096  # one float64 per utterance, nothing else the corpus's size
    assert iterating[1_000_000] <= 1.2 * iterating[10_000]  # no copy of the corpus-sized vector per pool
    assert iterating[10_000] < 8 * draws  # a pool (800 draws) at a time, not the epoch's 20,000


# ---------------------------------------------------------------- the attribute scale
def test_attribute_range_is_read_from_the_data_or_the_flag():
    frame = pd.DataFrame({"valence": [1.5, 2.0, np.nan, 4.5], "arousal": [1.0, 3.5, 4.75, np.nan]})
    assert attribute_range(frame, ["valence", "arousal"]) == (1.0, 5.0)
    assert attribute_range(frame, ["valence"]) == (1.0, 5.0)
    assert attribute_range(frame, ["valence", "arousal"], "1,7") == (1.0, 7.0)
    assert attribute_range(frame, ["valence"], " 0.5 , 5 ") == (0.5, 5.0)


@pytest.mark.parametrize("given", ["7,1", "3,3", "1", "1,5,7", "a,b", "1,inf", "", "nan,5"])
def test_attribute_range_refuses_a_nonsense_flag(given):
    frame = pd.DataFrame({"valence": [2.0, 3.0]})
    with pytest.raises(MMERError, match="--attribute_range"):
        attribute_range(frame, ["valence"], given)


def test_attribute_range_refuses_what_the_data_cannot_say():
    frame = pd.DataFrame({"valence": [1.0, 6.5], "arousal": [3.0, 3.0], "dominance": [np.nan, np.nan]})
    with pytest.raises(MMERError, match="6.5, outside --attribute_range 1,5"):
        attribute_range(frame, ["valence"], "1,5", source="data/msp.csv")
    with pytest.raises(MMERError, match="no column EmoAct"):
        attribute_range(frame, ["EmoAct"])
    with pytest.raises(MMERError, match="no rating in dominance"):
        attribute_range(frame, ["dominance"])
    with pytest.raises(MMERError, match="rates inf"):
        attribute_range(pd.DataFrame({"valence": [1.0, np.inf]}), ["valence"])
    with pytest.raises(MMERError, match="every rating"):
        attribute_range(frame, ["arousal"])
