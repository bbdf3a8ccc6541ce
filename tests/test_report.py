"""Reporting: what write_results leaves in a run folder (tables, confusion matrices, learning
curves) and the comparison of several runs (python compare.py), on fake run folders."""
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from training import report
from compare import main
from training.comparison import compare, default_out
from training.figures import plot_ua
from training.report import read_fold_stats, write_results

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEV_SELECTION = "dev split of the training sessions"
OPTIMISTIC = "test (OPTIMISTIC: the best epoch is chosen on the test session, as upstream did)"


def fold(wa, ua, f1, n=100, epoch=None):
    """Fold metrics as run.py records them; the confusion matrix sums to n."""
    confusion = np.full((4, 4), n // 40)
    confusion[np.diag_indices(4)] += (n - confusion.sum()) // 4
    confusion[0, 0] += n - confusion.sum()
    return {"wa": wa, "ua": ua, "macro_f1": f1, "confusion": confusion.tolist(), "n": n, "epoch": epoch}


FOLDS = {1: fold(0.8123, 0.7950, 0.8001, n=120, epoch=3), 2: fold(0.7001, 0.6800, 0.6903, n=110, epoch=2)}


def info(run="mmer", alpha=0.1, selection=DEV_SELECTION, eval_only=False):
    return {"run": run, "alpha": alpha, "selection": selection, "eval_only": eval_only}


def write_stats(run_dir: Path, session: int, epochs: int, best: int, truncate_last=False):
    """`<session>_stats.txt` as FoldState.save writes it: one JSON line per epoch."""
    lines = []
    for e in range(1, epochs + 1):
        record = {"epoch": e, "loss": 1.4 + 20 / e, "ce_loss": 1.4 / e ** 0.3, "ctc_loss": 200 / e,
                  "dev": {"ua": 0.4 + 0.1 * min(e, best), "wa": 0.5}, "test": {"ua": 0.35 + 0.04 * e, "wa": 0.5},
                  "best_epoch": min(e, best), "selected_on": "dev", "seconds": 1.0}
        lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n"
    if truncate_last:
        text = text[: -len(lines[-1]) // 2]  # a kill in the middle of the last write
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"{session}_stats.txt").write_text(text)


def fake_results(save_dir: Path, run: str, alpha, folds: dict, selection=DEV_SELECTION) -> Path:
    """A run folder holding only results.json, in the schema run.py writes."""
    run_dir = save_dir / run
    run_dir.mkdir(parents=True)
    values = {k: np.array([m[k] for m in folds.values()]) for k in ("wa", "ua", "macro_f1")}
    results = {"folds": {str(s): m for s, m in folds.items()},
               "mean": {k: float(v.mean()) for k, v in values.items()},
               "std": {k: float(v.std()) for k, v in values.items()},
               **info(run, alpha, selection)}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return run_dir


def markdown_rows(text: str) -> dict:
    """First cell -> the other cells, for the table rows of a markdown text."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return {r[0]: r[1:] for r in rows[2:]}


def assert_png(path: Path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes, f"{path.name}: {len(data)} bytes"


# ---------------------------------------------------------------- one run
@pytest.fixture
def finished_run(tmp_path):
    run_dir = tmp_path / "mmer"
    for session, m in FOLDS.items():
        write_stats(run_dir, session, epochs=4, best=m["epoch"])
    return run_dir, write_results(run_dir, FOLDS, info())


def test_write_results_writes_tables_confusions_per_fold_and_learning_curves(finished_run):
    run_dir, _ = finished_run
    for name in ("results.json", "results.csv", "results.md"):
        assert (run_dir / name).stat().st_size > 100
    for name in ("confusion_matrix.png", "confusion_matrix_session1.png", "confusion_matrix_session2.png",
                 "learning_curves.png"):
        assert_png(run_dir / name)
    assert not list(run_dir.glob(".*"))  # no temporary files left behind


def test_results_md_has_one_row_per_fold_then_mean_and_std_in_percent(finished_run):
    run_dir, results = finished_run
    text = (run_dir / "results.md").read_text()
    rows = markdown_rows(text)
    assert list(rows) == ["1", "2", "mean", "std"]
    assert rows["1"] == ["120", "81.23", "79.50", "80.01"]
    assert rows["2"] == ["110", "70.01", "68.00", "69.03"]
    assert rows["mean"] == ["230", "75.62", "73.75", "74.52"]  # (81.23 + 70.01) / 2
    assert rows["std"][1:] == [f"{100 * results['std'][k]:.2f}" for k in ("wa", "ua", "macro_f1")]
    header = text.splitlines()[0]
    assert "mmer" in header and "alpha 0.1" in header and DEV_SELECTION in header and "**dev" not in header


def test_results_md_shows_an_optimistic_selection_in_bold(tmp_path):
    write_results(tmp_path, FOLDS, info(selection=OPTIMISTIC))
    assert f"**{OPTIMISTIC}**" in (tmp_path / "results.md").read_text().splitlines()[0]


def test_learning_curves_are_skipped_without_stats_files(tmp_path):
    write_results(tmp_path, FOLDS, info(selection="re-evaluated checkpoints from x", eval_only=True))
    assert not (tmp_path / "learning_curves.png").exists()
    assert (tmp_path / "results.md").is_file() and (tmp_path / "confusion_matrix_session2.png").is_file()


def test_learning_curves_survive_a_truncated_last_stats_line(tmp_path):
    write_stats(tmp_path, 1, epochs=5, best=3, truncate_last=True)
    write_stats(tmp_path, 2, epochs=5, best=2)
    assert [r["epoch"] for r in read_fold_stats(tmp_path, [1, 2])[1]] == [1, 2, 3, 4]
    write_results(tmp_path, FOLDS, info())
    assert_png(tmp_path / "learning_curves.png")


def test_pictures_of_an_earlier_run_that_this_run_does_not_hold_are_removed(finished_run):
    run_dir, _ = finished_run
    write_results(run_dir, {1: FOLDS[1]}, info(eval_only=True))
    assert (run_dir / "confusion_matrix_session1.png").is_file()
    assert not (run_dir / "confusion_matrix_session2.png").exists()
    assert not (run_dir / "learning_curves.png").exists()  # it showed the training, not these checkpoints


def test_the_selected_epoch_is_marked_on_the_curve_it_was_selected_on(tmp_path):
    write_stats(tmp_path, 1, epochs=5, best=3)
    records = read_fold_stats(tmp_path, [1])[1]
    fig, ax = plt.subplots()
    plot_ua(ax, records, selected_epoch=3)
    star = [line for line in ax.get_lines() if line.get_label() == "selected on dev UA"]
    assert len(star) == 1
    assert star[0].get_xdata()[0] == 3 and star[0].get_ydata()[0] == pytest.approx(100 * records[2]["dev"]["ua"])
    plt.close(fig)


# ---------------------------------------------------------------- comparing runs
@pytest.fixture
def sweep(tmp_path):
    """mmer at two alphas, each in its own save folder, and both baselines in a third."""
    runs = tmp_path / "runs"
    fake_results(runs / "alpha0.1", "mmer", 0.1, FOLDS)
    fake_results(runs / "alpha0", "mmer", 0.0, {1: fold(0.75, 0.74, 0.73), 2: fold(0.65, 0.64, 0.63)})
    fake_results(runs / "baselines", "cai_sota", 0.1, {1: fold(0.70, 0.69, 0.68), 2: fold(0.60, 0.59, 0.58)})
    fake_results(runs / "baselines", "unimodal_baseline", 0.1, {1: fold(0.6, 0.6, 0.6), 2: fold(0.5, 0.5, 0.5)})
    return runs


def test_comparison_puts_baselines_first_then_mmer_by_alpha(sweep, tmp_path):
    frame = compare([sweep / "alpha0.1", sweep / "baselines", sweep / "alpha0"], tmp_path / "out")
    assert list(frame["label"]) == ["unimodal_baseline", "cai_sota α=0.1", "mmer α=0", "mmer α=0.1"]
    assert frame.loc[3, "wa"] == pytest.approx(75.62) and frame.loc[3, "wa_std"] == pytest.approx(5.61)


def test_comparison_writes_one_table_and_one_chart_with_a_row_per_run(sweep, tmp_path):
    compare([sweep / "alpha0.1" / "mmer", sweep / "alpha0" / "mmer"], tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert list(table["label"]) == ["mmer α=0", "mmer α=0.1"]
    rows = markdown_rows((tmp_path / "out" / "comparison.md").read_text())
    assert rows["mmer α=0.1"][:3] == ["**75.62 ± 5.61**", "**73.75 ± 5.75**", "**74.52 ± 5.49**"]
    assert rows["mmer α=0"][0] == "70.00 ± 5.00" and rows["mmer α=0"][3:] == ["dev", "1 2"]
    assert_png(tmp_path / "out" / "comparison.png")


def test_runs_with_the_same_label_are_told_apart_by_their_save_folder(tmp_path):
    fake_results(tmp_path / "seed0", "mmer", 0.1, FOLDS)
    fake_results(tmp_path / "seed1", "mmer", 0.1, FOLDS)
    frame = compare([tmp_path / "seed1", tmp_path / "seed0"], tmp_path / "out")
    assert list(frame["label"]) == ["mmer α=0.1 [seed0]", "mmer α=0.1 [seed1]"]


def test_comparison_flags_optimistic_selection_and_different_test_sessions(tmp_path):
    fake_results(tmp_path / "a", "mmer", 0.1, FOLDS, selection=OPTIMISTIC)
    fake_results(tmp_path / "b", "cai_sota", 0.1, {1: FOLDS[1]})
    compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert markdown_rows(text)["mmer α=0.1"][3] == "**test (OPTIMISTIC)**"
    assert "different sessions" in text


def test_a_file_that_is_not_a_results_json_is_named_in_the_error(tmp_path):
    (tmp_path / "mmer").mkdir()
    (tmp_path / "mmer" / "results.json").write_text('{"folds": {}')
    with pytest.raises(report.ReportError, match=r"mmer/results.json"):
        compare([tmp_path], tmp_path / "out")


def test_cli_compares_save_folders_and_exits_2_on_a_missing_one(sweep, tmp_path):
    cli = [sys.executable, "compare.py"]
    done = subprocess.run(cli + [str(sweep), "--out", str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "| mmer α=0.1 |" in done.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"comparison.csv", "comparison.md", "comparison.png"}
    missing = subprocess.run(cli + [str(tmp_path / "nowhere")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr


def test_without_out_the_comparison_goes_beside_the_first_run_not_into_the_working_directory(sweep, tmp_path,
                                                                                            monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    main([str(sweep / "alpha0.1" / "mmer"), str(sweep / "baselines")])
    assert (sweep / "alpha0.1" / "comparison" / "comparison.md").is_file()
    assert not list((tmp_path / "cwd").iterdir())
    assert default_out(sweep / "baselines") == sweep / "baselines" / "comparison"
    assert default_out(sweep / "alpha0.1" / "mmer" / "results.json") == sweep / "alpha0.1" / "comparison"


def test_runs_of_one_configuration_with_several_seeds_make_one_row_over_the_seeds(tmp_path):
    objectives = {"pooling": "max", "supcon_weight": 0.1, "aug_weight": 0.0}
    for seed, ua in ((0, 0.60), (1, 0.70), (2, 0.65)):
        for name, extra in (("plain", {}), ("supcon", {"objectives": objectives})):
            run_dir = fake_results(tmp_path / name / f"seed{seed}", "mmer", 0.1,
                                   {1: fold(ua, ua, ua), 2: fold(ua + 0.1, ua + 0.1, ua + 0.1)})
            results = json.loads((run_dir / "results.json").read_text())
            (run_dir / "results.json").write_text(json.dumps({**results, "seed": seed, **extra}))
    compare([tmp_path / "plain", tmp_path / "supcon"], tmp_path / "out", seeds=True)
    table = pd.read_csv(tmp_path / "out" / "seeds.csv")
    assert list(table["configuration"]) == ["mmer α=0.1", "mmer α=0.1 +SupCon 0.1 max-pool"]
    assert list(table["seeds"]) == ["0 1 2", "0 1 2"]
    fold_means = np.array([0.65, 0.75, 0.70]) * 100
    assert table["ua"].iloc[0] == pytest.approx(fold_means.mean(), abs=1e-3)
    assert table["ua_std"].iloc[0] == pytest.approx(fold_means.std(), abs=1e-3)


def test_seeds_recorded_with_different_settings_are_different_configurations(tmp_path):
    for precision in ("fp32", "bf16"):
        for seed, ua in ((0, 0.60), (1, 0.70)):
            run_dir = fake_results(tmp_path / precision / f"seed{seed}", "mmer", 0.1, {1: fold(ua, ua, ua)})
            results = json.loads((run_dir / "results.json").read_text())
            (run_dir / "results.json").write_text(json.dumps({**results, "seed": seed}))
            config = {"model": {"run": "mmer", "alpha": 0.1},
                      "run": {"seed": seed, "precision": precision, "save_path": str(run_dir.parent), "threads": 2}}
            (run_dir / "config.json").write_text(json.dumps(config))
    compare([tmp_path / "fp32", tmp_path / "bf16"], tmp_path / "out", seeds=True)
    table = pd.read_csv(tmp_path / "out" / "seeds.csv")
    assert sorted(table["configuration"]) == ["mmer α=0.1 --precision bf16", "mmer α=0.1 --precision fp32"]
    assert list(table["seeds"]) == ["0 1", "0 1"]
    assert "settings" not in pd.read_csv(tmp_path / "out" / "comparison.csv").columns


def test_the_tables_name_the_folds_as_the_runs_do(tmp_path):
    for name, unit in (("a", "speaker"), ("b", "speaker")):
        run_dir = fake_results(tmp_path / name, "mmer", 0.1, {"1001": fold(0.5, 0.5, 0.5)})
        results = json.loads((run_dir / "results.json").read_text())
        (run_dir / "results.json").write_text(json.dumps({**results, "fold_unit": unit, "seed": 0}))
    compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out", seeds=True)
    assert "| test speakers |" in (tmp_path / "out" / "comparison.md").read_text()
    assert "(test speakers 1001)" in (tmp_path / "out" / "seeds.md").read_text()
    iemocap = fake_results(tmp_path / "c", "mmer", 0.1, {1: fold(0.5, 0.5, 0.5)})
    compare([iemocap, tmp_path / "a"], tmp_path / "mixed")
    assert "| test folds |" in (tmp_path / "mixed" / "comparison.md").read_text()
