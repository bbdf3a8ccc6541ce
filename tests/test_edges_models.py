"""Trust at the edges (issue 28): where the 2023 dropout acts in training, a stand-in shard's
contrastive terms, a text-feature store rebuilt when a feature file changes, and the optimizer
step of an epoch's last, partial accumulation group. Expected values come from the encoder's
own output, inverted dropout's definition (kept values x 1 / (1 - p)), np.save'd arrays and
hand-computed SGD steps."""
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dataio.dataset import stored_text_features
from models.settings import FINE_TUNED
from models import MODELS, ModelConfig
from models import base
from models.base import EmotionOutput, SpeechEmotionModel
from models.encoders import prepare_encoder
from models.objectives import AUGMENTATION_CONTRASTIVE, Pool
from synthetic.tiny_models import tiny_speech_encoder
from tests.test_models import TEXT_DIM, pad_batch, random_inputs
from training import loop as training
from training.config import RunConfig


# ---------------------------------------------------------------- where dropout acts in training
def audio_readers(model) -> dict:
    """The modules that read the encoder's output: pooling, the CTC head, mmer's fusion."""
    names = ("audio_pooling", "ctc_linear", "vismap2text", "vismap2text_v2")
    return {name: getattr(model, name) for name in names if hasattr(model, name)}


def what_each_reader_gets(model, inputs) -> dict:
    """One forward: the encoder's last hidden state ("encoder") and each reader's input."""
    seen = {}
    handles = [model.wav2vec2.register_forward_hook(
        lambda module, args, output: seen.__setitem__("encoder", output.last_hidden_state.detach()))]
    for name, module in audio_readers(model).items():
        handles.append(module.register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, args[0].detach())))
    try:
        model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def assert_dropped(values, hidden, p):
    """Inverted dropout of `hidden`: every value either 0 or hidden / (1 - p), some of each."""
    kept = values != 0
    torch.testing.assert_close(values[kept], hidden[kept] / (1 - p), rtol=0, atol=0)
    assert 0.3 < 1 - kept.float().mean().item() < 0.7  # p = 0.5 over thousands of values


@pytest.mark.parametrize("run", FINE_TUNED)
@pytest.mark.parametrize("audio_dropout", ["ctc", "all"])
def test_in_training_2023_dropout_reaches_only_the_ctc_head_and_2022_dropout_everything(run, audio_dropout):
    """audio_dropout "ctc" (2023): pooling and fusion read the encoder's output as it is, the
    CTC head a dropped copy; "all" (2022): every reader the same dropped frames. In training
    mode, where dropout acts (in eval mode every reader gets the encoder's output)."""
    p = 0.5
    torch.manual_seed(0)
    encoder = prepare_encoder(tiny_speech_encoder("wav2vec2", apply_spec_augment=False))
    model = MODELS[run](ModelConfig(run=run, text_dim=TEXT_DIM, dropout=p, audio_dropout=audio_dropout),
                        encoder).train()
    inputs = pad_batch(*random_inputs([16000, 11000], [6, 4], seed=1))
    inputs["attention_mask"] = None
    seen = what_each_reader_gets(model, inputs)
    hidden = seen.pop("encoder")
    ctc = seen.pop("ctc_linear", None)
    assert set(seen) == {"audio_pooling"} | ({"vismap2text", "vismap2text_v2"} if run == "mmer" else set())
    for name, frames in seen.items():
        if audio_dropout == "ctc":
            assert torch.equal(frames, hidden), name
        else:
            assert_dropped(frames, hidden, p)
            assert ctc is None or torch.equal(frames, ctc), name  # one dropout draw for all readers
    if ctc is not None:
        assert_dropped(ctc, hidden, p)


# ---------------------------------------------------------------- a stand-in shard's contrastive terms
def stand_in_pool(others: torch.Tensor, other_labels: torch.Tensor):
    """gather_pool as a stand-in process of a 2-process run sees it: the other process's rows
    (`others`, with gradient), then this one's, which are no keys (valid False)."""
    def gather(features, labels, valid=True):
        assert not valid, "the stand-in's rows must be gathered as no keys"
        n, b = len(others), len(features)
        return Pool(torch.cat([others, features]), torch.cat([other_labels, labels.reshape(-1)]),
                    torch.arange(n + b) < n, n + torch.arange(b))
    return gather


@pytest.mark.parametrize("contrastive", ["upstream", "normalised"])
def test_a_stand_in_shards_contrastive_terms_add_exact_zeros_yet_reach_the_gathered_pool(monkeypatch, contrastive):
    """The stand-in's anchors meet a pool where their own rows are no keys, so their
    augmentation term is inf (x 0 would be NaN). Each term must be exactly 0 with finite,
    zero gradients, and still reach the gathered rows: under torchrun their backward is a
    collective the other processes wait for."""
    torch.manual_seed(0)
    others, other_labels = torch.randn(3, 8, requires_grad=True), torch.tensor([0, 1, 0])
    anchors, views = torch.randn(1, 8, requires_grad=True), torch.randn(1, 8, requires_grad=True)
    labels = torch.tensor([0])
    gather = stand_in_pool(others, other_labels)
    assert torch.isinf(AUGMENTATION_CONTRASTIVE[contrastive](anchors, views, pool=gather(views, labels, False)))
    monkeypatch.setattr(base, "gather_pool", gather)
    output = EmotionOutput(logits=torch.zeros(1, 4), frame_lengths=torch.tensor([5]), projection=anchors,
                           view=EmotionOutput(logits=torch.zeros(1, 4), frame_lengths=torch.tensor([5]),
                                              projection=views))
    model = SimpleNamespace(config=ModelConfig(supcon_weight=0.1, aug_weight=0.1, contrastive=contrastive))
    losses = SpeechEmotionModel.contrastive_losses(model, output, labels, rows_count=False)
    assert {name: value.item() for name, value in losses.items()} == {"supcon": 0.0, "aug": 0.0}
    sum(losses.values()).backward()
    for tensor in (others, anchors, views):
        assert tensor.grad is not None and torch.equal(tensor.grad, torch.zeros_like(tensor))


# ---------------------------------------------------------------- the text-feature store
def test_a_changed_text_feature_file_builds_a_new_store_and_never_serves_the_stale_one(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, 5, 8)).astype(np.float32), rng.standard_normal((7, 8)).astype(np.float32)]
    for name, array in zip(("u0", "u1"), arrays):
        np.save(tmp_path / f"{name}.npy", array)
    first = stored_text_features(["u0", "u1"], tmp_path, tmp_path / "cache", show_progress=False)
    np.testing.assert_array_equal(first[1], arrays[1])
    path = tmp_path / "u1.npy"
    stamp = path.stat().st_mtime
    changed = rng.standard_normal((7, 8)).astype(np.float32)
    np.save(path, changed)                                     # the same size: only the time tells
    os.utime(path, (stamp + 1, stamp + 1))
    second = stored_text_features(["u0", "u1"], tmp_path, tmp_path / "cache", show_progress=False)
    np.testing.assert_array_equal(second[1], changed)
    np.testing.assert_array_equal(second[0], arrays[0][0])
    np.testing.assert_array_equal(first[1], arrays[1])           # the old store is left as it was
    again = stored_text_features(["u0", "u1"], tmp_path, tmp_path / "cache", show_progress=False)
    assert again.folder == second.folder != first.folder     # nothing changed since: no rebuild


# ---------------------------------------------------------------- the last, partial accumulation group
class LinearLoss(nn.Module):
    """A model whose loss on a micro-batch is w * x: its gradient is x, whatever w."""
    audio_dim = 1

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.config = ModelConfig()

    def forward(self, x, views=None):
        return self.w * x

    def loss(self, output, labels, ctc_targets=None, ctc_target_lengths=None, rows_count=True, attributes=None, soft_targets=None):
        return {"total": output, "ce": output}


@dataclass
class MicroBatch:
    x: torch.Tensor
    sample_lengths = torch.tensor([16000])
    labels = ctc_targets = ctc_target_lengths = ssl_states = attributes = soft_targets = None

    def to(self, device, non_blocking=False):
        return self

    def model_inputs(self) -> dict:
        return {"x": self.x}


class Loader(list):
    """Micro-batches in order; the batch sampler a loader has (one loss scale of 1 each)."""
    @property
    def batch_sampler(self):
        return self


def test_an_epoch_that_ends_in_a_partial_accumulation_group_steps_on_it_too():
    """5 micro-batches with x = 1, 2, 4, 8, 16 at accum_grad 2: groups {1, 2}, {4, 8}, {16},
    ceil(5 / 2) = 3 SGD steps (lr 1) on the summed gradients, each micro-batch's divided by
    accum_grad: w = 0 - 3/2 - 12/2 - 16/2 = -15.5 (without the last step: -7.5)."""
    model = LinearLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, fused=True)
    loader = Loader(MicroBatch(torch.tensor(float(x))) for x in (1, 2, 4, 8, 16))
    stats = training.train_epoch(model, loader, optimizer, RunConfig(accum_grad=2, precision="fp32", log_every=100),
                                 torch.device("cpu"), epoch=1)
    assert (stats["optimizer_steps"], stats["micro_batches"], stats["skipped_steps"]) == (3, 5, 0)
    assert model.w.item() == -15.5
    assert model.w.grad is None  # nothing left over for the next epoch
