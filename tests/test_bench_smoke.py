"""The throughput bench's measuring core on a handful of synthetic utterances and tiny
encoders: the figures it reports are sane (no timing thresholds: machines differ)."""
import dataclasses

import numpy as np
import pytest
import torch

import run
from bench import train_throughput as bench
from data_prep.extract_roberta import extract
from data_prep.iemocap_prep import prepare
from data_prep.make_synthetic_iemocap import make_corpus
from data_prep.make_tiny_models import make_tiny_models
from models import ModelConfig
from utils.data import BucketBatchSampler, RandomBatchSampler, fixed_length

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops gain nothing from a second thread, and on a busy machine (pytest -n 2) two
    spinning OpenMP threads per process slow this file down tens of times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    make_corpus(root / "release", per_session=2, seed=0, durations="short")
    prepare(root / "release", root / "prepared", link=True)
    models = make_tiny_models(root / "models", seed=0)
    extract(root / "prepared" / "iemocap.csv", root / "roberta", roberta=str(models["roberta"]), device="cpu")
    model_cfg = ModelConfig(run="mmer", wav2vec2=str(models["wav2vec2"]))
    run_cfg = run.RunConfig(csv_path=str(root / "prepared" / "iemocap.csv"),
                            data_path_audio=str(root / "prepared" / "audio"), data_path_roberta=str(root / "roberta"))
    corpus = bench.quiet_load_corpus(model_cfg, run_cfg)
    sources = {"audio": root / "prepared" / "audio", "roberta": root / "roberta", "max_samples": None}
    return model_cfg, run_cfg, corpus, sources


def test_upstream_and_ours_report_sane_figures(tiny_setup):
    model_cfg, run_cfg, corpus, sources = tiny_setup
    indices = np.arange(len(corpus.table))
    plan = bench.Plan(warmup_steps=1, epochs=1)
    for arm in bench.arms_for(bench.ours_settings({}, CPU), ladder=False):
        m = bench.measure_arm(arm, model_cfg, corpus, indices, run_cfg, CPU, plan, sources)
        assert m.seconds > 0 and m.throughput > 0 and m.peak_memory_mb > 0
        assert 0 < m.padding_efficiency <= 1 and 0 < m.epoch_padding_efficiency <= 1
        # one full epoch was timed: every utterance once
        assert m.epoch_measured and m.audio_seconds == pytest.approx(corpus.dataset.lengths().sum() / bench.SR)


def test_bucketing_pads_no_more_than_random_batching(tiny_setup):
    lengths = tiny_setup[2].dataset.lengths()
    for epoch in range(3):
        efficiency = {}
        for sampler_cls in (BucketBatchSampler, RandomBatchSampler):
            sampler = sampler_cls(lengths, batch_size=4, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            real, padded = bench.padded_totals(lengths, sampler.batches())
            assert real == lengths.sum()
            efficiency[sampler_cls] = real / padded
        assert 0 < efficiency[RandomBatchSampler] <= efficiency[BucketBatchSampler] <= 1


def test_ladder_goes_from_upstream_to_ours():
    ours = bench.ours_settings({}, CPU)  # run.py's defaults, precision auto = fp32 on CPU
    arms = bench.arms_for(ours, ladder=True)
    assert arms[0].role == "upstream" and arms[0].data == "disk" and arms[0].settings == bench.UPSTREAM
    assert [arm.settings for arm in arms if arm.role == "ours"] == [ours]
    bf16 = bench.arms_for({**ours, "precision": "bf16"}, ladder=True)
    assert len(bf16) == len(arms) + 1 and "precision=bf16" in next(a.label for a in bf16 if a.role == "ours")


def test_flop_model_counts_train_above_eval_and_predicts_an_unseen_length(tiny_setup):
    model_cfg = dataclasses.replace(tiny_setup[0])
    model = run.build_training(model_cfg, run.RunConfig(), CPU)[0]
    lengths = (2.0, 4.0, 8.0)
    train = bench.fit_flop_model(model, model_cfg, CPU, train=True, lengths_s=lengths)
    evaluation = bench.fit_flop_model(model, model_cfg, CPU, train=False, lengths_s=lengths)
    assert train(bench.SR) > evaluation(bench.SR) > 0
    exact = bench.count_flops(model, model_cfg, 6.0, CPU, train=True)
    assert train(6 * bench.SR) == pytest.approx(exact, rel=0.01)


def test_grouped_conv_backward_costs_twice_its_forward():
    conv = torch.nn.Conv1d(16, 16, kernel_size=5, groups=4)
    x = torch.randn(2, 16, 50, requires_grad=True)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as forward:
        out = conv(x)
    with torch.utils.flop_counter.FlopCounterMode(display=False, custom_mapping=bench.FLOP_FORMULAS) as backward:
        out.sum().backward()
    assert backward.get_total_flops() == 2 * forward.get_total_flops()


def test_the_optional_rows_are_ours_with_one_change():
    ours = bench.ours_settings({}, CPU)
    arms = bench.arms_for(ours, ladder=False, cpu_bf16=True, conv_cache=True)
    by_role = {arm.role: arm for arm in arms}
    assert by_role["ours"].settings == ours and by_role["upstream"].settings == bench.UPSTREAM
    assert by_role["bf16"].settings == ours | {"precision": "bf16"}
    assert by_role["conv_cache"].settings == ours | {"cache_conv_features": True}
    assert [arm.role for arm in bench.arms_for(ours, ladder=False)] == ["upstream", "ours"]


def test_padding_is_counted_to_the_fixed_lengths_that_compile_pads_to():
    lengths = np.array([20000, 17000, 9000])
    assert bench.padded_totals(lengths, [[0, 1], [2]]) == (46000, 2 * 20000 + 9000)
    fixed = bench.padded_totals(lengths, [[0, 1], [2]], fixed=True)
    assert fixed == (46000, 2 * fixed_length(20000) + fixed_length(9000)) and fixed[1] > 49000
