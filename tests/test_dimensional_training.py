"""Dimensional emotion and imbalanced classes wired into run.py (issue 30): --task both reports the
CCC of its own predictions in the corpus's units, the attribute loss reaches the attribute head,
class weights are a hand count, focal with gamma 0 is cross-entropy, --select_metric ccc_mean
picks the best dev epoch, and the refusals name what is missing. Hand formulas here, not the
code under test."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import run
from models import ModelConfig, build_model
from models.checkpoint import restore_model
from training.inputs import prepared_corpus
from training.settings import ConfigError

ATTRIBUTES = ("arousal", "valence", "dominance")
IEMOCAP_CLASSES = {"hap": "hap", "exc": "hap", "ang": "ang", "neu": "neu", "sad": "sad"}


def hand_ccc(true, pred) -> float:
    """Lin's CCC with population moments, written out."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    covariance = ((true - true.mean()) * (pred - pred.mean())).mean()
    return 2 * covariance / (true.var() + pred.var() + (true.mean() - pred.mean()) ** 2)


def stats(run_dir, fold="1") -> list[dict]:
    return [json.loads(line) for line in (run_dir / f"{fold}_stats.txt").read_text().splitlines()]


@pytest.fixture(scope="module")
def both_run(demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("both")
    results = run.main(demo.flags(run="cai_sota", task="both", epochs=1, sessions="1", save_path=save))
    return save / "cai_sota", results


def test_both_reports_the_ccc_of_its_own_predictions_file(both_run, demo):
    run_dir, results = both_run
    fold = results["folds"]["1"]
    predictions = pd.read_csv(run_dir / "1_predictions.csv")
    for name in ATTRIBUTES:
        true, pred = predictions[f"true_{name}"], predictions[f"pred_{name}"]
        assert fold[f"ccc_{name}"] == pytest.approx(hand_ccc(true, pred), abs=1e-4)
        assert fold[f"mse_{name}"] == pytest.approx(((true - pred) ** 2).mean(), rel=1e-4)
        assert fold[f"pearson_{name}"] == pytest.approx(np.corrcoef(true, pred)[0, 1], abs=1e-4)
    assert fold["ccc_mean"] == pytest.approx(np.mean([fold[f"ccc_{n}"] for n in ATTRIBUTES]))
    assert {"ua", "wa", "macro_f1"} <= set(fold)   # the categorical metrics beside them under both
    assert results["mean"]["ccc_mean"] == pytest.approx(fold["ccc_mean"])
    csv = pd.read_csv(run_dir / "results.csv", index_col=0)
    assert csv.loc["session 1", "ccc_valence"] == pytest.approx(fold["ccc_valence"], abs=1e-4)
    assert "ccc mean" in (run_dir / "results.md").read_text()


def test_predictions_are_in_the_corpus_units(both_run, demo):
    """true_ columns are the table's ratings; pred_ columns are the attribute head's [0, 1]
    outputs mapped back by the table's scale (1-5 read from the data), checked on the restored
    checkpoint against the model run on each test utterance alone."""
    run_dir, _ = both_run
    table = pd.read_csv(demo.csv).set_index("FileName")
    predictions = pd.read_csv(run_dir / "1_predictions.csv").set_index("FileName")
    ratings = table[list(ATTRIBUTES)].to_numpy()
    low, high = np.floor(ratings.min()), np.ceil(ratings.max())
    for name in ATTRIBUTES:
        np.testing.assert_allclose(predictions[f"true_{name}"], table.loc[predictions.index, name], atol=1e-6)
    model_cfg, run_cfg = run.parse_args(demo.flags(run="cai_sota", task="both", sessions="1",
                                                   save_path=run_dir.parent))
    corpus = prepared_corpus(model_cfg, run_cfg)
    model, _ = restore_model(run_dir / "1_model.pt", "cai_sota", str(demo.wav2vec2_model))
    assert model.config.attribute_range == [low, high]
    model.eval()
    with torch.no_grad():
        for name in predictions.index[:3]:
            batch = corpus.collate([corpus.dataset[corpus.positions[name]]])
            raw = model(**batch.model_inputs()).attributes[0].numpy()     # normalised, model order
            expected = raw * (high - low) + low
            got = [predictions.loc[name, f"pred_{a}"] for a in model.config.attributes]
            np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_attribute_loss_reaches_the_attribute_head(demo):
    """Under both: total = CE + dim_weight x attribute loss, and the attribute head gets its
    gradient; under dimensional the classifier gets none (and no CE is computed)."""
    torch.manual_seed(0)
    config = ModelConfig(run="unimodal_baseline", wav2vec2=str(demo.wav2vec2_model), task="both",
                         attributes=list(ATTRIBUTES), attribute_range=[1.0, 5.0], dim_weight=0.5)
    model = build_model(config)
    audio = torch.randn(3, 16000)
    output = model(audio, torch.tensor([16000, 12000, 9000]))
    ratings = torch.tensor([[0.1, 0.5, 0.9], [0.4, 0.2, 0.6], [0.8, 0.9, 0.3]])
    losses = model.loss(output, torch.tensor([0, 1, 2]), attributes=ratings)
    assert losses["total"].item() == pytest.approx(losses["ce"].item() + 0.5 * losses["dim"].item(), rel=1e-6)
    losses["total"].backward()
    assert model.attribute_head.out.weight.grad is not None
    assert model.attribute_head.out.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.config.task = "dimensional"
    losses = model.loss(model(audio, torch.tensor([16000, 12000, 9000])), torch.tensor([0, 1, 2]), attributes=ratings)
    assert "ce" not in losses and losses["total"] is losses["dim"]
    losses["total"].backward()
    assert model.classifier.weight.grad is None
    assert model.attribute_head.out.weight.grad.abs().sum() > 0


def test_class_weights_in_the_loss_equal_a_hand_count(demo, tmp_path, monkeypatch):
    """--class_weights balanced on fold 1 with --select_on test (no dev split: the training part
    is sessions 2-5): N / (K n_k) from the table's labels, as seen by F.cross_entropy."""
    table = pd.read_csv(demo.csv)
    training = table[table["session"] != 1]["Label"].map(IEMOCAP_CLASSES).dropna()
    counts = training.value_counts()
    classes = ["hap", "ang", "neu", "sad"]   # IEMOCAP's class order
    expected = np.array([len(training) / (len(classes) * counts[c]) for c in classes])
    seen = []
    original = torch.nn.functional.cross_entropy

    def spy(logits, labels, *args, **kwargs):
        seen.append(kwargs.get("weight"))
        return original(logits, labels, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    results = run.main(demo.flags(run="unimodal_baseline", epochs=1, sessions="1", save_path=tmp_path,
                                  class_weights="balanced", select_on="test", max_steps=1))
    assert seen and all(w is not None for w in seen)
    for weight in seen:
        np.testing.assert_allclose(weight.cpu().numpy(), expected, rtol=1e-6)
    recorded = results["folds"]["1"]["class_weights"]
    np.testing.assert_allclose([recorded[c] for c in classes], expected, rtol=1e-9)


def test_focal_with_gamma_zero_gives_the_cross_entropy_loss(demo, tmp_path):
    first = {}
    for loss in ("ce", "focal"):
        run.main(demo.flags(run="unimodal_baseline", epochs=1, sessions="1", save_path=tmp_path / loss, loss=loss,
                            focal_gamma=0, max_steps=1))
        first[loss] = stats(tmp_path / loss / "unimodal_baseline")[0]
    assert first["focal"]["ce_loss"] == pytest.approx(first["ce"]["ce_loss"], rel=1e-6)
    assert first["focal"]["loss"] == pytest.approx(first["ce"]["loss"], rel=1e-6)


def test_select_metric_ccc_mean_picks_the_best_dev_epoch(demo, tmp_path):
    results = run.main(demo.flags(run="unimodal_baseline", task="both", epochs=3, sessions="1", save_path=tmp_path,
                                  select_metric="ccc_mean", dim_loss="mse", learning_rate=5e-3))
    records = stats(tmp_path / "unimodal_baseline")
    dev = [r["dev"]["ccc_mean"] for r in records]
    best = int(np.nanargmax(dev)) + 1   # the first epoch of the highest dev CCC
    assert records[-1]["best_epoch"] == best
    assert results["folds"]["1"]["epoch"] == best
    assert results["folds"]["1"]["selected_by"] == "ccc_mean"
    recipe = (tmp_path / "unimodal_baseline" / "recipe.yaml").read_text()
    assert "select_metric: ccc_mean" in recipe and "task: both" in recipe and "dim_loss: mse" in recipe


def test_dimensional_reports_attributes_only(demo, tmp_path):
    results = run.main(demo.flags(run="cai_sota", task="dimensional", epochs=1, sessions="1", save_path=tmp_path))
    fold = results["folds"]["1"]
    assert "ua" not in fold and "ua" not in results["mean"] and np.isfinite(fold["ccc_mean"])
    predictions = pd.read_csv(tmp_path / "cai_sota" / "1_predictions.csv")
    assert "predicted_label" not in predictions and "pred_valence" in predictions
    assert "ce_loss" not in stats(tmp_path / "cai_sota")[0]
    assert "WA (%)" not in (tmp_path / "cai_sota" / "results.md").read_text()
    again = run.main(["--eval_only", "--checkpoint_dir", str(tmp_path / "cai_sota"), "--save_path",
                      str(tmp_path / "eval"), "--device", "cpu", "--precision", "fp32"])
    assert again["folds"]["1"]["ccc_mean"] == pytest.approx(fold["ccc_mean"], abs=1e-6)


def test_dimensional_on_a_table_without_attributes_is_refused(demo, tmp_path):
    table = pd.read_csv(demo.csv).drop(columns=list(ATTRIBUTES))
    csv = tmp_path / "no_attributes.csv"
    table.to_csv(csv, index=False)
    with pytest.raises(ConfigError, match=r"no_attributes\.csv.*arousal, valence, dominance"):
        run.main(demo.flags(run="cai_sota", task="dimensional", epochs=1, sessions="1", save_path=tmp_path,
                            csv_path=csv))
    assert not (tmp_path / "cai_sota").exists()


def test_soft_targets_without_votes_are_refused(demo, tmp_path):
    with pytest.raises(ConfigError, match=r"votes_hap, votes_ang, votes_neu, votes_sad"):
        run.main(demo.flags(run="cai_sota", soft_targets=True, epochs=1, sessions="1", save_path=tmp_path))


@pytest.mark.parametrize("flags, words", [
    ({"select_metric": "ccc_mean"}, "--task categorical predicts none"),
    ({"task": "dimensional", "select_metric": "ua"}, "--task dimensional trains and reports no class"),
    ({"attribute_range": "5,1"}, "--attribute_range"),
])
def test_select_metric_and_task_contradictions_are_refused(demo, tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit) as exit_:
        run.parse_args(demo.flags(run="cai_sota", save_path=tmp_path, **flags))
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err


def test_one_hot_vote_fractions_give_the_cross_entropy_loss(demo, tmp_path):
    """--soft_targets reads votes_<class>; one-hot votes are the hard labels, so the first loss is CE's."""
    table = pd.read_csv(demo.csv)
    for name in ("hap", "ang", "neu", "sad"):
        table[f"votes_{name}"] = (table["Label"].map(IEMOCAP_CLASSES) == name).astype(float)
    csv = tmp_path / "votes.csv"
    table.to_csv(csv, index=False)
    first = {}
    for soft in (False, True):
        save = tmp_path / str(soft)
        run.main(demo.flags(run="unimodal_baseline", epochs=1, sessions="1", save_path=save, csv_path=csv,
                            soft_targets=soft, max_steps=1))
        first[soft] = stats(save / "unimodal_baseline")[0]["ce_loss"]
    assert first[True] == pytest.approx(first[False], rel=1e-6)


def test_balanced_sampler_draws_from_the_fold_training_labels(demo, tmp_path, monkeypatch):
    from training import loop
    made = []
    original = loop.BalancedBatchSampler

    def spy(labels, *args, **kwargs):
        made.append(np.asarray(labels))
        return original(labels, *args, **kwargs)

    monkeypatch.setattr(loop, "BalancedBatchSampler", spy)
    run.main(demo.flags(run="unimodal_baseline", epochs=1, sessions="1", save_path=tmp_path, sampler="balanced",
                        select_on="test"))
    table = pd.read_csv(demo.csv)
    expected = table[table["session"] != 1]["Label"].map(IEMOCAP_CLASSES).value_counts()
    assert len(made) == 1
    assert sorted(np.bincount(made[0]).tolist()) == sorted(expected.tolist())
    assert "sampler: balanced" in (tmp_path / "unimodal_baseline" / "recipe.yaml").read_text()


def test_left_out_labels_are_kept_for_the_attributes_only(demo, tmp_path, monkeypatch, caplog):
    """Rows whose label the label set leaves out (fru= here, as MSP-Podcast's other and no
    agreement) are kept under --task both: scored for the attributes with every test row, absent
    from the cross-entropy and the categorical metrics, with an empty true_label. Under the
    default task the same table drops them."""
    table = pd.read_csv(demo.csv)
    relabelled = table.index[[2, 4, 7]]            # two test rows of session 1, one training row of session 2
    table.loc[relabelled, "Label"] = "fru"
    csv = tmp_path / "with_fru.csv"
    table.to_csv(csv, index=False)
    label_map = "hap=hap,exc=hap,ang=ang,neu=neu,sad=sad,fru="
    seen = []
    original = torch.nn.functional.cross_entropy

    def spy(logits, labels, *args, **kwargs):
        seen.append(labels.detach().cpu().numpy())
        return original(logits, labels, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    with pytest.raises(ConfigError, match="--supcon_weight would contrast them as one class"):   # they have no class
        run.main(demo.flags(run="cai_sota", task="both", epochs=1, sessions="1", save_path=tmp_path / "supcon",
                            csv_path=csv, label_map=label_map, supcon_weight=0.1))
    with caplog.at_level(logging.INFO, logger="dataio.corpus"):
        results = run.main(demo.flags(run="cai_sota", task="both", epochs=1, sessions="1",
                                      save_path=tmp_path / "both", csv_path=csv, label_map=label_map, select_on="test"))
    assert "3 utterance(s) with labels the label set leaves out (fru) are kept for the attributes only" in caplog.text
    training = table[table["session"] != 1]
    assert sum(len(labels) for labels in seen) == int((training["Label"] != "fru").sum())
    assert all((labels >= 0).all() for labels in seen)

    fold = results["folds"]["1"]
    test = table[table["session"] == 1].set_index("FileName")
    predictions = pd.read_csv(tmp_path / "both" / "cai_sota" / "1_predictions.csv",
                              keep_default_na=False).set_index("FileName")
    assert sorted(predictions.index) == sorted(test.index)        # every test row, the fru ones too
    left_out = test.index[test["Label"] == "fru"]
    assert len(left_out) == 2
    assert (predictions.loc[left_out, "true_label"] == "").all()
    assert (predictions.drop(left_out)["true_label"] != "").all()
    for name in ATTRIBUTES:
        pred = predictions[f"pred_{name}"].astype(float)
        assert np.isfinite(pred.loc[left_out]).all()
        np.testing.assert_allclose(predictions[f"true_{name}"].astype(float), test.loc[predictions.index, name],
                                   atol=1e-6)
        assert fold[f"ccc_{name}"] == pytest.approx(hand_ccc(test.loc[predictions.index, name], pred), abs=1e-4)
    labelled = predictions.drop(left_out)
    assert fold["n"] == len(test) - 2 == 4
    assert sum(map(sum, fold["confusion"])) == 4
    assert fold["wa"] == pytest.approx((labelled["true_label"] == labelled["predicted_label"]).mean())
    epoch = stats(tmp_path / "both" / "cai_sota")[0]["test"]      # the per-epoch evaluation counts the same rows
    assert epoch["n"] == 4 and epoch["ua"] == pytest.approx(fold["ua"])

    run.main(demo.flags(run="cai_sota", epochs=1, sessions="1", save_path=tmp_path / "categorical", csv_path=csv,
                        label_map=label_map, select_on="test", max_steps=1))
    dropped = pd.read_csv(tmp_path / "categorical" / "cai_sota" / "1_predictions.csv").set_index("FileName")
    assert sorted(dropped.index) == sorted(test.index.drop(left_out))
