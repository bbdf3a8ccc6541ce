"""Our models, losses and CTC targets against upstream MMER's own numbers (tests/reference/
upstream_fixture, see its README): six Session-2 utterances scored by upstream's MMI_Model,
CAI_SOTA and UNI_BASELINE with weights made from their names by a fixed rule."""
import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import run
from models.base import EmotionOutput, ctc_loss
from models.checkpoint import restore_model
from dataio.dataset import Collator, EmotionDataset, ExactBatchSampler, load_waves, load_text_features
from dataio.text import clean_transcript, ctc_target_ids
from models.encoders import audio_input_spec

FIXTURE = Path(__file__).resolve().parent / "reference" / "upstream_fixture"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())["variants"]
RUNS = list(EXPECTED)


def fill(key: str, shape: tuple) -> torch.Tensor:
    """The fixture's weight rule (its README): a tensor made from the key's crc32."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))
    if len(shape) <= 1 or key.endswith("weight_g"):
        return 1 + 0.1 * z if key.endswith((".weight", "weight_g")) else 0.1 * z
    return z / math.sqrt(math.prod(shape[1:]))


def upstream_state_dict(run_name: str) -> dict:
    state = {}
    for line in (FIXTURE / f"keys_{run_name}.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        state[key] = fill(key, tuple(int(n) for n in shape.strip("()").split(",") if n.strip()))
    return state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """Upstream-format checkpoints `<run>/2_model.pt` ({'state_dict': ...} only, as upstream saved)."""
    root = tmp_path_factory.mktemp("upstream_checkpoints")
    for run_name in RUNS:
        (root / run_name).mkdir()
        torch.save({"state_dict": upstream_state_dict(run_name)}, root / run_name / "2_model.pt")
    return root


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(FIXTURE / "fixture.csv", keep_default_na=False)


def expected(run_name: str, table: pd.DataFrame, key: str) -> np.ndarray:
    return np.array([EXPECTED[run_name]["utterances"][name][key] for name in table["FileName"]])


def reevaluate(checkpoints: Path, run_name: str, save: Path, *extra) -> pd.DataFrame:
    """The README's re-evaluation command with its default flags (on the fixture's files)."""
    run.main(["--run", run_name, "--eval_only", "--checkpoint_dir", str(checkpoints / run_name),
              "--wav2vec2", str(FIXTURE / "wav2vec2"), "--csv_path", str(FIXTURE / "fixture.csv"),
              "--data_path_audio", str(FIXTURE / "audio"), "--data_path_roberta", str(FIXTURE / "roberta"),
              "--save_path", str(save), *extra])
    return pd.read_csv(save / run_name / "2_predictions.csv").set_index("FileName")


@pytest.mark.parametrize("run_name", RUNS)
def test_eval_only_with_default_flags_gives_upstreams_probabilities(checkpoints, table, run_name, tmp_path):
    predictions = reevaluate(checkpoints, run_name, tmp_path)
    probs = predictions.loc[table["FileName"], ["prob_hap", "prob_ang", "prob_neu", "prob_sad"]].to_numpy()
    np.testing.assert_allclose(probs, expected(run_name, table, "probs"), atol=1e-4)


@pytest.fixture(scope="module")
def doubled(tmp_path_factory, table) -> Path:
    """The fixture twice over: each utterance also as a copy under another speaker's id (same audio,
    same features), so every utterance has a batch-mate of its length to share a batch with."""
    root = tmp_path_factory.mktemp("doubled")
    (root / "audio").mkdir(), (root / "roberta").mkdir()
    copies = table.assign(FileName=table["FileName"].str[:-3] + "9" + table["FileName"].str[-2:])
    for original, copy in zip(table["FileName"], copies["FileName"]):
        for name in (original, copy):
            shutil.copy(FIXTURE / "audio" / f"{original}.wav", root / "audio" / f"{name}.wav")
            shutil.copy(FIXTURE / "roberta" / f"{original}.npy", root / "roberta" / f"{name}.npy")
    pd.concat([table, copies]).to_csv(root / "fixture.csv", index=False)
    return root


@pytest.mark.parametrize("batch_size", ["1", "6"])
def test_probabilities_do_not_depend_on_the_evaluation_batch_size(checkpoints, table, doubled, batch_size,
                                                                 tmp_path, monkeypatch):
    """Batches of equal-length utterances do form at 6 (recorded below), and every utterance, the
    copies too, still gets upstream's batch-1 probabilities."""
    sizes = []
    batches = ExactBatchSampler.batches
    monkeypatch.setattr(ExactBatchSampler, "batches", lambda self: sizes.append([len(b) for b in batches(self)])
                        or batches(self))
    run.main(["--run", "mmer", "--eval_only", "--checkpoint_dir", str(checkpoints / "mmer"),
              "--wav2vec2", str(FIXTURE / "wav2vec2"), "--csv_path", str(doubled / "fixture.csv"),
              "--data_path_audio", str(doubled / "audio"), "--data_path_roberta", str(doubled / "roberta"),
              "--save_path", str(tmp_path), "--eval_batch_size", batch_size])
    assert max(max(s) for s in sizes) == {"1": 1, "6": 2}[batch_size]   # alone, or the pairs of equal length
    predictions = pd.read_csv(tmp_path / "mmer" / "2_predictions.csv").set_index("FileName")
    want = expected("mmer", table, "probs")
    for names in (table["FileName"], table["FileName"].str[:-3] + "9" + table["FileName"].str[-2:]):
        probs = predictions.loc[names, ["prob_hap", "prob_ang", "prob_neu", "prob_sad"]].to_numpy()
        np.testing.assert_allclose(probs, want, atol=1e-4)


def test_published_checkpoints_are_labelled_as_selected_on_the_test_session(checkpoints, tmp_path):
    reevaluate(checkpoints, "cai_sota", tmp_path)
    results = json.loads((tmp_path / "cai_sota" / "results.json").read_text())
    assert "OPTIMISTIC" in results["selection"] and "published" in results["selection"]
    assert "OPTIMISTIC" in (tmp_path / "cai_sota" / "results.md").read_text()


@pytest.fixture(scope="module")
def batch_one_outputs(checkpoints, table):
    """Each variant's output on each utterance alone (upstream's batch 1), and the targets."""
    spec = audio_input_spec(str(FIXTURE / "wav2vec2"))
    waves = load_waves([FIXTURE / "audio" / f"{name}.wav" for name in table["FileName"]], spec, show_progress=False)
    text = load_text_features(table["FileName"], FIXTURE / "roberta", show_progress=False)
    dataset = EmotionDataset(table["FileName"], waves, [0] * len(table), table["text"], text)
    labels = torch.tensor([{"hap": 0, "exc": 0, "ang": 1, "neu": 2, "sad": 3}[label] for label in table["Label"]])
    outputs = {}
    for run_name in RUNS:
        model, _ = restore_model(checkpoints / run_name / "2_model.pt", run_name, str(FIXTURE / "wav2vec2"))
        with torch.no_grad():
            outputs[run_name] = [(model, model(**Collator(spec)([dataset[i]]).model_inputs()), Collator(spec)([dataset[i]]))
                                 for i in range(len(table))]
    return outputs, labels


def pair(first: EmotionOutput, second: EmotionOutput) -> EmotionOutput:
    """A micro-batch of two from two batch-1 outputs (CTC frames past a row's length are ignored)."""
    frames = max(first.ctc_logits.shape[1], second.ctc_logits.shape[1])
    ctc = torch.zeros(2, frames, first.ctc_logits.shape[2])
    ctc[0, : first.ctc_logits.shape[1]], ctc[1, : second.ctc_logits.shape[1]] = first.ctc_logits[0], second.ctc_logits[0]
    return EmotionOutput(logits=torch.cat([first.logits, second.logits]),
                         frame_lengths=torch.cat([first.frame_lengths, second.frame_lengths]), ctc_logits=ctc)


@pytest.mark.parametrize("run_name", RUNS)
def test_cross_entropy_and_ctc_sums_equal_upstreams(batch_one_outputs, table, run_name):
    outputs, labels = batch_one_outputs
    for i, (model, output, batch) in enumerate(outputs[run_name]):
        losses = model.loss(output, labels[i:i + 1], batch.ctc_targets, batch.ctc_target_lengths)
        assert losses["ce"].item() == pytest.approx(expected(run_name, table, "ce")[i], rel=1e-4)
        if model.has_ctc:
            ctc_sum = ctc_loss(output.ctc_logits, output.frame_lengths, batch.ctc_targets, batch.ctc_target_lengths)
            assert ctc_sum.item() == pytest.approx(expected(run_name, table, "ctc_sum")[i], rel=1e-4)


@pytest.mark.parametrize("run_name", ["mmer", "cai_sota"])
def test_alpha_gives_upstreams_total_loss_at_its_micro_batch_of_two(batch_one_outputs, table, run_name):
    """Upstream's loss of a micro-batch of 2: CE (mean of the two) + weight * CTC summed over the two."""
    outputs, labels = batch_one_outputs
    ce, ctc_sum = expected(run_name, table, "ce"), expected(run_name, table, "ctc_sum")
    weight = EXPECTED[run_name]["upstream_ctc_weight"]
    for i, j in [(0, 1), (2, 3), (4, 5), (3, 3)]:
        (model, first, b1), (_, second, b2) = outputs[run_name][i], outputs[run_name][j]
        model.config.alpha = weight
        losses = model.loss(pair(first, second), labels[[i, j]], torch.cat([b1.ctc_targets, b2.ctc_targets]),
                            torch.cat([b1.ctc_target_lengths, b2.ctc_target_lengths]))
        upstream = (ce[i] + ce[j]) / 2 + weight * (ctc_sum[i] + ctc_sum[j])
        assert losses["total"].item() == pytest.approx(upstream, rel=1e-4)
    assert EXPECTED[run_name]["utterances"][table["FileName"][3]]["upstream_total"] == pytest.approx(
        ce[3] + weight * ctc_sum[3], rel=1e-6)  # the fixture's own batch-1 total, as a check of the reading


def test_ctc_reduction_mean_is_the_length_normalised_mean(batch_one_outputs):
    outputs, _ = batch_one_outputs
    (_, first, b1), (_, second, b2) = outputs["cai_sota"][0], outputs["cai_sota"][1]
    paired = pair(first, second)
    targets = torch.cat([b1.ctc_targets, b2.ctc_targets])
    lengths = torch.cat([b1.ctc_target_lengths, b2.ctc_target_lengths])
    log_probs = torch.log_softmax(paired.ctc_logits, -1).transpose(0, 1)
    reference = torch.nn.functional.ctc_loss(log_probs, targets, paired.frame_lengths, lengths, reduction="mean")
    assert ctc_loss(paired.ctc_logits, paired.frame_lengths, targets, lengths, "mean").mean().item() == pytest.approx(
        reference.item(), rel=1e-6)


def test_ctc_targets_equal_upstreams_on_the_fixture(table):
    for name, text in zip(table["FileName"], table["text"]):
        utterance = EXPECTED["mmer"]["utterances"][name]
        assert clean_transcript(text) == utterance["ctc_target_text"]
        assert ctc_target_ids(text) == utterance["ctc_target_ids"]


def test_non_speech_tags_are_no_ctc_target_and_punctuation_separates_words():
    upstream = pd.read_csv(FIXTURE.parent / "iemocap_4class_upstream.csv", keep_default_na=False)
    row = upstream.set_index("FileName").loc["Ses01F_impro03_F013"]
    assert row["Sentences"].endswith("husband.[LAUGHTER]") and "{LG}" in row["text"]
    for text in (row["Sentences"], row["text"]):
        assert clean_transcript(text) == "I GUESS I'LL I GUESS I'LL HAVE AN INTERNET HUSBAND"
    assert clean_transcript("[BREATHING] Oh,no {NS} [garbage]") == "OH NO"
