"""Run control: one process per run folder (locks that name their holder and are taken over
from dead ones), failed runs that never block their corrected rerun, nonsense refused before
any work, and --eval_only reading what the run recorded."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import RobertaConfig

import run
from utils import lock
from utils.lock import LockedError, RunLock
from dataio.dataset import DataError
from dataio.validate import InputProblems
from training import folds as training_folds

REPO = Path(__file__).resolve().parents[1]


def start(argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(condition, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


# ---------------------------------------------------------------- the lock itself
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_holder(path: Path, **fields) -> None:
    path.write_text(json.dumps({**lock.holder_record(), **fields}))


def test_a_lock_names_its_holder_and_is_released_on_exit(tmp_path):
    path = tmp_path / ".fold1.lock"
    with RunLock(path, "fold 1"):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(LockedError, match=f"fold 1 is in use by process {os.getpid()} on"):
            RunLock(path, "fold 1").acquire()
    assert not path.exists()


def test_the_lock_of_a_dead_holder_on_this_machine_is_taken_over(tmp_path):
    path = tmp_path / ".fold1.lock"
    write_holder(path, pid=dead_pid())
    with RunLock(path, "fold 1"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_reused_pid_does_not_keep_a_dead_holders_lock(tmp_path):
    path = tmp_path / ".fold1.lock"
    write_holder(path, started="1")  # our pid, but a process that started at another time
    with RunLock(path, "fold 1"):
        assert json.loads(path.read_text())["started"] != "1"


def test_a_holder_on_another_machine_is_dead_only_when_its_heartbeat_stopped(tmp_path):
    path = tmp_path / ".fold1.lock"
    write_holder(path, host="node7", boot="other", pid=1)
    with pytest.raises(LockedError, match="on node7"):
        RunLock(path, "fold 1").acquire()
    old = time.time() - lock.STALE - 5
    os.utime(path, (old, old))
    with RunLock(path, "fold 1"):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


# ---------------------------------------------------------------- processes on one folder
def test_a_second_process_on_a_busy_folder_is_refused_and_the_files_stay_intact(demo, tmp_path):
    flags = demo.flags(run="unimodal_baseline", save_path=tmp_path, epochs=500, sessions="1", resume=True)
    run_dir = tmp_path / "unimodal_baseline"
    first = start(flags)
    try:
        wait_for(lambda: (run_dir / "1_stats.txt").is_file())
        for other in (flags, demo.flags(run="unimodal_baseline", save_path=tmp_path, epochs=500, sessions="1",
                                        resume=True, seed=1)):
            second = subprocess.run([sys.executable, str(REPO / "run.py"), *other], cwd=REPO, capture_output=True,
                                    text=True, timeout=120)
            assert second.returncode == 2, second.stderr[-2000:]
            assert f"process {first.pid} on {socket.gethostname()}" in second.stderr
            assert "Traceback" not in second.stderr
        assert first.poll() is None  # still training: the refusals were made while it held the folder
    finally:
        first.kill()
        first.wait()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seed"] == 0
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "1_stats.txt").read_text().splitlines()
              if line.endswith("}")]
    assert epochs == list(range(1, len(epochs) + 1))  # one run's epochs, none twice


def test_a_sigkilled_holders_lock_is_taken_over_by_the_rerun(demo, tmp_path):
    flags = demo.flags(run="unimodal_baseline", save_path=tmp_path, epochs=2, sessions="1", resume=True)
    run_dir = tmp_path / "unimodal_baseline"
    first = start(flags)
    wait_for(lambda: (run_dir / ".fold1.lock").is_file() and (run_dir / "config.json").is_file())
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert (run_dir / ".fold1.lock").is_file()
    results = run.main(flags)
    assert set(results["folds"]) == {"1"} and not (run_dir / ".fold1.lock").exists()


# ---------------------------------------------------------------- failed runs do not block
def test_a_run_refused_for_bad_input_leaves_nothing_and_its_corrected_rerun_succeeds(demo, tmp_path):
    roberta = tmp_path / "roberta"
    shutil.copytree(demo.roberta, roberta)
    removed = next(roberta.glob("Ses01*.npy"))
    saved = removed.read_bytes()
    removed.unlink()
    flags = demo.flags(save_path=tmp_path / "runs", data_path_roberta=roberta, epochs=1, sessions="1")
    with pytest.raises(InputProblems):
        run.main(flags)
    assert not (tmp_path / "runs").exists()
    removed.write_bytes(saved)
    assert set(run.main(flags)["folds"]) == {"1"}


def test_a_run_that_failed_before_its_first_epoch_does_not_block_the_rerun(demo, tmp_path, monkeypatch):
    flags = demo.flags(run="unimodal_baseline", save_path=tmp_path, epochs=1, sessions="1")

    def broken(*args, **kwargs):
        raise OSError("simulated: the speech encoder could not be loaded")
    monkeypatch.setattr(training_folds, "build_training", broken)
    with pytest.raises(OSError, match="simulated"):
        run.main(flags)
    assert (tmp_path / "unimodal_baseline" / "config.json").is_file()
    monkeypatch.undo()
    assert set(run.main(flags)["folds"]) == {"1"}                 # no --overwrite needed
    resumed = demo.flags(run="unimodal_baseline", save_path=tmp_path / "r", epochs=1, sessions="1", resume=True)
    monkeypatch.setattr(training_folds, "build_training", broken)
    with pytest.raises(OSError):
        run.main(resumed)
    monkeypatch.undo()
    assert set(run.main(resumed)["folds"]) == {"1"}  # --resume of a run that never trained


# ---------------------------------------------------------------- nonsense refused at once
@pytest.mark.parametrize("flag, value, says", [
    ("batch_size", "0", "outside [1, inf]"), ("accum_grad", "0", "outside [1, inf]"),
    ("eval_batch_size", "0", "outside [1, inf]"), ("dropout", "2", "outside [0, 1)"),
    ("learning_rate", "-1", "outside (0, inf]"), ("alpha", "-1", "outside [0, inf]"),
    ("dev_fraction", "1.0", "outside [0, 1)"), ("epochs", "0", "outside [1, inf]"),
    ("sessions", "1 1", "named twice"), ("learning_rate", "nan", "not a finite number"),
])
def test_nonsense_flags_are_refused_with_one_line_and_exit_code_2(demo, tmp_path, capsys, flag, value, says):
    with pytest.raises(SystemExit) as caught:
        run.main(demo.flags(save_path=tmp_path, **{flag: value}))
    err = capsys.readouterr().err.strip()
    assert caught.value.code == 2 and says in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, says", [(["--alpha", "-1"], "outside [0, inf]"),
                                        (["--run", "mmer2"], "invalid choice"),
                                        (["--preset", "mmer2023", "--ctc_text", "x"], "invalid choice")])
def test_a_nonsense_flag_is_refused_before_torch_loads(argv, says):
    # a fresh interpreter runs run.py as a script; what it imported tells whether torch loaded first
    probe = ("import runpy, sys\nsys.argv = ['run.py', *sys.argv[1:]]\ntry:\n    runpy.run_path('run.py', "
             "run_name='__main__')\nexcept SystemExit as stop:\n    print(stop.code, sorted({'torch', 'pandas', "
             "'transformers'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[-2] == "2 []" and says in done.stderr


def test_the_flags_choices_name_what_the_code_offers():
    from dataio.schema import CTC_TEXT_FORMS
    from dataio.text import CTC_TEXT
    from models import MODELS
    from models.settings import VARIANTS
    assert tuple(MODELS) == VARIANTS and tuple(CTC_TEXT) == CTC_TEXT_FORMS


def test_features_of_another_width_than_the_text_encoder_are_refused_before_training(demo, tmp_path):
    roberta = tmp_path / "upstream_features"  # no encoder.json, as upstream's files
    shutil.copytree(demo.roberta, roberta, ignore=shutil.ignore_patterns("encoder.json"))
    RobertaConfig(hidden_size=64, num_attention_heads=4).save_pretrained(tmp_path / "narrow_roberta")
    with pytest.raises(DataError, match="features are 128 wide, but the text encoder .* gives 64"):
        run.main(demo.flags(save_path=tmp_path / "runs", data_path_roberta=roberta,
                            roberta=tmp_path / "narrow_roberta"))
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_hub_name_fails_at_once_with_the_fix(demo, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    started = time.perf_counter()
    with pytest.raises(SystemExit):
        run.main(demo.flags(save_path=tmp_path, wav2vec2="facebook/wav2vec2-base"))
    assert time.perf_counter() - started < 10
    assert "cannot be reached" in capsys.readouterr().err


# ---------------------------------------------------------------- less to type
def test_eval_only_with_only_the_checkpoint_folder_reproduces_the_runs_metrics(trained_run, tmp_path):
    run_dir, results = trained_run
    again = run.main(["--eval_only", "--checkpoint_dir", str(run_dir), "--save_path", str(tmp_path),
                      "--device", "cpu"])
    assert {s: m["ua"] for s, m in again["folds"].items()} == {s: m["ua"] for s, m in results["folds"].items()}
    assert {s: m["confusion"] for s, m in again["folds"].items()} == {
        s: m["confusion"] for s, m in results["folds"].items()}


def test_a_contradicting_run_flag_is_named(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    with pytest.raises(SystemExit):
        run.main(["--eval_only", "--checkpoint_dir", str(run_dir), "--run", "mmer", "--save_path", str(tmp_path)])
    assert "holds cai_sota models, but --run is mmer" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("control")
    results = run.main(demo.flags(run="cai_sota", save_path=save, epochs=1))
    return save / "cai_sota", results


def test_the_resume_state_restores_numpy_random_draws_too(tmp_path):
    """transformers draws SpecAugment's masks from numpy's generator: a resumed run must go on
    with the same draws (the state is read back by weights-only loading)."""
    import numpy as np
    import torch

    from training import runinfo
    np.random.seed(5)
    state = runinfo.rng_state()
    expected = (np.random.rand(4), torch.rand(2))
    torch.save({"rng": state}, tmp_path / "state.pt")
    np.random.seed(9)
    torch.manual_seed(9)
    runinfo.set_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    assert np.array_equal(np.random.rand(4), expected[0]) and torch.equal(torch.rand(2), expected[1])
