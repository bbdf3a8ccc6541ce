"""The 2023 MMER against upstream's own 2023 numbers (tests/reference/upstream_fixture_2023, see
its README): a checkpoint in the published 2023 layout re-evaluated by run.py and predict.py
with default flags, and every loss term and the total of two training batches with their
augmented views, as upstream's training loop computes them."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import predict
import run
from training import loop as training
from models import build_model
from tests.test_upstream_fixture import fill
from models.checkpoint import CheckpointError, load_weights, restore_model, upgrade_state_dict
from dataio.text import clean_transcript, ctc_target_ids, upstream_transcript
from training import inputs as training_inputs
from training import views as training_views

FIXTURE = Path(__file__).resolve().parent / "reference" / "upstream_fixture_2023"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
PROBS = ["prob_hap", "prob_ang", "prob_neu", "prob_sad"]
TERMS = {"ce": "loss_cls", "ctc": "loss_ctc", "supcon": "cl_self_loss", "aug": "cl_loss", "total": "total"}


def keys(name="keys_2023.tsv") -> dict:
    rows = (line.split("\t") for line in (FIXTURE / name).read_text().splitlines())
    return {key: tuple(int(n) for n in shape.strip("()").split(",") if n.strip()) for key, shape in rows}


def upstream_state_dict() -> dict:
    """The fixture's FuseModel state dict: every key of keys_2023.tsv filled by the weight rule."""
    return {key: fill(key, shape) for key, shape in keys().items()}


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    """`2_model.pt` in upstream's published 2023 layout: {'state_dict': FuseModel.state_dict()}."""
    folder = tmp_path_factory.mktemp("upstream_2023")
    torch.save({"state_dict": upstream_state_dict()}, folder / "2_model.pt")
    return folder


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(FIXTURE / "fixture.csv", keep_default_na=False)


def expected_probs(table) -> np.ndarray:
    return np.array([EXPECTED["utterances"][name]["probs"] for name in table["FileName"]])


def data_flags(*extra) -> list[str]:
    return ["--wav2vec2", str(FIXTURE / "wav2vec2"), "--csv_path", str(FIXTURE / "fixture.csv"),
            "--data_path_audio", str(FIXTURE / "audio"), "--data_path_roberta", str(FIXTURE / "roberta"), *extra]


@pytest.mark.parametrize("preset", [["--preset", "mmer2023"], []])
def test_eval_only_of_a_published_2023_checkpoint_gives_upstreams_probabilities(checkpoint_dir, table, tmp_path,
                                                                                preset):
    """The README's command, with and without the preset: the layout says it is upstream's 2023 model."""
    run.main([*preset, "--eval_only", "--checkpoint_dir", str(checkpoint_dir), *data_flags(),
              "--save_path", str(tmp_path)])
    predictions = pd.read_csv(tmp_path / "mmer" / "2_predictions.csv").set_index("FileName")
    np.testing.assert_allclose(predictions.loc[table["FileName"], PROBS].to_numpy(), expected_probs(table), atol=1e-4)
    results = json.loads((tmp_path / "mmer" / "results.json").read_text())
    assert results["objectives"]["pooling"] == results["objectives"]["text_pooling"] == "max"
    assert results["objectives"]["max_audio_samples"] == 210_000 and "published" in results["selection"]


def test_predict_of_a_published_2023_checkpoint_gives_upstreams_probabilities(checkpoint_dir, table, tmp_path):
    out = tmp_path / "predictions.json"
    predict.main(["--checkpoint_dir", str(checkpoint_dir), "--wav2vec2", str(FIXTURE / "wav2vec2"),
                  str(FIXTURE / "fixture.csv"), "--audio_dir", str(FIXTURE / "audio"),
                  "--data_path_roberta", str(FIXTURE / "roberta"), "--output", str(out)])
    rows = {Path(r["file"]).stem: r for r in json.loads(out.read_text())["predictions"]}
    got = np.array([[rows[name][column] for column in PROBS] for name in table["FileName"]])
    np.testing.assert_allclose(got, expected_probs(table), atol=1e-4)
    assert {r["transcript_source"] for r in rows.values()} == {"features"}


def test_module_prefixes_are_stripped_and_any_other_mismatch_is_named(tmp_path, table):
    state = {f"module.{key}": value for key, value in upstream_state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "2_model.pt")
    model, _ = restore_model(tmp_path / "2_model.pt", None, str(FIXTURE / "wav2vec2"))
    assert model.config.run == "mmer" and model.config.aug_weight == 0.1
    del state["module.orgin_linear_change.2.bias"]
    state["module.model_mmi.surprise"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "2_model.pt")
    with pytest.raises(CheckpointError, match=r"(?s)missing: projection\.2\.bias.*unexpected: surprise"):
        restore_model(tmp_path / "2_model.pt", None, str(FIXTURE / "wav2vec2"))


def test_a_published_2023_checkpoint_at_base_size_loads_strictly():
    """keys_2023_wav2vec2_base.tsv: the names and shapes of a real published 2023 checkpoint."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    from models import MODELS, ModelConfig
    from models.encoders import prepare_encoder
    from models.checkpoint import UPSTREAM_2023_SETTINGS
    published = upgrade_state_dict({key: torch.empty(shape, device="meta")
                                    for key, shape in keys("keys_2023_wav2vec2_base.tsv").items()})
    shapes = {key: tuple(value.shape) for key, value in published.items()}
    model = MODELS["mmer"](ModelConfig(**UPSTREAM_2023_SETTINGS), prepare_encoder(Wav2Vec2Model(Wav2Vec2Config())))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


def test_ctc_targets_upstreams_and_ours(table):
    for name, text in zip(table["FileName"], table["text"]):
        utterance = EXPECTED["utterances"][name]
        assert upstream_transcript(text) == utterance["ctc_target_text"]
        assert ctc_target_ids(text, "upstream") == utterance["ctc_target_ids"]
        # ours drops the non-speech tag {LG}, which upstream spells as the word LG
        assert clean_transcript(text) == utterance["ctc_target_text"].replace(" LG", "")


# ---------------------------------------------------------------- the training loss
def training_setup(cache_dir, *flags):
    """The fixture as run.py loads it for training, with the views of audio_view/ and
    roberta_view/, and the fixture's weights in the model the flags build."""
    model_cfg, run_cfg = run.parse_args(data_flags("--preset", "mmer2023", "--precision", "fp32", "--device", "cpu",
                                                   "--data_path_audio_view", str(FIXTURE / "audio_view"),
                                                   "--data_path_roberta_view", str(FIXTURE / "roberta_view"),
                                                   "--save_path", "unused", "--cache_dir", str(cache_dir),
                                                   *flags))
    table = training_inputs.read_corpus_table(model_cfg, run_cfg)
    model_cfg.text_dim = 768
    corpus = training_inputs.load_corpus(table, model_cfg, run_cfg)
    model = build_model(model_cfg, pretrained=False)
    load_weights(model, upstream_state_dict())
    views = training_views.Views(corpus, None, run_cfg.seed, corpus.collate.spec, model_cfg.max_audio_samples,
                           training_views.view_files(corpus.dataset.names, run_cfg.data_path_audio_view))
    return model.eval(), corpus, views, run_cfg  # eval: dropout off, as the fixture's numbers


def fixture_losses(model, corpus, views, run_cfg, batch_index: int) -> dict:
    """training.forward_backward on the fixture's batch (its utterances in its order)."""
    names = EXPECTED["batches"][batch_index]["file_names"]
    batch = corpus.collate([corpus.dataset[i] for i in corpus.index_of(names)])
    model.zero_grad()
    parts = training.forward_backward(model, None, batch, 1.0, run_cfg, torch.device("cpu"),
                                      views.batch_of(batch, epoch=1))
    return dict(zip(training.LOSSES, parts.tolist()))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def upstream_exact(cache_dir):
    """Upstream's CTC targets (tags spelled) and CTC sum at any batch size: every term upstream's."""
    return training_setup(cache_dir, "--ctc_text", "upstream", "--ctc_reduction", "batch_sum")


@pytest.mark.parametrize("batch_index", [0, 1])
def test_every_loss_term_and_the_total_equal_upstreams(upstream_exact, batch_index):
    got = fixture_losses(*upstream_exact, batch_index)
    batch = EXPECTED["batches"][batch_index]
    for ours, theirs in TERMS.items():
        assert got[ours] == pytest.approx(batch[theirs], rel=1e-4, abs=1e-6), ours
    config = upstream_exact[0].config  # the preset's weights are upstream's lambda_value
    assert config.alpha == config.supcon_weight == config.aug_weight == EXPECTED["loss_formula"]["lambda_value"]


def test_the_backward_pass_gets_the_total_over_the_accumulation_steps(upstream_exact):
    """Upstream's loss / accum_iter (4, its default and ours): the gradient of total / 4."""
    model, corpus, views, run_cfg = upstream_exact
    fixture_losses(model, corpus, views, run_cfg, 1)
    quarter = model.classifier.weight.grad.clone()
    whole = dataclasses.replace(run_cfg, accum_grad=1)
    fixture_losses(model, corpus, views, whole, 1)
    torch.testing.assert_close(4 * quarter, model.classifier.weight.grad, rtol=1e-5, atol=1e-7)
    assert run_cfg.accum_grad == 4


def test_default_flags_give_upstreams_terms_but_for_the_documented_ctc_differences(cache_dir):
    """Default flags: the first batch (two utterances without tags) is upstream's in every term
    and the total; in the second, the cross-entropy and both contrastive terms are upstream's,
    the CTC term is (2 / B) x the sum (README "The loss"), of targets without the {LG} tag."""
    setup = training_setup(cache_dir)
    first, second = fixture_losses(*setup, 0), fixture_losses(*setup, 1)
    for ours, theirs in TERMS.items():
        assert first[ours] == pytest.approx(EXPECTED["batches"][0][theirs], rel=1e-4, abs=1e-6), ours
    for ours in ("ce", "supcon", "aug"):
        assert second[ours] == pytest.approx(EXPECTED["batches"][1][TERMS[ours]], rel=1e-4), ours
    spelled = fixture_losses(*training_setup(cache_dir, "--ctc_text", "upstream"), 1)  # upstream's targets, our scale
    assert spelled["ctc"] == pytest.approx(EXPECTED["batches"][1]["loss_ctc"] * 2 / 4, rel=1e-4)
    assert second["ctc"] != pytest.approx(spelled["ctc"], rel=1e-3)  # {LG} is no target of ours
