"""--cache_conv_features: the frozen convolutional feature encoder run once per utterance,
alone, its output kept on disk beside the audio cache (or in memory for a corpus in memory)."""
import hashlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dataio.dataset import ExactBatchSampler
from dataio.store import Arrays, Store, built, fingerprint, write_items
from models.encoders import conv_features, frame_lengths
from training.inputs import Corpus
from utils import distributed


def use_conv_cache(model, corpus: Corpus, run_cfg, device) -> None:
    """--cache_conv_features: the loaders hand the model the frozen feature encoder's output
    for every utterance instead of the audio (otherwise they hand it the audio). The output is
    computed on the device, each utterance as if alone (padding-exact batches: equal lengths
    for group-norm encoders), once for a corpus, encoder weights and device: on disk beside
    the audio cache (dataio/store.py), or in memory for a corpus held in memory."""
    corpus.dataset.conv_features = None
    if not run_cfg.cache_conv_features:
        return
    weights = hashlib.sha256()
    for p in model.wav2vec2.feature_extractor.parameters():
        weights.update(p.detach().cpu().float().numpy().tobytes())
    samples = corpus.dataset.waves.samples
    key = (weights.hexdigest(), getattr(samples, "folder", None), corpus.dataset.waves.max_samples, device.type,
           str(next(model.wav2vec2.parameters()).dtype), run_cfg.eval_batch_size, corpus.padding_exact)
    if corpus.conv_cache is None or corpus.conv_cache[0] != key:
        if isinstance(samples, Store):
            folder = samples.folder.parent.parent / "conv" / fingerprint([], key=key)
            store = built(folder, lambda tmp: write_conv_features(tmp, model, corpus, run_cfg, device),
                          "feature-encoder output", distributed.is_local_main())
        else:
            store = Arrays([None] * len(corpus.dataset))
            for i, features in conv_features_of(model, corpus, run_cfg, device):
                store[i] = features
        corpus.conv_cache = (key, store)
    corpus.dataset.conv_features = corpus.conv_cache[1]


def conv_features_of(model, corpus: Corpus, run_cfg, device):
    """(utterance index, its [frames, channels] float32 array) for every utterance of the
    corpus, computed on the device in padding-exact batches, in length order."""
    lengths = corpus.dataset.lengths()
    # no DataLoader: creating its iterator draws from the global RNG, and training's dropout
    # masks must not depend on whether the cache was built
    for indices in tqdm(ExactBatchSampler(lengths, run_cfg.eval_batch_size, corpus.padding_exact).batches(),
                        desc="conv features", leave=False, disable=None if distributed.is_main() else True):
        batch = corpus.collate([corpus.dataset[i] for i in indices])
        features = conv_features(model.wav2vec2, batch.input_values.to(device)).float().cpu().numpy()
        frames = frame_lengths(model.wav2vec2, batch.sample_lengths).tolist()
        for row, (i, n) in enumerate(zip(indices, frames)):
            yield i, features[row, :n].copy()


def write_conv_features(folder: Path, model, corpus: Corpus, run_cfg, device) -> None:
    order = []

    def arrays():
        for i, features in conv_features_of(model, corpus, run_cfg, device):
            order.append(i)
            yield features
    width = model.wav2vec2.config.conv_dim[-1]
    write_items(folder, arrays(), np.float32, tail=(width,), order=order)

