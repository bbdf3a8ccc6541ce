"""Corpora bigger than memory (issue 21, part 2): run.py streams every item from the
decode-once caches of dataio/store.py. The expected values come from the in-memory path
(dataio.dataset.load_waves / load_text_features, what run.py held before), from read_audio and
np.load of the source files, and from soundfile's own int16 -> float conversion."""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import Wav2Vec2FeatureExtractor

from dataio import corpus
import run
from training import loop as training
from models.encoders import AudioInputSpec, audio_input_spec
from dataio.audio import read_audio
from dataio.dataset import EmotionDataset, load_text_features, load_waves, stored_text_features, stored_waves
from dataio.store import Store, built, write_items
from training import folds as training_folds
from training import inputs as training_inputs


def configs(demo, tmp_path, **overrides):
    return run.parse_args(demo.flags(run="mmer", sessions="1", epochs=1, save_path=tmp_path / "runs", **overrides))


def in_memory_twin(streamed, model_cfg, run_cfg):
    """The same corpus with every item held in memory, as run.py held it before the caches."""
    frame = streamed.table
    spec = audio_input_spec(model_cfg.wav2vec2)
    waves = load_waves(corpus.audio_paths(frame, run_cfg.data_path_audio), spec, show_progress=False,
                       max_samples=model_cfg.max_audio_samples)
    text = load_text_features(frame["FileName"], run_cfg.data_path_roberta, show_progress=False)
    dataset = EmotionDataset(frame["FileName"], waves, frame["label_index"], frame["text"], text, run_cfg.ctc_text)
    return training_inputs.Corpus(frame, dataset, streamed.collate, streamed.padding_exact, streamed.scheme,
                           streamed.label_set)


def train_one_fold(corpus_, model_cfg, run_cfg, run_dir, monkeypatch):
    """training_folds.run_fold on corpus_, recording every training micro-batch as it reaches the model."""
    seen = []
    original = training.forward_backward

    def recording(model, ddp, batch, *args, **kwargs):
        seen.append((tuple(batch.names), batch.input_values.clone(), batch.text.clone(), batch.labels.clone(),
                     batch.ctc_targets.clone()))
        return original(model, ddp, batch, *args, **kwargs)
    monkeypatch.setattr(training, "forward_backward", recording)
    run_dir.mkdir(parents=True)
    metrics = training_folds.run_fold("1", corpus_, model_cfg, run_cfg, torch.device("cpu"), run_dir)
    monkeypatch.setattr(training, "forward_backward", original)
    return seen, [json.loads(line) for line in (run_dir / "1_stats.txt").read_text().splitlines()], metrics


@pytest.fixture(scope="module")
def streamed_demo(demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streamed")
    model_cfg, run_cfg = configs(demo, tmp)
    return training_inputs.prepared_corpus(model_cfg, run_cfg), model_cfg, run_cfg, tmp


def test_every_streamed_item_equals_the_in_memory_item(streamed_demo):
    streamed, model_cfg, run_cfg, _ = streamed_demo
    memory = in_memory_twin(streamed, model_cfg, run_cfg)
    assert isinstance(streamed.dataset.waves.samples, Store) and isinstance(streamed.dataset.text_features, Store)
    assert streamed.dataset.waves.samples.dtype == np.int16      # the demo is 16-bit PCM at 16 kHz: exact in int16
    np.testing.assert_array_equal(streamed.dataset.lengths(), memory.dataset.lengths())
    for i in range(len(memory.dataset)):
        ours, theirs = streamed.dataset[i], memory.dataset[i]
        assert ours["wave"].dtype == theirs["wave"].dtype == np.float32
        np.testing.assert_array_equal(ours["wave"], theirs["wave"])
        np.testing.assert_array_equal(ours["text"], theirs["text"])
        assert (ours["label"], ours["target"], ours["name"]) == (theirs["label"], theirs["target"], theirs["name"])
        saved = np.load(Path(run_cfg.data_path_roberta) / f"{streamed.table['FileName'][i]}.npy")
        np.testing.assert_array_equal(ours["text"], saved.reshape(-1, saved.shape[-1]))   # the utterance's own file


@pytest.mark.parametrize("workers", [0, 2])
def test_the_streamed_corpus_trains_with_the_batches_and_losses_of_the_in_memory_one(
        streamed_demo, workers, monkeypatch):
    streamed, model_cfg, run_cfg, tmp = streamed_demo
    memory = in_memory_twin(streamed, model_cfg, run_cfg)
    run_cfg.num_workers = workers
    try:
        ran = {}
        for name, corpus_ in (("memory", memory), ("streamed", streamed)):
            ran[name] = train_one_fold(corpus_, model_cfg, run_cfg, tmp / f"{name}-{workers}", monkeypatch)
    finally:
        run_cfg.num_workers = 0
    (mem_batches, mem_stats, mem_metrics), (batches, stats, metrics) = ran["memory"], ran["streamed"]
    assert len(batches) == len(mem_batches) > 3
    for ours, theirs in zip(batches, mem_batches):
        assert ours[0] == theirs[0]
        for a, b in zip(ours[1:], theirs[1:]):
            assert torch.equal(a, b)
    for ours, theirs in zip(stats, mem_stats):
        assert [ours[k] for k in ("loss", "ce_loss", "ctc_loss")] == [theirs[k] for k in ("loss", "ce_loss", "ctc_loss")]
    assert metrics == mem_metrics


def test_the_dataset_holds_no_audio_so_its_size_does_not_grow_with_the_corpus(streamed_demo):
    """What a DataLoader worker receives and what each process keeps: the index, not the samples."""
    streamed, *_ = streamed_demo
    audio_bytes = int(streamed.dataset.lengths().sum()) * 4
    assert len(pickle.dumps(streamed.dataset)) < audio_bytes / 20


def test_a_changed_audio_file_builds_a_new_cache_and_never_reads_the_stale_one(tmp_path):
    spec = AudioInputSpec()
    paths = []
    for i, n in enumerate((16000, 24000)):
        paths.append(tmp_path / f"u{i}.wav")
        sf.write(paths[-1], np.random.default_rng(i).uniform(-0.5, 0.5, n), 16000, subtype="PCM_16")
    first = stored_waves(paths, spec, tmp_path / "cache", show_progress=False)
    stamp = paths[1].stat().st_mtime
    sf.write(paths[1], np.zeros(24000), 16000, subtype="PCM_16")   # the same size: only the time tells
    os.utime(paths[1], (stamp + 1, stamp + 1))
    second = stored_waves(paths, spec, tmp_path / "cache", show_progress=False)
    assert first.samples.folder != second.samples.folder
    assert not second[1].any() and first[1].any()             # the old cache is left as it was
    again = stored_waves(paths, spec, tmp_path / "cache", show_progress=False)
    assert again.samples.folder == second.samples.folder       # nothing changed: no rebuild


def test_audio_that_is_not_16_bit_pcm_at_the_encoder_rate_is_cached_exactly_as_float32(tmp_path):
    spec = AudioInputSpec()
    paths = [tmp_path / "pcm16.wav", tmp_path / "cd.wav", tmp_path / "float.flac"]
    rng = np.random.default_rng(0)
    sf.write(paths[0], rng.uniform(-0.5, 0.5, 16000), 16000, subtype="PCM_16")
    sf.write(paths[1], rng.uniform(-0.5, 0.5, (44100, 2)), 44100, subtype="PCM_16")   # resampled, two channels
    sf.write(paths[2], rng.uniform(-0.5, 0.5, 12000), 16000, subtype="PCM_24")
    waves = stored_waves(paths, spec, tmp_path / "cache", show_progress=False, max_samples=14000)
    assert waves.samples.dtype == np.float32
    for i, path in enumerate(paths):
        decoded = read_audio(path, 16000)
        np.testing.assert_array_equal(waves.samples[i], decoded)     # stored exactly as decoded
        normalised = Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm([decoded[:14000]], None)[0]
        np.testing.assert_allclose(waves[i], normalised, atol=1e-5)  # cut, then normalised as the extractor does
    assert waves.lengths().tolist() == [14000, 14000, 12000]


def test_int16_storage_reproduces_soundfiles_float_samples_bit_for_bit(tmp_path):
    samples = np.array([-32768, -1, 0, 1, 12345, 32767], np.int16)
    sf.write(tmp_path / "a.wav", samples, 16000, subtype="PCM_16")
    waves = stored_waves([tmp_path / "a.wav"], AudioInputSpec(), tmp_path / "cache", show_progress=False)
    assert waves.samples.dtype == np.int16
    np.testing.assert_array_equal(waves.samples[0], sf.read(tmp_path / "a.wav", dtype="float32")[0])


def test_text_features_stream_as_saved_in_any_accepted_shape(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"a": rng.standard_normal((1, 5, 8)).astype(np.float32), "b": rng.standard_normal((3, 8)).astype(np.float32)}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    store = stored_text_features(["a", "b"], tmp_path, tmp_path / "cache", show_progress=False)
    np.testing.assert_array_equal(store[0], arrays["a"][0])
    np.testing.assert_array_equal(store[1], arrays["b"])
    assert store.lengths().tolist() == [5, 3]


def test_a_build_that_fails_leaves_no_store_and_the_next_one_builds_it(tmp_path):
    def broken(folder):
        write_items(folder, iter([np.ones(3, np.float32), None]), np.float32)
    with pytest.raises(AttributeError):
        built(tmp_path / "s", broken, "test")
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.partial*"))
    store = built(tmp_path / "s", lambda f: write_items(f, iter([np.arange(4, dtype=np.float32)]), np.float32), "test")
    assert store[0].tolist() == [0, 1, 2, 3] and store.read(0, rows=2).tolist() == [0, 1]


def test_a_store_written_out_of_order_reads_back_by_item(tmp_path):
    arrays = [np.full((n, 2), n, np.float32) for n in (3, 1, 2)]
    write_items(tmp_path / "s", iter([arrays[2], arrays[0], arrays[1]]), np.float32, tail=(2,), order=[2, 0, 1])
    store = Store(tmp_path / "s")
    for i, array in enumerate(arrays):
        np.testing.assert_array_equal(store[i], array)
