"""The contrastive objectives, projection heads and audio pooling of models/objectives.py:
each loss against a computation written out by hand, where gradients go, and pooling that
padding cannot change."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.objectives import (STD_FLOOR, AudioPooling, ProjectionHead, augmentation_contrastive_loss,
                               build_audio_pooling, supervised_contrastive_loss)


def _unit(row):
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def supcon_by_hand(features, labels, t):
    """Khosla et al. 2020, L_out, with plain loops over the batch."""
    z = [_unit(row) for row in features.tolist()]
    labels = labels.tolist()
    per_anchor = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(_dot(z[i], z[a]) / t) for a in range(len(z)) if a != i)
        terms = [math.log(math.exp(_dot(z[i], z[p]) / t) / denominator) for p in positives]
        per_anchor.append(-sum(terms) / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def infonce_by_hand(anchors, views, t):
    a = [_unit(row) for row in anchors.tolist()]
    v = [_unit(row) for row in views.tolist()]
    losses = []
    for i in range(len(a)):
        logits = [_dot(a[i], v[j]) / t for j in range(len(v))]
        losses.append(-math.log(math.exp(logits[i]) / sum(math.exp(x) for x in logits)))
    return sum(losses) / len(losses)


def features(batch, dim=6, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


# ---- supervised contrastive loss ----

@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2], [3, 1, 3, 3, 1, 0], [2, 2, 2, 2]])
@pytest.mark.parametrize("t", [0.07, 0.5])
def test_supcon_matches_hand_computation(labels, t):
    labels = torch.tensor(labels)
    f = features(len(labels))
    assert supervised_contrastive_loss(f, labels, t).item() == pytest.approx(supcon_by_hand(f, labels, t), rel=1e-5)


def test_supcon_single_member_class_adds_no_term_but_is_a_negative():
    labels = torch.tensor([0, 0, 1, 1, 2])          # class 2 has one member
    f = features(5).requires_grad_()
    loss = supervised_contrastive_loss(f, labels)
    # Its own term is absent: the loss is the mean over the four anchors that have a positive...
    assert loss.item() == pytest.approx(supcon_by_hand(f.detach(), labels, 0.07), rel=1e-5)
    # ...but it sits in their denominators, so it is pushed away and receives gradient.
    loss.backward()
    assert torch.all(f.grad.norm(dim=1) > 1e-4)
    # Moving the lone sample changes the loss (it is a negative of the others).
    moved = f.detach().clone()
    moved[4] = -moved[4]
    assert supervised_contrastive_loss(moved, labels).item() != pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("labels", [[1], [0, 1, 2, 3]])
def test_supcon_without_any_positive_is_exact_zero_with_a_graph(labels):
    f = features(len(labels)).requires_grad_()
    with torch.autograd.detect_anomaly():              # no NaN in any backward step, not just the end
        loss = supervised_contrastive_loss(f, torch.tensor(labels))
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
    assert torch.isfinite(f.grad).all() and torch.all(f.grad == 0)


def test_supcon_is_stable_for_aligned_features():
    # Identical directions give logits of exactly 1/t; a naive exp would still be fine at 0.07,
    # so push t down until exp(1/t) overflows fp32 and check the loss stays finite.
    f = torch.ones(4, 3).requires_grad_()
    loss = supervised_contrastive_loss(f, torch.tensor([0, 0, 1, 1]), temperature=1e-3)
    assert torch.isfinite(loss)
    # All 3 others are equally similar; fp32 resolves log-probabilities near 1/t = 1000 to ~1e-4.
    assert loss.item() == pytest.approx(math.log(3.0), abs=1e-3)
    loss.backward()
    assert torch.isfinite(f.grad).all()


def test_supcon_temperature_divides_similarities_and_scale_does_not_matter():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    f = features(6)
    at_half = supervised_contrastive_loss(f, labels, 0.5).item()
    assert at_half == pytest.approx(supcon_by_hand(f, labels, 0.5), rel=1e-5)
    # Not upstream's form, where the temperature only divides the finished log-probabilities.
    assert at_half != pytest.approx(supcon_by_hand(f, labels, 1.0) / 0.5, rel=1e-3)
    # Features are normalised: scaling them is not a temperature.
    assert supervised_contrastive_loss(7.0 * f, labels, 0.5).item() == pytest.approx(at_half, rel=1e-5)


def test_supcon_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="3 feature rows but 2 labels"):
        supervised_contrastive_loss(features(3), torch.tensor([0, 1]))


# ---- augmentation contrastive loss ----

@pytest.mark.parametrize("batch", [2, 5])
@pytest.mark.parametrize("t", [0.07, 0.3])
def test_augmentation_loss_matches_hand_computation(batch, t):
    anchors, views = features(batch, seed=1), features(batch, seed=2)
    assert augmentation_contrastive_loss(anchors, views, t).item() == pytest.approx(
        infonce_by_hand(anchors, views, t), rel=1e-5)


def test_augmentation_loss_is_one_directional_like_upstream():
    anchors, views = features(4, seed=1), features(4, seed=2)
    forward = augmentation_contrastive_loss(anchors, views).item()
    assert forward == pytest.approx(infonce_by_hand(anchors, views, 0.07), rel=1e-5)
    assert augmentation_contrastive_loss(views, anchors).item() != pytest.approx(forward, rel=1e-3)


def test_augmentation_loss_of_one_utterance_is_zero():
    anchors, views = features(1, seed=1).requires_grad_(), features(1, seed=2).requires_grad_()
    loss = augmentation_contrastive_loss(anchors, views)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(anchors.grad).all() and torch.isfinite(views.grad).all()


def test_augmentation_loss_gives_gradient_to_anchors_and_views():
    anchors, views = features(4, seed=1).requires_grad_(), features(4, seed=2).requires_grad_()
    augmentation_contrastive_loss(anchors, views).backward()
    assert torch.all(anchors.grad.norm(dim=1) > 1e-4)
    assert torch.all(views.grad.norm(dim=1) > 1e-4)


def test_augmentation_loss_temperature_and_scale():
    anchors, views = features(4, seed=1), features(4, seed=2)
    base = augmentation_contrastive_loss(anchors, views, 0.2).item()
    assert augmentation_contrastive_loss(3.0 * anchors, 0.5 * views, 0.2).item() == pytest.approx(base, rel=1e-5)
    # A perfectly matched batch gets easier as the temperature falls.
    assert (augmentation_contrastive_loss(anchors, anchors, 0.05).item()
            < augmentation_contrastive_loss(anchors, anchors, 0.5).item())


def test_augmentation_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        augmentation_contrastive_loss(features(3), features(2))


# ---- projection head ----

def test_projection_head_names_shapes_and_form():
    head = ProjectionHead()
    shapes = {name: tuple(p.shape) for name, p in head.named_parameters()}
    assert shapes == {"0.weight": (768, 1536), "0.bias": (768,), "2.weight": (768, 768), "2.bias": (768,)}
    small = ProjectionHead(8, 5, 3)
    x = features(2, dim=8)
    hidden = x @ small[0].weight.T + small[0].bias
    exact_gelu = 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0)))     # upstream's ActivateFun('gelu')
    torch.testing.assert_close(small(x), exact_gelu @ small[2].weight.T + small[2].bias)


# ---- pooling ----

LENGTHS = [5, 3, 1]
DIM = 4


def padded_batch(pad_value_offset=0.0, seed=0):
    """Three utterances padded to 5 frames; padding holds large random values."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(len(LENGTHS), max(LENGTHS), DIM, generator=g)
    valid = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]
    padding = 50.0 * torch.randn(frames.shape, generator=g) + pad_value_offset
    return torch.where(valid[..., None], frames, padding), valid


def make_pooling(method, attention_hidden=None):
    torch.manual_seed(0)
    return build_audio_pooling(method, DIM, attention_hidden)


POOLINGS = [("max", None), ("mean", None), ("attention", None), ("attention", 3), ("statistics", None)]


@pytest.mark.parametrize("method,hidden", POOLINGS)
def test_pooling_is_padding_exact(method, hidden):
    pool = make_pooling(method, hidden)
    frames, valid = padded_batch()
    pooled = pool(frames, valid)
    assert pooled.shape == (3, pool.output_dim)
    for i, n in enumerate(LENGTHS):
        alone = pool(frames[i:i + 1, :n], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(pooled[i:i + 1], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method,hidden", POOLINGS)
def test_pooling_gives_padding_no_gradient(method, hidden):
    pool = make_pooling(method, hidden)
    frames, valid = padded_batch()
    frames.requires_grad_()
    pool(frames, valid).sum().backward()
    assert torch.isfinite(frames.grad).all()
    assert torch.all(frames.grad[~valid] == 0)
    if method != "max":                           # max sends gradient to the winning frames only
        assert torch.all(frames.grad[valid].abs().sum(dim=-1) > 0)


def test_max_pooling_ignores_larger_padding():
    frames, valid = padded_batch(pad_value_offset=1e4)
    pooled = AudioPooling("max", DIM)(frames, valid)
    for i, n in enumerate(LENGTHS):
        expected = [max(frames[i, t, d].item() for t in range(n)) for d in range(DIM)]
        assert pooled[i].tolist() == pytest.approx(expected, abs=0)


@pytest.mark.parametrize("method,hidden", POOLINGS)
def test_a_row_without_valid_frames_pools_to_finite_values_without_gradient(method, hidden):
    frames = torch.randn(2, 3, DIM).requires_grad_()
    valid = torch.tensor([[True, True, False], [False, False, False]])
    pooled = make_pooling(method, hidden)(frames, valid)
    assert torch.isfinite(pooled).all()
    assert torch.all(pooled[1, :DIM] == 0)                 # the mean half, for statistics
    pooled.sum().backward()
    assert torch.all(frames.grad[1] == 0)


def test_statistics_pooling_is_mean_and_population_std_by_hand():
    frames, valid = padded_batch()
    pooled = AudioPooling("statistics", DIM)(frames, valid)
    for i, n in enumerate(LENGTHS):
        for d in range(DIM):
            column = [frames[i, t, d].item() for t in range(n)]
            mean = sum(column) / n
            variance = sum((x - mean) ** 2 for x in column) / n
            assert pooled[i, d].item() == pytest.approx(mean, abs=1e-6)
            assert pooled[i, DIM + d].item() == pytest.approx(math.sqrt(max(variance, STD_FLOOR)), abs=1e-6)


def test_attention_pooling_is_a_softmax_over_valid_frames_by_hand():
    pool = make_pooling("attention")
    frames, valid = padded_batch()
    pooled = pool(frames, valid)
    w, b = pool.score.weight[0].tolist(), pool.score.bias.item()
    for i, n in enumerate(LENGTHS):
        scores = [_dot(w, frames[i, t].tolist()) + b for t in range(n)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        weights = [x / sum(weights) for x in weights]
        expected = [sum(weights[t] * frames[i, t, d].item() for t in range(n)) for d in range(DIM)]
        assert pooled[i].tolist() == pytest.approx(expected, abs=1e-5)


def test_pooling_parameter_names_and_output_dims():
    assert dict(AudioPooling("max", 768).named_parameters()) == {}
    assert AudioPooling("statistics", 768).output_dim == 1536
    assert AudioPooling("mean", 768).output_dim == 768
    shapes = {n: tuple(p.shape) for n, p in AudioPooling("attention", 768).named_parameters()}
    assert shapes == {"score.weight": (1, 768), "score.bias": (1,)}
    shapes = {n: tuple(p.shape) for n, p in AudioPooling("attention", 768, attention_hidden=384).named_parameters()}
    assert shapes == {"score.0.weight": (384, 768), "score.0.bias": (384,),
                      "score.2.weight": (1, 384), "score.2.bias": (1,)}
    with pytest.raises(ValueError, match="max, mean, attention, statistics"):
        AudioPooling("median", 768)


def test_mean_pooling_is_the_models_masked_mean():
    from models.fusion import masked_mean
    frames, valid = padded_batch()
    assert torch.equal(AudioPooling("mean", DIM)(frames, valid), masked_mean(frames, valid))


def test_losses_stay_fp32_under_bf16_autocast():
    f = features(4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supervised_contrastive_loss(f, torch.tensor([0, 0, 1, 1]))
        aug = augmentation_contrastive_loss(f, f.flip(0))
    assert loss.dtype == torch.float32 and aug.dtype == torch.float32
    assert loss.item() == pytest.approx(supcon_by_hand(f.float(), torch.tensor([0, 0, 1, 1]), 0.07), rel=1e-5)
    assert aug.item() == pytest.approx(F.cross_entropy(
        F.normalize(f.float(), dim=-1) @ F.normalize(f.flip(0).float(), dim=-1).T / 0.07, torch.arange(4)).item(),
        rel=1e-5)
