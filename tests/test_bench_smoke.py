"""The throughput bench's measuring core on a handful of synthetic utterances and tiny
encoders: the figures it reports are sane (no timing thresholds: machines differ); and
bench/gpu_check.sh's dry run on CPU goes through every step and prints every summary field."""
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import train_throughput as bench
from dataio.text_features import extract
from dataio.iemocap import prepare
from synthetic.iemocap import make_corpus
from synthetic.tiny_models import make_tiny_models
from models import ModelConfig
from dataio.dataset import BucketBatchSampler, RandomBatchSampler, fixed_length
from training import config as training_config
from training import flops
from training import loop as training_loop

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
# The bench on tiny encoders over 10 utterances of a 60-utterance corpus, one thread: seconds.
TINY_BENCH = ["--device", "cpu", "--size", "tiny", "--eval_size", "tiny", "--runs", "mmer", "--corpus_per_session",
              "12", "--utterances", "10", "--rtf_utterances", "0", "--no_flops", "--threads", "1", "--matmul_size",
              "256", "--warmup_steps", "1", "--rounds", "1", "--no-ladder", "--no-cpu_bf16_row", "--no-conv_cache_row",
              "--eval_utterances", "4"]
SUMMARY_FIELDS = ["device", "matmul_peak_tflops", "fold_epoch_seconds", "protocol_minutes_per_variant",
                  "speedup_vs_upstream_config", "peak_memory_mb", "fraction_of_matmul_peak",
                  "eval_exact_over_padded_time", "compile", "cache_conv_features", "ladder", "steps", "json"]


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
    run_cfg = training_config.RunConfig(csv_path=str(root / "prepared" / "iemocap.csv"),
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
    ours = bench.ours_settings({}, CPU, hidden_size=32)  # run.py's defaults: a tiny encoder trains in fp32 on CPU
    assert ours["precision"] == "fp32"
    arms = bench.arms_for(ours, ladder=True)
    assert arms[0].role == "upstream" and arms[0].data == "disk" and arms[0].settings == bench.UPSTREAM
    assert [arm.settings for arm in arms if arm.role == "ours"] == [ours]
    bf16 = bench.arms_for({**ours, "precision": "bf16"}, ladder=True)
    assert len(bf16) == len(arms) + 1 and "precision=bf16" in next(a.label for a in bf16 if a.role == "ours")


def test_flop_model_counts_train_above_eval_and_predicts_an_unseen_length(tiny_setup):
    model_cfg = dataclasses.replace(tiny_setup[0])
    model = training_loop.build_training(model_cfg, training_config.RunConfig(), CPU)[0]
    lengths = (2.0, 4.0, 8.0)
    train = flops.fit_flop_model(model, model_cfg, CPU, train=True, lengths_s=lengths)
    evaluation = flops.fit_flop_model(model, model_cfg, CPU, train=False, lengths_s=lengths)
    assert train(bench.SR) > evaluation(bench.SR) > 0
    exact = flops.count_flops(model, model_cfg, 6.0, CPU, train=True)
    assert train(6 * bench.SR) == pytest.approx(exact, rel=0.01)


def test_grouped_conv_backward_costs_twice_its_forward():
    conv = torch.nn.Conv1d(16, 16, kernel_size=5, groups=4)
    x = torch.randn(2, 16, 50, requires_grad=True)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as forward:
        out = conv(x)
    with torch.utils.flop_counter.FlopCounterMode(display=False, custom_mapping=flops.FLOP_FORMULAS) as backward:
        out.sum().backward()
    assert backward.get_total_flops() == 2 * forward.get_total_flops()


def test_the_optional_rows_are_ours_with_one_change():
    ours = bench.ours_settings({}, CPU, hidden_size=32)
    arms = bench.arms_for(ours, ladder=False, cpu_bf16=True, conv_cache=True)
    by_role = {arm.role: arm for arm in arms}
    assert by_role["ours"].settings == ours and by_role["upstream"].settings == bench.UPSTREAM
    assert by_role["precision"].settings == ours | {"precision": "bf16"}
    in_bf16 = bench.arms_for(ours | {"precision": "bf16"}, ladder=False, cpu_bf16=True)  # auto at base size
    assert next(a for a in in_bf16 if a.role == "precision").settings == ours | {"precision": "fp32"}
    assert by_role["conv_cache"].settings == ours | {"cache_conv_features": True}
    assert [arm.role for arm in bench.arms_for(ours, ladder=False)] == ["upstream", "ours"]


def test_padding_is_counted_to_the_fixed_lengths_that_compile_pads_to():
    lengths = np.array([20000, 17000, 9000])
    assert bench.padded_totals(lengths, [[0, 1], [2]]) == (46000, 2 * 20000 + 9000)
    fixed = bench.padded_totals(lengths, [[0, 1], [2]], fixed=True)
    assert fixed == (46000, 2 * fixed_length(20000) + fixed_length(9000)) and fixed[1] > 49000


def test_also_rows_are_ours_with_one_setting_changed():
    ours = bench.ours_settings({}, CPU)
    arms = bench.arms_for(ours, ladder=False, also=[("gradient_checkpointing", True), ("compile", True)])
    also = [arm for arm in arms if arm.role == "also"]
    assert [arm.label for arm in also] == ["ours + --gradient_checkpointing", "ours + --compile"]
    assert [arm.settings for arm in also] == [ours | {"gradient_checkpointing": True}, ours | {"compile": True}]


def test_each_row_is_quoted_against_the_peak_of_its_precision_on_cpu_and_bf16_on_gpu():
    row = bench.Measurement("ours", "ours", seconds=2.0, micro_batches=1, audio_seconds=1.0, padded_seconds=1.0,
                            epoch_padding_efficiency=1.0, epoch_seconds=2.0, epoch_measured=True, peak_memory_mb=1.0,
                            precision="fp32", useful_flops=4e12)
    peak = {"tflops": {"fp32": 4.0, "bf16": 16.0}}
    assert bench.efficiency(row, peak, CPU) == pytest.approx(
        {"achieved_tflops": 2.0, "peak_tflops": 4.0, "peak_precision": "fp32", "fraction_of_matmul_peak": 0.5})
    assert bench.efficiency(row, peak, torch.device("cuda"))["fraction_of_matmul_peak"] == pytest.approx(0.125)
    assert bench.efficiency(dataclasses.replace(row, precision="bf16"), peak, CPU)["peak_tflops"] == 16.0


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """bench/train_throughput.py's main on tiny encoders: (its stdout, its json, the bench folder)."""
    bench_dir, out = tmp_path_factory.mktemp("bench-cache"), tmp_path_factory.mktemp("bench-out") / "tiny.json"
    threads = torch.get_num_threads()
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
            bench.main(TINY_BENCH + ["--bench_dir", str(bench_dir), "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    return stdout.getvalue(), json.loads(out.read_text()), bench_dir


def test_matmul_peak_and_each_rows_fraction_of_it_are_printed_and_sane(tiny_bench):
    stdout, record, _ = tiny_bench
    assert re.search(r"measured matmul peak \(torch.mm 256x256.*fp32 [0-9.e+-]+ TFLOP/s", stdout)
    rows = re.findall(r"achieved_tflops ([0-9.e+-]+)\s+peak_tflops ([0-9.e+-]+) \((fp32|bf16)\)\s+"
                      r"fraction_of_matmul_peak ([0-9.]+)", stdout)
    assert len(rows) == len(record["measurements"]) == 2  # upstream and ours
    for achieved, peak, precision, fraction in rows:
        assert precision == "fp32" and float(achieved) > 0 and float(peak) > 0
        assert 0 < float(fraction) < 1.5 and float(fraction) == pytest.approx(float(achieved) / float(peak), rel=0.01, abs=5e-4)  # printed to 3 decimals
    assert record["matmul_peak"]["tflops"]["fp32"] > 0
    assert all(0 < m["fraction_of_matmul_peak"] < 1.5 for m in record["measurements"])


def test_evaluation_is_timed_exact_and_padded_for_both_encoder_norms(tiny_bench):
    stdout, record, _ = tiny_bench
    for name in ("group norm, no attention mask", "layer norm + attention mask"):
        line = next(line for line in stdout.splitlines() if line.strip().startswith(name))
        assert re.search(r"exact [0-9.]+ s \([0-9.]+ audio-s/s.*\| padded [0-9.]+ s \([0-9.]+ audio-s/s.*"
                         r"exact_over_padded_time [0-9.]+", line), line
    group, layer = record["evaluation"]
    assert (group["encoder_norm"], group["padding_exact"], layer["padding_exact"]) == ("group", False, True)
    for row in (group, layer):
        assert row["exact"]["seconds"] > 0 and row["padded"]["seconds"] > 0
        assert row["padded"]["batches"] == -(-row["utterances"] // bench.EVAL_BATCH)
    # group norm: no two of these utterances share a length, so each is scored alone and nothing is padded;
    # layer norm with a mask: the padded batches are exact, so exact evaluation batches them the same way
    assert group["exact"]["batches"] == group["utterances"] and group["exact"]["padding_efficiency"] == 1
    assert layer["exact"]["batches"] == layer["padded"]["batches"]
    assert "fold_epoch_seconds" in stdout and record["fold_epoch_projection"]["fold_epoch_seconds"] > 0


def test_gpu_check_dry_run_runs_every_step_and_prints_every_summary_field(tiny_bench, tmp_path):
    """The dry run reuses the corpus and encoders the bench fixture built; its own deadline keeps
    it near a minute, cutting the last steps short (reported, not fatal). No timing is asserted
    here: speed is the benches' business."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "BENCH_DIR": str(tiny_bench[2]), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("gpu_check summary"):]
    for key in SUMMARY_FIELDS:
        assert re.search(rf"^{key}: \S", summary, re.MULTILINE), f"{key} missing from\n{summary}"
    for key in SUMMARY_FIELDS[:8]:  # the main step's figures
        assert not re.search(rf"^{key}: n/a", summary, re.MULTILINE), summary
    steps = re.search(r"^steps: (.*)$", summary, re.MULTILINE).group(1)
    assert re.findall(r"(\w+) (?:ok|failed|timed out|skipped)", steps) == ["prepare", "main", "cache", "compile",
                                                                           "ladder"]
    assert "main ok" in steps and "compile ok" not in steps  # compiling on a CPU takes minutes: cut, reported
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert figures["dry_run"] and figures["summary"]["speedup_vs_upstream_config"] > 0


def test_corpus_scale_bench_prints_every_figure_of_a_tiny_corpus(tmp_path):
    """bench/corpus_scale.py end to end on 2 minutes of audio and a 300-row table: the debug run
    under /usr/bin/time -v (cold and warm cache), the probe and the header check."""
    done = subprocess.run([sys.executable, "bench/corpus_scale.py", "--hours", "0.03", "--rows", "300", "--steps", "2",
                           "--probe_steps", "2", "--skip", "demo", "--bench_dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    table = re.search(r"table of (\d+) rows: read ([\d.]+) s, read and check every header ([\d.]+) s", done.stdout)
    assert table and table.group(1) == "300"
    row = re.search(r"^\| 0.03 \| (\d+) \| ([\d.]+) \| (\d+) \| (\d+) \|", done.stdout, re.M)
    assert row, done.stdout
    utterances, cache_gb, cold_rss, warm_rss = int(row.group(1)), float(row.group(2)), int(row.group(3)), int(row.group(4))
    assert utterances >= 2 * 60 / 30 and 100 < cold_rss and 100 < warm_rss   # MB: a Python with torch loaded
    assert cache_gb < 0.01                                                    # 2 minutes of int16 audio: 4 MB
    audio = sorted((tmp_path / "run_0.03h" / "cache" / "audio").iterdir())
    assert len(audio) == 1 and (audio[0] / "meta.json").is_file()           # built once, reused by the warm run
