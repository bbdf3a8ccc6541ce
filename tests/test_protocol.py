"""What a run records is what it re-runs, and what it reports is honest about the protocol:
--eval_only restores every recorded model setting and reports the checkpoints' objectives,
--precision is recorded as it resolved, IEMOCAP's improvised and scripted test utterances are
scored apart (and --utterance_types trains and tests on one kind), and a CTC term that dwarfs
the cross-entropy is named once."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

import run
from training import loop as training
from dataio.audio import read_audio
from training import config as training_config
from training import folds as training_folds


def recorded_flags(demo, save, **overrides) -> list[str]:
    """mmer with settings the defaults do not have: the 2023 audio cut far below the demo's
    clip lengths, max pooling and a self-contrastive term."""
    return demo.flags(**{"run": "mmer", "sessions": "1", "epochs": 1, "save_path": save, "max_audio_samples": 6000,
                         "pooling": "max", "supcon_weight": 0.1, **overrides})


@pytest.fixture(scope="module")
def recorded_run(demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("recorded")
    run.main(recorded_flags(demo, save))
    return save / "mmer"


def test_eval_only_restores_every_recorded_model_setting(demo, recorded_run, tmp_path):
    run.main(["--eval_only", "--checkpoint_dir", str(recorded_run), "--save_path", str(tmp_path), "--device", "cpu"])
    again = pd.read_csv(tmp_path / "mmer" / "1_predictions.csv")
    trained = pd.read_csv(recorded_run / "1_predictions.csv")
    assert min(len(read_audio(demo.audio / f"{name}.wav", 16000)) for name in trained["FileName"]) > 6000
    pd.testing.assert_frame_equal(again, trained, atol=1e-6)
    objectives = json.loads((tmp_path / "mmer" / "results.json").read_text())["objectives"]
    assert (objectives["max_audio_samples"], objectives["pooling"], objectives["supcon_weight"]) == (6000, "max", 0.1)


def test_a_flag_that_contradicts_the_recorded_model_is_named_and_only_the_audio_cut_wins(recorded_run, tmp_path,
                                                                                         caplog):
    with caplog.at_level(logging.WARNING):
        model_cfg, _ = run.parse_args(["--eval_only", "--checkpoint_dir", str(recorded_run), "--pooling", "mean",
                                       "--max_audio_samples", "9000", "--save_path", str(tmp_path)])
    assert model_cfg.pooling == "max" and model_cfg.max_audio_samples == 9000
    assert "--pooling mean ignored" in caplog.text and "--max_audio_samples 9000 given" in caplog.text


def test_precision_is_recorded_as_resolved_and_a_resume_elsewhere_keeps_it(demo, recorded_run, monkeypatch, caplog):
    config = json.loads((recorded_run / "config.json").read_text())
    assert config["run"]["precision_resolved"] == {"training": "fp32", "evaluation": "fp32"}
    # the demo's flags ask for fp32; the resume says auto, on a machine where auto means bf16 training
    monkeypatch.setattr(training_config, "training_precision", lambda device, precision, hidden: "bf16")
    with caplog.at_level(logging.WARNING):
        model_cfg, run_cfg = run.parse_args(recorded_flags(demo, recorded_run.parent, precision="auto", resume=True))
        training_config.resolve_precision(recorded_run, model_cfg, run_cfg, "cpu")
    assert run_cfg.precision_resolved["training"] == "fp32" and "keeps fp32" in caplog.text
    assert training.trains_in(run_cfg, None, 768) == "fp32"


# ---------------------------------------------------------------- improvised and scripted
def dialogue_kind(name: str) -> str:
    """By hand, from IEMOCAP's naming: Ses01F_impro01_F000 is improvised, Ses01F_script01_1_F000 scripted."""
    return {"impro": "impro", "scrip": "script"}[name.split("_")[1][:5]]


def test_results_score_improvised_and_scripted_test_utterances_apart(demo, tmp_path):
    results = run.main(demo.flags(run="unimodal_baseline", sessions="1 2", epochs=1, save_path=tmp_path))
    run_dir = tmp_path / "unimodal_baseline"
    for session in ("1", "2"):
        predictions = pd.read_csv(run_dir / f"{session}_predictions.csv")
        kinds = predictions["FileName"].map(dialogue_kind)
        assert set(kinds) == {"impro", "script"}
        for kind in ("impro", "script"):
            part = predictions[kinds == kind]
            got = results["folds"][session]["by_type"][kind]
            assert got["n"] == len(part)
            assert got["wa"] == pytest.approx(accuracy_score(part["true_label"], part["predicted_label"]))
            assert got["ua"] == pytest.approx(balanced_accuracy_score(part["true_label"], part["predicted_label"]))
            assert got["macro_f1"] == pytest.approx(f1_score(part["true_label"], part["predicted_label"],
                                                             average="macro"))
    mean = np.mean([results["folds"][s]["by_type"]["script"]["ua"] for s in ("1", "2")])
    assert results["by_type"]["script"]["mean"]["ua"] == pytest.approx(mean)
    saved = pd.read_csv(run_dir / "results.csv").set_index("fold")
    assert saved.loc["mean", "ua_script"] == pytest.approx(mean, abs=1e-4)
    assert "| 1 | impro |" in (run_dir / "results.md").read_text()


def test_utterance_types_trains_and_tests_on_improvised_dialogues_only(demo, tmp_path, monkeypatch):
    seen = []
    original = training.train_epoch

    def recording(model, loader, *args, **kwargs):
        seen.extend(loader.dataset.dataset.names[i] for i in loader.dataset.indices)
        return original(model, loader, *args, **kwargs)

    monkeypatch.setattr(training_folds, "train_epoch", recording)
    run.main(demo.flags(run="unimodal_baseline", sessions="1", epochs=1, save_path=tmp_path, utterance_types="impro"))
    tested = pd.read_csv(tmp_path / "unimodal_baseline" / "1_predictions.csv")["FileName"]
    assert {dialogue_kind(n) for n in [*seen, *tested]} == {"impro"} and len(seen) and len(tested)
    table = pd.read_csv(demo.csv)
    impro = table[table["FileName"].map(dialogue_kind) == "impro"]
    assert len(tested) == int(impro["FileName"].str.startswith("Ses01").sum())


# ---------------------------------------------------------------- a CTC term that dwarfs the CE
@pytest.mark.parametrize("alpha", [0.1, 0.005])
def test_a_ctc_term_over_ten_times_the_cross_entropy_is_named_once(demo, tmp_path, caplog, alpha):
    with caplog.at_level(logging.WARNING, logger="mmer"):
        run.main(demo.flags(run="cai_sota", alpha=alpha, sessions="1 2", epochs=1, save_path=tmp_path))
    first = json.loads((tmp_path / "cai_sota" / "1_stats.txt").read_text().splitlines()[0])
    dwarfs = alpha * first["ctc_loss"] > 10 * first["ce_loss"]
    assert dwarfs == (alpha == 0.1)  # the demo: first-epoch CTC near 680, CE near 1.4: 0.1 -> 48x, 0.005 -> 2.4x
    warnings = [r.getMessage() for r in caplog.records if "weighted CTC term" in r.getMessage()]
    assert len(warnings) == (1 if dwarfs else 0)
    if dwarfs:
        assert "--alpha" in warnings[0] and "When the CTC term dominates" in warnings[0]
