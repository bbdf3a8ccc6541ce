"""The speed paths change no results: length-bucketed batches still visit every utterance
exactly once per epoch, the bf16 autocast path stays close to fp32, and cached outputs of the
frozen feature encoder give the same losses as running it."""
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import run
from synthetic.tiny_models import save_speech_encoder, tiny_speech_encoder
from models.settings import FINE_TUNED
from models.encoders import AudioInputSpec, conv_cache_changes_training, conv_cache_refusal, conv_features, frame_lengths
from tests.test_models import make_model, pad_batch, random_inputs
from dataio.dataset import BucketBatchSampler, Collator, RandomBatchSampler, fixed_length, pad_rows
from utils.device import autocast, seed_everything
from training import config as training_config
from training import inputs as training_inputs
from training import loop as training_loop


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


@pytest.mark.parametrize("run", FINE_TUNED)
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


MASKED = AudioInputSpec(return_attention_mask=True)  # what layer-norm encoders' feature extractors say


def cached_inputs(model, inputs):
    """The same batch with the feature encoder's output of each utterance, computed alone."""
    frames = frame_lengths(model.wav2vec2, inputs["sample_lengths"])
    rows = [conv_features(model.wav2vec2, inputs["input_values"][i:i + 1, :n])[0]
            for i, n in enumerate(inputs["sample_lengths"].tolist())]
    assert [len(r) for r in rows] == frames.tolist()
    features, _ = pad_rows(rows)
    return {**inputs, "input_values": None, "attention_mask": None, "conv_features": features}


@pytest.mark.parametrize("run", FINE_TUNED)
@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm"])
def test_cached_conv_features_give_the_same_loss_as_the_uncached_path(run, kind):
    model = make_model(run, kind, feat_extract_norm="layer", do_stable_layer_norm=True)
    assert conv_cache_refusal(model.wav2vec2.config, MASKED) is None
    inputs = pad_batch(*random_inputs([16000, 11000, 7000], [6, 4, 9]))
    cached = cached_inputs(model, inputs)
    labels, targets, target_lengths = torch.tensor([0, 3, 1]), torch.randint(1, 32, (12,)), torch.tensor([5, 4, 3])
    losses = []
    for train, batch in [(False, inputs), (False, cached), (True, inputs), (True, cached)]:
        model.train(train)
        seed_everything(1)  # the same dropout and SpecAugment masks on both paths
        losses.append(model.loss(model(**batch), labels, targets, target_lengths)["total"])
    assert torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(losses[2], losses[3], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(losses[0], losses[2])  # dropout was on in training mode


def test_a_cached_group_norm_batch_gives_each_utterance_what_it_gets_alone():
    model = make_model("cai_sota")  # wav2vec2-base's group-norm feature encoder, zero padding, no mask
    assert conv_cache_refusal(model.wav2vec2.config, AudioInputSpec()) is None
    assert conv_cache_changes_training(model.wav2vec2.config, AudioInputSpec())
    waves, texts = random_inputs([16000, 7000], [6, 4])
    inputs = pad_batch(waves, texts)
    inputs["attention_mask"] = None
    with torch.no_grad():
        padded = model(**inputs).logits
        cached = model(**cached_inputs(model, inputs)).logits
        alone = torch.cat([model(**{**pad_batch([w], [t]), "attention_mask": None}).logits for w, t in zip(waves, texts)])
    torch.testing.assert_close(cached, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(padded, alone, atol=1e-4)  # the uncached padded batch is not exact


def layer_norm_encoder(root):
    """A tiny wav2vec2 with a layer-norm feature encoder (wav2vec2-large-lv60's choice)."""
    torch.manual_seed(0)
    encoder = tiny_speech_encoder("wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True)
    return save_speech_encoder(encoder, root / "wav2vec2-layer-norm")


def test_a_run_with_cached_conv_features_trains_exactly_like_one_without(demo, tmp_path, caplog):
    encoder = layer_norm_encoder(tmp_path)
    records = []
    for cache in (False, True):
        save = tmp_path / f"cache-{cache}"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mmer"):
            run.main(demo.flags(run="mmer", wav2vec2=encoder, sessions="1", save_path=save)
                     + ["--cache_conv_features" if cache else "--no-cache_conv_features"])
        assert ("built the feature-encoder output cache" in caplog.text) == cache  # the cache was really used
        records.append([json.loads(line) for line in (save / "mmer" / "1_stats.txt").read_text().splitlines()])
    for plain, cached in zip(*records):
        for key in ("loss", "ce_loss", "ctc_loss"):
            assert cached[key] == pytest.approx(plain[key], rel=1e-4)
        assert cached["test"]["confusion"] == plain["test"]["confusion"]


def test_the_conv_cache_is_off_by_default_for_group_norm_and_exact_when_asked(demo, tmp_path):
    assert run.parse_args(demo.flags(save_path=tmp_path))[1].cache_conv_features is False
    assert run.parse_args(demo.flags(save_path=tmp_path, cache_conv_features=True))[1].cache_conv_features is True
    layer = layer_norm_encoder(tmp_path)
    assert run.parse_args(demo.flags(save_path=tmp_path, wav2vec2=layer))[1].cache_conv_features is True
    trained = run.main(demo.flags(run="cai_sota", sessions="1", epochs=1, save_path=tmp_path / "train",
                                  cache_conv_features=True))
    evaluated = {}
    for cache in ("--cache_conv_features", "--no-cache_conv_features"):
        run.main(["--eval_only", "--checkpoint_dir", str(tmp_path / "train" / "cai_sota"), "--save_path",
                  str(tmp_path / cache), cache, "--eval_batch_size", "4", "--device", "cpu"])
        evaluated[cache] = pd.read_csv(tmp_path / cache / "cai_sota" / "1_predictions.csv")
    cached, exact = evaluated.values()
    np.testing.assert_allclose(cached.filter(like="prob_").to_numpy(), exact.filter(like="prob_").to_numpy(), atol=1e-5)
    assert trained["folds"]["1"]["confusion"] is not None


def test_the_conv_cache_is_refused_only_where_encode_conv_features_does_not_mirror_the_encoder():
    layer = make_model("unimodal_baseline", feat_extract_norm="layer", do_stable_layer_norm=True).wav2vec2.config
    assert conv_cache_refusal(layer, MASKED) is None
    assert conv_cache_refusal(layer, AudioInputSpec(return_attention_mask=False)) is None
    with_adapter = type(layer)(**{**layer.to_dict(), "add_adapter": True})
    assert "adapter" in conv_cache_refusal(with_adapter, MASKED)
    other = type(layer)(**layer.to_dict())
    other.model_type = "sew"
    assert "sew" in conv_cache_refusal(other, MASKED)


def test_fixed_lengths_form_a_small_ladder_that_pads_at_most_a_fifth():
    samples = np.unique(np.random.default_rng(0).integers(16000, 60 * 16000, 5000))
    rungs = np.array([fixed_length(int(n)) for n in samples])
    assert (rungs >= samples).all() and (rungs <= 2 ** 0.25 * samples + 320).all()  # 19 % and a frame
    assert (rungs % 320 == 0).all() and (np.diff(rungs) >= 0).all()  # whole frames, monotone
    assert len(set(rungs)) <= 25  # shapes a compiled model meets between 1 s and 60 s
    assert fixed_length(100) == 16000 and fixed_length(16000) == 16000


def test_the_collator_pads_to_fixed_lengths_without_changing_the_true_lengths():
    spec = AudioInputSpec(return_attention_mask=True)
    items = [{"name": str(n), "wave": np.ones(n, np.float32), "label": 0, "target": [1], "text": None}
             for n in (20000, 17000)]
    batch = Collator(spec, fixed_lengths=True)(items)
    assert batch.input_values.shape == (2, fixed_length(20000)) and fixed_length(20000) > 20000
    assert batch.sample_lengths.tolist() == [20000, 17000]
    assert batch.attention_mask.sum(dim=1).tolist() == [20000, 17000]
    assert batch.input_values[0, 20000:].abs().sum() == 0
    cached = [dict(it, conv_features=torch.ones(n, 3)) for it, n in zip(items, (62, 53))]
    batch = Collator(spec, fixed_lengths=True)(cached)
    assert batch.input_values is None and batch.conv_features.shape == (2, fixed_length(62, shortest=50, frame=1), 3)
    assert batch.conv_features.shape[1] > 62 and batch.conv_features[1, 53:].abs().sum() == 0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_compile_pads_to_fixed_lengths_only_where_that_changes_no_result(demo, tmp_path, layer_norm):
    """With an attention mask the extra padding is masked; wav2vec2-base has none, and extra
    zeros would enter its group norm, so its batches keep their own length."""
    encoder = layer_norm_encoder(tmp_path) if layer_norm else demo.wav2vec2_model
    model_cfg, run_cfg = run.parse_args(demo.flags(run="cai_sota", wav2vec2=encoder, compile=True, save_path=tmp_path))
    corpus = training_inputs.prepared_corpus(model_cfg, run_cfg)
    for batch in training_loop.make_loader(corpus, np.arange(len(corpus.table)), run_cfg, False, torch.device("cpu")):
        longest = int(batch.sample_lengths.max())
        assert batch.input_values.shape[1] == (fixed_length(longest) if layer_norm else longest)
    assert training_loop.fixed_lengths(run_cfg, corpus.collate.spec) == layer_norm


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_blocks_keep_parameter_names_and_outputs(monkeypatch):
    """compile_regions compiles the blocks in place, and a batch padded to the ladder's rung gives
    the eager outputs. Dynamo traces every block as --compile does; the graphs then run through
    AOTAutograd without inductor's C++ code generation, which takes a minute on a CPU and is
    torch's to test (the GPU, where --compile is meant to run, generates Triton instead)."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda module, **options: compile_module(module, backend="aot_eager", **options))
    model = make_model("mmer", feat_extract_norm="layer", do_stable_layer_norm=True)
    names = list(model.state_dict())
    waves, texts = random_inputs([16000, 11000], [6, 4])
    inputs = pad_batch(waves, texts)
    with torch.no_grad():
        eager = model(**inputs).logits
        training_loop.compile_regions(model, static_shapes=True)
        width = fixed_length(16000 + 1)  # padded to a rung, as the Collator does under --compile
        padded = {**inputs, "input_values": torch.nn.functional.pad(inputs["input_values"], (0, width - 16000)),
                  "attention_mask": torch.nn.functional.pad(inputs["attention_mask"], (0, width - 16000))}
        compiled = model(**padded).logits
    assert list(model.state_dict()) == names  # checkpoints keep their names
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_precision_auto_trains_wide_encoders_in_bf16_on_native_bf16_cpus_and_always_evaluates_in_fp32(monkeypatch):
    from training import loop as training
    from utils import device as devices
    from dataio.dataset import Collator, EmotionDataset
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    assert devices.training_precision(cpu, "auto", 768) == "bf16"
    assert devices.training_precision(cpu, "auto", 32) == "fp32"  # tiny encoders: bf16 is slower
    assert devices.training_precision(cpu, "fp32", 768) == "fp32" and devices.training_precision(cpu, "bf16", 32) == "bf16"
    assert devices.evaluation_precision("auto") == devices.evaluation_precision("fp32") == "fp32"
    monkeypatch.setattr(devices, "BF16_CPU_MIN_HIDDEN", 16)  # the tiny test encoder counts as wide
    model = make_model("mmer")
    seen = []
    model.classifier.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    waves, texts = random_inputs([16000, 11000], [6, 4])
    dataset = EmotionDataset(["a", "b"], [w.numpy() for w in waves], [0, 1], ["HELLO", "NO"],
                             [t.numpy() for t in texts])
    batch = Collator(AudioInputSpec())([dataset[0], dataset[1]])
    model.train()
    training.forward_backward(model, None, batch, 1.0, training_config.RunConfig(precision="auto"), cpu)
    training.predict_loader(model, [batch], cpu, "auto")
    assert seen == [torch.bfloat16, torch.float32]
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)  # emulated bf16: auto stays fp32
    model.train()
    training.forward_backward(model, None, batch, 1.0, training_config.RunConfig(precision="auto"), cpu)
    assert seen[-1] == torch.float32
