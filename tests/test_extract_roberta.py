"""Text-feature extraction: one [1, T, H] float32 .npy per csv row, identical whatever the
batching, resumable, never truncated on disk, with clear errors for bad inputs."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dataio import text_features as extract_roberta
from dataio.text_features import (
    TextFeatureError,
    embed_texts,
    extract,
    load_text_encoder,
    resolve_device,
)
from synthetic.tiny_models import make_tiny_models

REPO = Path(__file__).resolve().parents[1]
TRANSCRIPTS = {
    "Ses01F_impro01_F000": "Excuse me.",
    "Ses01F_impro01_M000": "Do you have your forms?",
    "Ses01M_script01_1_F003": "Well, I think that stupid office was never fair to you, and I hate it.",
    "Ses02F_impro02_M010": "okay",
    "Ses05M_script02_2_F012": "I miss her so much... I'm sorry.",
}


@pytest.fixture(scope="module")
def roberta(tmp_path_factory) -> Path:
    return make_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)["roberta"]


@pytest.fixture(scope="module")
def encoder(roberta):
    return load_text_encoder(roberta, "cpu")


def write_csv(path: Path, transcripts: dict[str, str]) -> Path:
    """A csv laid out like upstream's: unnamed index column, FileName, Sentences, Label, text."""
    table = pd.DataFrame({"FileName": list(transcripts), "Sentences": list(transcripts.values())})
    table["Label"] = "neu"
    table["text"] = table["Sentences"].str.upper()
    table.to_csv(path)
    return path


def run_one_at_a_time(texts, tokenizer, model) -> list[np.ndarray]:
    """Reference: each text through the model alone, no padding involved."""
    with torch.no_grad():
        return [model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].numpy() for text in texts]


def mtimes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}


def test_features_are_float32_1_t_h_with_t_counting_bos_and_eos(tmp_path, roberta, encoder):
    tokenizer, _ = encoder
    counts = extract(write_csv(tmp_path / "iemocap.csv", TRANSCRIPTS), tmp_path / "out", roberta, device="cpu")
    assert counts == {"written": len(TRANSCRIPTS), "skipped": 0}
    for name, text in TRANSCRIPTS.items():
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        features = np.load(tmp_path / "out" / f"{name}.npy")
        assert features.dtype == np.float32 and features.shape == (1, len(ids), 128)


def test_written_features_equal_the_model_run_on_each_utterance_alone(tmp_path, roberta, encoder):
    extract(write_csv(tmp_path / "iemocap.csv", TRANSCRIPTS), tmp_path / "out", roberta, batch_size=3, device="cpu")
    expected = run_one_at_a_time(TRANSCRIPTS.values(), *encoder)
    for name, reference in zip(TRANSCRIPTS, expected):
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{name}.npy")[0], reference, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_batched_embeddings_equal_one_at_a_time_in_input_order(encoder, batch_size):
    texts = list(TRANSCRIPTS.values())
    embeddings = embed_texts(texts, *encoder, device="cpu", batch_size=batch_size)
    for embedding, reference in zip(embeddings, run_one_at_a_time(texts, *encoder), strict=True):
        assert embedding.dtype == np.float32
        np.testing.assert_allclose(embedding, reference, atol=1e-5)


def test_rerun_writes_nothing_and_leaves_files_untouched(tmp_path, roberta):
    csv = write_csv(tmp_path / "iemocap.csv", TRANSCRIPTS)
    extract(csv, tmp_path / "out", roberta, device="cpu")
    before = mtimes(tmp_path / "out")
    assert extract(csv, tmp_path / "out", roberta, device="cpu") == {"written": 0, "skipped": len(TRANSCRIPTS)}
    assert mtimes(tmp_path / "out") == before


def test_rerun_rewrites_only_the_deleted_file(tmp_path, roberta):
    csv = write_csv(tmp_path / "iemocap.csv", TRANSCRIPTS)
    extract(csv, tmp_path / "out", roberta, device="cpu")
    before = mtimes(tmp_path / "out")
    (tmp_path / "out" / "Ses02F_impro02_M010.npy").unlink()
    assert extract(csv, tmp_path / "out", roberta, device="cpu") == {"written": 1, "skipped": len(TRANSCRIPTS) - 1}
    after = mtimes(tmp_path / "out")
    assert after.keys() == before.keys()
    assert [name for name in after if after[name] != before[name]] == ["Ses02F_impro02_M010.npy"]


def test_overwrite_recomputes_every_file(tmp_path, roberta):
    csv = write_csv(tmp_path / "iemocap.csv", TRANSCRIPTS)
    extract(csv, tmp_path / "out", roberta, device="cpu")
    counts = extract(csv, tmp_path / "out", roberta, device="cpu", overwrite=True)
    assert counts == {"written": len(TRANSCRIPTS), "skipped": 0}


def test_failed_write_leaves_no_truncated_or_temporary_file(tmp_path, roberta, encoder, monkeypatch):
    real_save = np.save
    calls = []

    def save_then_fail_on_second_file(handle, array):
        calls.append(handle)
        if len(calls) == 2:
            handle.write(b"\x93NUMPY partial")
            raise OSError("disk full")
        real_save(handle, array)

    monkeypatch.setattr(extract_roberta.np, "save", save_then_fail_on_second_file)
    csv = write_csv(tmp_path / "iemocap.csv", TRANSCRIPTS)
    with pytest.raises(OSError, match="disk full"):
        extract(csv, tmp_path / "out", roberta, batch_size=1, device="cpu")
    left = sorted(p for p in (tmp_path / "out").iterdir() if p.name != "encoder.json")
    assert len(left) == 1 and left[0].suffix == ".npy" and not left[0].name.startswith(".")
    tokenizer, _ = encoder
    assert np.load(left[0]).shape[:2] == (1, len(tokenizer(TRANSCRIPTS[left[0].stem])["input_ids"]))

    monkeypatch.setattr(extract_roberta.np, "save", real_save)
    assert extract(csv, tmp_path / "out", roberta, device="cpu") == {"written": len(TRANSCRIPTS) - 1, "skipped": 1}


def test_empty_transcript_warns_naming_it_and_still_writes_bos_eos(tmp_path, roberta, caplog):
    csv = write_csv(tmp_path / "iemocap.csv", {"Ses01F_impro01_F000": "Excuse me.", "Ses03M_impro03_M001": ""})
    with caplog.at_level(logging.WARNING, logger=extract_roberta.__name__):
        extract(csv, tmp_path / "out", roberta, device="cpu")
    assert any("Ses03M_impro03_M001" in record.getMessage() for record in caplog.records)
    assert np.load(tmp_path / "out" / "Ses03M_impro03_M001.npy").shape == (1, 2, 128)


def test_overlong_transcripts_are_truncated_with_one_warning_naming_them(tmp_path, roberta, caplog):
    long_ones = {"Ses01F_impro01_F001": "I hate this. " * 100, "Ses01F_impro01_F002": "okay " * 300}
    csv = write_csv(tmp_path / "iemocap.csv", {**long_ones, "Ses01F_impro01_F000": "Excuse me."})
    with caplog.at_level(logging.WARNING, logger=extract_roberta.__name__):
        extract(csv, tmp_path / "out", roberta, device="cpu")
    warnings = [record.getMessage() for record in caplog.records if "truncated" in record.getMessage()]
    assert len(warnings) == 1 and all(name in warnings[0] for name in long_ones)
    for name in long_ones:
        features = np.load(tmp_path / "out" / f"{name}.npy")
        assert features.shape == (1, 128, 128)


def test_missing_csv_is_named_in_the_error(tmp_path, roberta):
    with pytest.raises(TextFeatureError, match="nowhere.csv: csv not found"):
        extract(tmp_path / "nowhere.csv", tmp_path / "out", roberta, device="cpu")


def test_csv_without_sentences_lists_the_columns_it_has(tmp_path, roberta):
    csv = tmp_path / "bad.csv"
    pd.DataFrame({"FileName": ["a"], "Transcript": ["hi"]}).to_csv(csv, index=False)
    expected = r"bad.csv: missing column\(s\) \['Sentences'\]; it has \['FileName', 'Transcript'\]"
    with pytest.raises(TextFeatureError, match=expected):
        extract(csv, tmp_path / "out", roberta, device="cpu")


def test_repeated_filename_is_an_error_naming_it(tmp_path, roberta):
    csv = tmp_path / "dup.csv"
    pd.DataFrame({"FileName": ["a", "b", "a"], "Sentences": ["x", "y", "z"]}).to_csv(csv, index=False)
    with pytest.raises(TextFeatureError, match="FileName repeated.*: a$"):
        extract(csv, tmp_path / "out", roberta, device="cpu")


def test_missing_model_folder_says_to_pass_a_save_pretrained_folder(tmp_path):
    with pytest.raises(TextFeatureError, match="no config.json.*save_pretrained"):
        load_text_encoder(tmp_path / "no_such_model", "cpu")


def test_device_auto_picks_cuda_only_when_available(roberta):
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TextFeatureError, match="CUDA is not available"):
            load_text_encoder(roberta, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_embeddings_match_cpu(roberta, encoder):
    texts = list(TRANSCRIPTS.values())
    on_gpu = embed_texts(texts, *load_text_encoder(roberta, "cuda"), batch_size=2)
    for gpu, cpu in zip(on_gpu, embed_texts(texts, *encoder, device="cpu", batch_size=2), strict=True):
        np.testing.assert_allclose(gpu, cpu, atol=1e-3)


def test_cli_writes_features_and_reports_bad_csv_without_traceback(tmp_path, roberta):
    csv = write_csv(tmp_path / "iemocap.csv", TRANSCRIPTS)
    command = [sys.executable, "data_prep/extract_roberta.py", "--out_dir", str(tmp_path / "out"),
               "--roberta", str(roberta), "--device", "cpu", "--batch_size", "2"]
    result = subprocess.run(command + ["--csv", str(csv)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(path.stem for path in (tmp_path / "out").glob("*.npy")) == sorted(TRANSCRIPTS)
    failed = subprocess.run(command + ["--csv", str(tmp_path / "nope.csv")], cwd=REPO, capture_output=True, text=True)
    assert failed.returncode != 0 and "nope.csv: csv not found" in failed.stderr and "Traceback" not in failed.stderr


def test_resuming_with_another_encoder_is_refused(tmp_path, tiny_dirs_for_stamp):
    first, second = tiny_dirs_for_stamp
    csv = tmp_path / "t.csv"
    pd.DataFrame({"FileName": ["Ses01F_impro01_F000"], "Sentences": ["I know."]}).to_csv(csv, index=False)
    extract(csv, tmp_path / "out", roberta=first, device="cpu")
    with pytest.raises(TextFeatureError, match="another text encoder"):
        extract(csv, tmp_path / "out", roberta=second, device="cpu")
    assert extract(csv, tmp_path / "out", roberta=second, device="cpu", overwrite=True)["written"] == 1


@pytest.fixture
def tiny_dirs_for_stamp(tmp_path, roberta):
    from transformers import AutoTokenizer, RobertaModel

    from synthetic.tiny_models import tiny_roberta_config
    other = tmp_path / "other_roberta"
    RobertaModel(tiny_roberta_config(hidden_size=32, intermediate_size=64)).save_pretrained(other)
    AutoTokenizer.from_pretrained(roberta).save_pretrained(other)
    return roberta, other


def test_two_torchrun_processes_write_the_files_of_one_each_utterance_alone(tmp_path, roberta, encoder):
    """Rows dealt out r, r+2, ...: every file equals the model run on that utterance alone, the
    encoder stamp is written once, and a rerun under torchrun writes nothing."""
    csv = write_csv(tmp_path / "t.csv", TRANSCRIPTS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "data_prep/extract_roberta.py", "--csv", str(csv), "--out_dir", str(tmp_path / "feats"),
               "--roberta", str(roberta), "--device", "cpu", "--batch_size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert launch.returncode == 0, launch.stderr[-3000:]
    alone = run_one_at_a_time(list(TRANSCRIPTS.values()), *encoder)
    for name, expected in zip(TRANSCRIPTS, alone):
        np.testing.assert_allclose(np.load(tmp_path / "feats" / f"{name}.npy")[0], expected, atol=1e-5)
    written = [line for line in launch.stderr.splitlines() if "wrote" in line]
    assert sorted(int(line.split("wrote ")[1].split()[0]) for line in written) == [2, 3]   # disjoint shares
    before = mtimes(tmp_path / "feats")
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and mtimes(tmp_path / "feats") == before
