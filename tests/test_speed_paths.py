"""The speed paths change no results: length-bucketed batches still visit every utterance
exactly once per epoch, and the bf16 autocast path stays close to fp32."""
import numpy as np
import pytest
import torch

from models import MODELS
from tests.test_models import make_model, pad_batch, random_inputs
from utils.data import BucketBatchSampler, RandomBatchSampler
from utils.device import autocast


def padding_efficiency(sampler, lengths) -> float:
    batches = list(sampler)
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return real / padded


@pytest.mark.parametrize("n, batch_size, seed", [(1, 8, 0), (37, 8, 1), (500, 8, 2), (1031, 2, 3), (64, 64, 4)])
def test_bucketing_keeps_every_utterance_exactly_once_per_epoch(n, batch_size, seed):
    lengths = np.random.default_rng(seed).lognormal(10.9, 0.6, n).astype(int)
    sampler = BucketBatchSampler(lengths, batch_size, shuffle=True, seed=seed)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(1 <= len(b) <= batch_size for b in batches)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        orders.append(flat)
    if n > batch_size:
        assert orders[0] != orders[1]  # reshuffled each epoch


def test_bucketing_is_deterministic_for_a_seed_and_epoch():
    lengths = np.arange(100)
    a, b = BucketBatchSampler(lengths, 4, seed=5), BucketBatchSampler(lengths, 4, seed=5)
    a.set_epoch(3), b.set_epoch(3)
    assert list(a) == list(b)


def test_bucketing_wastes_far_less_padding_than_random_batches():
    lengths = np.random.default_rng(0).lognormal(10.9, 0.6, 2000).astype(int)  # IEMOCAP-like spread
    bucketed = padding_efficiency(BucketBatchSampler(lengths, 8, seed=0), lengths)
    random = padding_efficiency(RandomBatchSampler(lengths, 8, seed=0), lengths)
    assert bucketed >= 0.9 > random


def test_evaluation_batches_are_length_sorted_and_complete():
    lengths = np.array([5, 1, 4, 2, 3])
    batches = list(BucketBatchSampler(lengths, 2, shuffle=False))
    assert batches == [[1, 3], [4, 2], [0]]


@pytest.mark.parametrize("run", list(MODELS))
def test_bf16_autocast_logits_stay_within_one_percent_of_fp32(run):
    model = make_model(run)
    inputs = pad_batch(*random_inputs([16000, 11000, 7000], [6, 4, 9]))
    with torch.no_grad():
        fp32 = model(**inputs).logits
        with autocast(torch.device("cpu"), "bf16"):
            bf16 = model(**inputs).logits.float()
    relative = (bf16 - fp32).norm() / fp32.norm()
    assert relative < 1e-2
    assert not torch.equal(bf16, fp32)  # the autocast path really ran in bf16
