"""Class-balanced training batches for imbalanced corpora (MSP-Podcast: neutral many times
fear): each epoch draws utterances with replacement, with probability inversely proportional to
their class's frequency (as torch's WeightedRandomSampler with 1 / n_class weights), so every
class present is drawn about equally often. The interface is dataset.BucketBatchSampler's."""
import numpy as np
import torch

from dataio.labels import LabelError


class BalancedBatchSampler(torch.utils.data.Sampler):
    """Each epoch: draw num_samples indices (default len(labels)) with replacement, each labelled
    utterance with probability 1 / (C n_c) (C classes present, n_c its class's count), so each
    class makes about 1 / C of the draws; labels < 0 (left out) are never drawn. The draws come
    a pool of `pool_batches` batches at a time; given lengths, a pool is sorted by length (little
    padding, as BucketBatchSampler), then cut into batches whose order is shuffled. The draws
    are independent, so shuffling within a pool mixes the epoch as well as shuffling across it.

    Memory: the sampler keeps one float64 vector of the corpus's size (the cumulative draw
    weights; plus `lengths` when given) and iterating holds one pool, whatever the corpus size.
    Deterministic for a (seed, epoch)."""

    def __init__(self, labels, batch_size: int, seed: int = 0, lengths=None, pool_batches: int = 50,
                 num_samples: int | None = None):
        labels = np.asarray(labels, dtype=np.int64)
        kept = labels >= 0
        if not kept.any():
            raise LabelError(f"none of the {len(labels)} training utterances has a class (every label is left "
                             "out), so no class can be balanced: check the label map (--label_map) of the table")
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size ({batch_size}) and pool_batches ({pool_batches}) must be at least 1")
        counts = np.bincount(labels[kept])
        weights = np.zeros(len(labels))
        weights[kept] = 1.0 / counts[labels[kept]]
        # drawing = inverting this cumulative sum at uniform points (what rng.choice(p=...) does
        # inside, but without a copy of the corpus-sized vector at every pool)
        self.cumulative = np.cumsum(weights)
        self.last_kept = int(np.flatnonzero(kept)[-1])
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = batch_size * pool_batches
        self.num_samples = len(labels) if num_samples is None else num_samples
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw(self, rng, size: int) -> np.ndarray:
        points = rng.random(size) * self.cumulative[-1]
        # a left-out row adds nothing to the sum, so no point lands on it; the clip only guards
        # a point rounded up onto the total
        return np.minimum(np.searchsorted(self.cumulative, points, side="right"), self.last_kept)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        for start in range(0, self.num_samples, self.pool):
            pool = self._draw(rng, min(self.pool, self.num_samples - start))
            if self.lengths is not None:
                pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches = [pool[i:i + self.batch_size].tolist() for i in range(0, len(pool), self.batch_size)]
            yield from (batches[i] for i in rng.permutation(len(batches)))

    def batches(self) -> list[list[int]]:
        return list(self)

    def __len__(self):
        # pools hold a whole number of batches, so only the last batch of an epoch can be short
        return -(-self.num_samples // self.batch_size)
