"""run.py end to end on the small demo corpus: the files it writes, re-evaluation,
refusing to mix runs, resuming after a real SIGKILL, non-finite losses and input checks."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from safetensors.torch import save_file

import run
from models.base import SpeechEmotionModel
from models.checkpoint import load_checkpoint
from training.runinfo import DivergedError, RunDirError
from dataio.validate import InputProblems
from training import folds as training_folds

REPO = Path(__file__).resolve().parents[1]
METRICS = ("wa", "ua", "macro_f1", "confusion")


def fold_metrics(results: dict) -> dict:
    return {s: {k: m[k] for k in METRICS} for s, m in results["folds"].items()}


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("runs")
    results = run.main(demo.flags(run="mmer", save_path=save))
    return save / "mmer", results


def test_a_run_writes_every_output(trained):
    run_dir, results = trained
    for session in ("1", "2"):
        assert (run_dir / f"{session}_model.pt").is_file()
        stats = [json.loads(line) for line in (run_dir / f"{session}_stats.txt").read_text().splitlines()]
        assert [r["epoch"] for r in stats] == [1, 2]
        assert {"loss", "ce_loss", "ctc_loss", "dev", "test", "seconds", "skipped_steps"} <= set(stats[0])
        predictions = pd.read_csv(run_dir / f"{session}_predictions.csv")
        assert list(predictions.columns) == ["FileName", "true_label", "predicted_label",
                                             "prob_hap", "prob_ang", "prob_neu", "prob_sad"]
        assert set(predictions["FileName"].str[4]) == {session}  # the test session only
        np.testing.assert_allclose(predictions.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
    assert set(results["folds"]) == {"1", "2"} and {"wa", "ua", "macro_f1"} <= set(results["mean"])
    assert json.loads((run_dir / "results.json").read_text())["std"].keys() == results["std"].keys()
    assert list(pd.read_csv(run_dir / "results.csv")["fold"]) == ["session 1", "session 2", "mean", "std", "pooled"]
    assert {"ece", "nll", "brier"} <= set(results["mean"]) and results["pooled"]["n"] == sum(
        m["n"] for m in results["folds"].values())
    assert (run_dir / "reliability_diagram.png").stat().st_size > 1000
    assert (run_dir / "confusion_matrix.png").stat().st_size > 1000
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["run"] == "mmer" and config["seed"] == 0 and config["versions"]["torch"]
    assert config["data"]["csv_sha256"]
    assert not list(run_dir.glob("*_last.pt"))  # finished folds drop their resume state


def test_eval_only_reproduces_the_saved_metrics(demo, trained, tmp_path):
    run_dir, results = trained
    again = run.main(demo.flags(run="mmer", save_path=tmp_path, eval_only=True, checkpoint_dir=run_dir,
                                epochs=None, learning_rate=None))
    assert fold_metrics(again) == fold_metrics(results)
    for session, metrics in fold_metrics(results).items():
        saved = load_checkpoint(run_dir / f"{session}_model.pt")["metrics"]["test"]
        assert {k: saved[k] for k in METRICS} == metrics
    assert "re-evaluated" in json.loads((tmp_path / "mmer" / "results.json").read_text())["selection"]


def test_a_second_run_into_the_same_folder_is_refused(demo, trained):
    run_dir, _ = trained
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    with pytest.raises(RunDirError, match="--resume to continue it, --overwrite"):
        run.main(demo.flags(run="mmer", save_path=run_dir.parent))
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_resume_refuses_a_different_configuration(demo, trained):
    run_dir, _ = trained
    with pytest.raises(RunDirError, match="--learning_rate"):
        run.main(demo.flags(run="mmer", save_path=run_dir.parent, resume=True, learning_rate=1e-3))


def test_eval_only_overwrite_never_removes_the_checkpoints_it_evaluates(demo, trained, tmp_path):
    run_dir = tmp_path / "mmer"
    shutil.copytree(trained[0], run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(RunDirError, match="would remove files this command reads.*1_model.pt"):
        run.main(demo.flags(save_path=tmp_path, eval_only=True, checkpoint_dir=run_dir, overwrite=True))
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_select_on_test_trains_on_all_training_sessions_and_is_labelled_optimistic(demo, tmp_path):
    results = run.main(demo.flags(run="unimodal_baseline", save_path=tmp_path, select_on="test",
                                  epochs=1, sessions="1"))
    assert "OPTIMISTIC" in results["selection"]
    stats = json.loads((tmp_path / "unimodal_baseline" / "1_stats.txt").read_text().splitlines()[0])
    assert stats["selected_on"] == "test" and stats["dev"] is None  # no dev split held out, as upstream
    table = pd.read_csv(demo.csv)
    training = table.loc[table["session"] != 1, "FileName"]
    seconds = sum(sf.info(str(demo.audio / f"{name}.wav")).duration for name in training)
    assert stats["audio_seconds"] == pytest.approx(seconds, abs=0.02)  # every utterance of sessions 2-5
    config = json.loads((tmp_path / "unimodal_baseline" / "config.json").read_text())
    assert config["run"]["dev_fraction"] == 0


def scripted(ua_per_call: list):
    """A stand-in for run.evaluate returning the given UAs in call order (dev, then test, per epoch)."""
    calls = iter(ua_per_call)

    def evaluate(model, loader, device, precision):
        ua = next(calls)
        return {"wa": ua, "ua": ua, "macro_f1": ua, "confusion": [[1]], "n": 1}
    return evaluate


def test_the_best_epoch_is_chosen_on_dev_never_on_test(demo, tmp_path, monkeypatch):
    # epoch:  1 (dev .5, test .1)   2 (dev .3, test .9)   3 (dev .4, test .2)
    monkeypatch.setattr(training_folds, "evaluate", scripted([0.5, 0.1, 0.3, 0.9, 0.4, 0.2]))
    run.main(demo.flags(run="unimodal_baseline", save_path=tmp_path, epochs=3, sessions="1"))
    run_dir = tmp_path / "unimodal_baseline"
    assert load_checkpoint(run_dir / "1_model.pt")["epoch"] == 1
    assert [json.loads(line)["best_epoch"] for line in (run_dir / "1_stats.txt").read_text().splitlines()] == [1, 1, 1]


def test_the_text_encoder_is_the_one_the_features_record(demo, tmp_path, capsys):
    model_cfg, run_cfg = run.parse_args(demo.flags(roberta=None, save_path=tmp_path))
    assert run_cfg.roberta == str(Path(demo.roberta_model).resolve())
    with pytest.raises(SystemExit) as caught:  # a contradicting --roberta: the speech encoder's folder
        run.parse_args(demo.flags(roberta=demo.wav2vec2_model, save_path=tmp_path))
    assert caught.value.code == 2 and "made by" in capsys.readouterr().err


def test_paths_are_recorded_absolute_so_the_run_works_from_any_directory(demo, monkeypatch):
    monkeypatch.chdir(demo.root)
    relative = {key: os.path.relpath(value, demo.root) for key, value in
                {"csv_path": demo.csv, "data_path_audio": demo.audio, "data_path_roberta": demo.roberta,
                 "wav2vec2": demo.wav2vec2_model, "save_path": demo.root / "runs"}.items()}
    model_cfg, run_cfg = run.parse_args(demo.flags(**relative))
    for path in (model_cfg.wav2vec2, run_cfg.csv_path, run_cfg.data_path_audio, run_cfg.data_path_roberta,
                 run_cfg.save_path, run_cfg.roberta):
        assert Path(path).is_absolute() and Path(path).exists() or path == run_cfg.save_path


def test_safetensors_checkpoints_are_found_and_evaluated(demo, trained, tmp_path):
    run_dir, results = trained
    folder = tmp_path / "published"
    folder.mkdir()
    for session in ("1", "2"):
        save_file(load_checkpoint(run_dir / f"{session}_model.pt")["state_dict"], folder / f"{session}_model.safetensors")
    again = run.main(demo.flags(save_path=tmp_path / "out", eval_only=True, checkpoint_dir=folder, sessions=None))
    assert fold_metrics(again) == fold_metrics(results)


# ---------------------------------------------------------------- killed and resumed
def run_cli(argv, kill_when=None, timeout=240):
    """Run run.py in a child process; SIGKILL it as soon as kill_when() is true."""
    child = subprocess.Popen([sys.executable, str(REPO / "run.py"), *argv], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while child.poll() is None and time.time() < deadline:
        if kill_when is not None and kill_when():
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            return "killed"
        time.sleep(0.01)
    _, err = child.communicate(timeout=5)
    assert child.returncode == 0, err[-2000:]
    return "finished"


def stats_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def comparable_stats(run_dir: Path, session: int) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / f"{session}_stats.txt").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_a_killed_run_resumes_to_the_same_final_metrics(demo, tmp_path):
    flags = demo.flags(epochs=3, save_path=tmp_path / "straight")
    assert run_cli(flags) == "finished"
    straight = tmp_path / "straight" / "mmer"

    resumed = tmp_path / "resumed" / "mmer"
    flags = demo.flags(epochs=3, save_path=tmp_path / "resumed", resume=True)
    kill_points = [lambda: stats_lines(resumed / "1_stats.txt") >= 1,   # fold 1, during epoch 2
                   lambda: (resumed / "1_result.json").is_file(),      # fold 1 just finished
                   lambda: stats_lines(resumed / "2_stats.txt") >= 2]  # fold 2, during epoch 3
    outcomes = [run_cli(flags, kill_when=point) for point in kill_points]
    assert run_cli(flags) == "finished"
    assert "killed" in outcomes
    results = json.loads((resumed / "results.json").read_text())
    assert fold_metrics(results) == fold_metrics(json.loads((straight / "results.json").read_text()))
    for session in (1, 2):
        assert comparable_stats(resumed, session) == comparable_stats(straight, session)


# ---------------------------------------------------------------- numerical faults
@pytest.fixture
def nan_on_second_loss(monkeypatch):
    original, calls = SpeechEmotionModel.loss, {"n": 0}

    def loss(self, *args, **kwargs):
        losses = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(SpeechEmotionModel, "loss", loss)


def test_a_nan_loss_skips_its_step_and_is_counted(demo, tmp_path, nan_on_second_loss):
    run.main(demo.flags(run="cai_sota", save_path=tmp_path, epochs=1, sessions="1", max_skipped_fraction=0.5))
    record = json.loads((tmp_path / "cai_sota" / "1_stats.txt").read_text())
    assert record["skipped_steps"] == 1 and record["nonfinite_micro_batches"] == 1
    assert np.isfinite(record["loss"])
    assert (tmp_path / "cai_sota" / "1_model.pt").is_file()


def test_too_many_skipped_steps_stop_the_run_without_saving(demo, tmp_path, nan_on_second_loss):
    with pytest.raises(DivergedError, match="non-finite"):
        run.main(demo.flags(run="cai_sota", save_path=tmp_path, epochs=1, sessions="1", max_skipped_fraction=0))
    assert not (tmp_path / "cai_sota" / "1_model.pt").exists()


# ---------------------------------------------------------------- input validation
def test_every_bad_input_is_reported_before_training(demo, tmp_path):
    table = pd.read_csv(demo.csv, keep_default_na=False)
    roberta = tmp_path / "roberta"
    shutil.copytree(demo.roberta, roberta)
    names = table["FileName"].tolist()
    np.save(roberta / f"{names[0]}.npy", np.zeros((2, 3, 4), dtype=np.float32))
    (roberta / f"{names[1]}.npy").unlink()
    table.loc[2, "Label"] = "fru"
    table.loc[3, "text"] = "?!"
    table.loc[4, "FileName"] = "Ses01F_impro01_F999"
    table = pd.concat([table, table.iloc[[5]]])
    csv = tmp_path / "bad.csv"
    table.to_csv(csv, index=False)
    with pytest.raises(InputProblems) as caught:
        run.main(demo.flags(csv_path=csv, data_path_roberta=roberta, save_path=tmp_path / "out", sessions="1 2 5 6"))
    message = str(caught.value)
    for expected in (f"{names[0]}.npy: (2, 3, 4)", f"{names[1]}.npy", "'fru'", names[3], "F999.wav",
                     f"duplicate ids (keep one row each):\n    {names[5]}", "session 6"):
        assert expected in message
    assert not list((tmp_path / "out" / "mmer").glob("*_model.pt"))
