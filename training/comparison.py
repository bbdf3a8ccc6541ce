"""Several runs side by side (compare.py is its command line): their results.json found and
checked, one row per run with 95 % intervals (comparison.csv, comparison.md, comparison.png),
over seeds one row per configuration (seeds.csv, seeds.md), and with --paired whether their
differences are real (significance.csv, significance.md; training/significance.py)."""
import json
import logging
import math
from pathlib import Path

import pandas as pd

from training.figures import optimistic, plot_comparison, session_key
from training.report import METRIC_KEYS, TYPE_NAMES, ReportError, run_label
from training.significance import COLUMNS as SIGNIFICANCE_COLUMNS
from training.significance import (SignificanceError, read_predictions, run_intervals, seed_tests, seeds_section,
                                   significance_markdown, significance_table)
from utils.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)
RUN_ORDER = ("unimodal_baseline", "cai_sota", "mmer")  # baselines first, as in the paper's tables
RESAMPLES, SEED = 1000, 0  # bootstrap resamples and permutations, and their seed (compare.py --resamples, --seed)


def find_results(paths) -> list:
    """results.json files given directly, in run folders (<save>/<run>), in save folders, or one
    level further (a folder of save folders); each file once."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_file():
            candidates = [path]
        elif (path / "results.json").is_file():
            candidates = [path / "results.json"]
        else:
            candidates = sorted(path.glob("*/results.json")) or sorted(path.glob("*/*/results.json"))
        found += [c for c in candidates if c.resolve() not in {f.resolve() for f in found}]
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}; pass run folders "
                                "(<save_path>/<run>) or save folders written by run.py")
    return found


def load_results(path: Path) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot read it as JSON ({err}); is it a results.json written by run.py?") from err
    missing = [k for k in ("folds", "mean", "std") if k not in results] + \
              [f"mean.{k}" for k in METRIC_KEYS if k not in results.get("mean", {})]
    if missing:
        raise ReportError(f"{path}: lacks {', '.join(missing)}; not a results.json written by run.py")
    return results


def selection_tag(results: dict) -> str:
    """A short 'how was the best epoch chosen' for a table cell."""
    selection = results.get("selection") or ""
    if "OPTIMISTIC" in selection:
        return "test (OPTIMISTIC)"
    tag = "dev" if selection.startswith("dev") else selection or "?"
    return f"{tag}, re-evaluated" if results.get("eval_only") else tag


def comparison_frame(result_files, resamples: int = RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """One row per run: mean and std over folds of WA, UA and macro-F1 (percent) with a 95 %
    bootstrap interval of the mean (NaN for a run without its predictions files), sorted
    baselines first then by alpha, each with a label that tells it from the others."""
    rows = []
    for path in map(Path, result_files):
        results = load_results(path)
        row = {"run": results.get("run", path.parent.name), "alpha": results.get("alpha"),
               "objectives": results.get("objectives"), "seed": results.get("seed"),
               "selection": selection_tag(results), "folds": len(results["folds"]),
               "unit": results.get("fold_unit", "session"),
               "sessions": " ".join(sorted(results["folds"], key=session_key)), "path": str(path.parent),
               "settings": recorded_settings(path.parent)}
        for key in METRIC_KEYS:
            row[key] = 100 * results["mean"][key]
            row[f"{key}_std"] = 100 * results["std"].get(key, math.nan)
        row.update(intervals(path, results, resamples, seed))
        for kind in TYPE_NAMES:
            typed = results.get("by_type", {}).get(kind)
            row[f"ua_{kind}"] = 100 * typed["mean"]["ua"] if typed else math.nan
            row[f"wa_{kind}"] = 100 * typed["mean"]["wa"] if typed else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    order = frame["run"].map(lambda r: RUN_ORDER.index(r) if r in RUN_ORDER else len(RUN_ORDER))
    alpha = pd.to_numeric(frame["alpha"], errors="coerce")
    frame = frame.assign(_order=order, _alpha=alpha).sort_values(["_order", "run", "_alpha", "path"], kind="stable")
    frame = frame.drop(columns=["_order", "_alpha"]).reset_index(drop=True)
    frame.insert(0, "label", unique_labels(frame))
    return frame


def intervals(path: Path, results: dict, resamples: int, seed: int) -> dict:
    """{wa_ci_low: ..., wa_ci_high: ..., ...} from the run's predictions; NaN, with a warning
    that says why, where they cannot be had."""
    try:
        return run_intervals(read_predictions(path.parent, results), resamples, seed)
    except SignificanceError as err:
        log.warning("no 95 %% intervals for %s: %s", path.parent, err)
        return {f"{key}_ci_{end}": math.nan for key in METRIC_KEYS for end in ("low", "high")}


def unique_labels(frame: pd.DataFrame) -> list:
    """run + alpha; where two runs share that, the save folder (<save>/<run>) is added, and
    where that is not enough either, the run folder's whole path."""
    base = [run_label(r.run, r.alpha, r.objectives) for r in frame.itertuples()]
    labels = [f"{label} [{Path(path).parent.name}]" if base.count(label) > 1 else label
              for label, path in zip(base, frame["path"])]
    return [f"{label} [{path}]" if labels.count(short) > 1 else short
            for label, short, path in zip(base, labels, frame["path"])]


def test_units(frame: pd.DataFrame) -> str:
    """'sessions' (IEMOCAP), 'speakers', 'splits', ... as the runs' folds are named; 'folds' when they differ."""
    units = set(frame["unit"]) if "unit" in frame else {"session"}
    return f"{units.pop()}s" if len(units) == 1 else "folds"


def markdown_table(frame: pd.DataFrame) -> str:
    """mean ± std in percent; the best mean of each metric in bold, among the runs whose best
    epoch was not chosen on the test session."""
    fair = frame[~optimistic(frame)]
    best = {k: fair[k].max() for k in METRIC_KEYS}
    typed = typed_columns(frame)
    header = (f"| run | WA (%) | UA (%) | macro-F1 (%) |{''.join(f' {name} (%) |' for _, name in typed)} "
              f"best epoch on | test {test_units(frame)} |\n|---|---:|---:|---:|{'---:|' * len(typed)}---|---|\n")
    lines = []
    for r in frame.itertuples():
        cells = []
        for key in METRIC_KEYS:
            text = f"{getattr(r, key):.2f} ± {getattr(r, key + '_std'):.2f}"
            if not math.isnan(getattr(r, f"{key}_ci_low", math.nan)):
                text += f" [{getattr(r, key + '_ci_low'):.1f}, {getattr(r, key + '_ci_high'):.1f}]"
            is_best = getattr(r, key) == best[key] and len(frame) > 1 and "OPTIMISTIC" not in r.selection
            cells.append(f"**{text}**" if is_best else text)
        cells += ["-" if math.isnan(getattr(r, column)) else f"{getattr(r, column):.2f}" for column, _ in typed]
        selection = f"**{r.selection}**" if "OPTIMISTIC" in r.selection else r.selection
        lines.append(f"| {r.label} | {' | '.join(cells)} | {selection} | {r.sessions} |")
    notes = ["", "Mean ± population std over the folds. WA = overall accuracy, UA = mean of the per-class recalls."]
    if "wa_ci_low" in frame and frame["wa_ci_low"].notna().any():
        notes.append("[low, high]: 95 % percentile-bootstrap interval of the mean over the folds, the test utterances "
                     "resampled within each fold (docs/SIGNIFICANCE.md); compare.py --paired tests the differences.")
    if typed:
        notes.append("UA impro / UA script: mean over the folds of the UA of the improvised and of the scripted test "
                     "utterances (IEMOCAP's scripted lines recur in every session).")
    if frame["sessions"].nunique() > 1:
        notes.append("**Note: these runs were tested on different sessions; their means are not comparable.**")
    return header + "\n".join(lines + notes) + "\n"


# Recorded settings that do not make a different configuration when comparing seeds.
NOT_CONFIGURATION = {"seed", "seeds", "save_path", "device", "threads", "num_workers", "overwrite", "resume", "eval_only",
                     "checkpoint_dir", "log_every", "tensorboard", "world_size", "eval_batch_size", "compile",
                     "gradient_checkpointing"}


def recorded_settings(run_dir: Path) -> dict:
    """The flags recorded in run_dir/config.json (model and run settings in one dict), less the
    ones that only say where or how fast it ran; {} without a config.json."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    flat = {**config.get("model", {}), **config.get("run", {})}
    return {k: v for k, v in flat.items() if k not in NOT_CONFIGURATION}


def configurations(frame: pd.DataFrame) -> list[str]:
    """run + alpha (+ objectives), and where runs that share that were recorded with different
    settings (--precision, --learning_rate, ...), those settings, so they never share a row."""
    base = [run_label(r.run, r.alpha, r.objectives) for r in frame.itertuples()]
    names = list(base)
    for label in set(base):
        rows = [i for i, b in enumerate(base) if b == label]
        settings = [frame["settings"].iloc[i] for i in rows]
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]
        for i, s in zip(rows, settings):
            if differing:
                names[i] = label + " " + " ".join(f"--{k} {s.get(k)}" for k in differing)
    return names


def over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of one configuration with different seeds as one row: the mean and (population)
    std over the seeds of each run's mean over its folds, in percent. Runs recorded with
    different settings are different configurations."""
    rows = []
    for name, group in seed_groups(frame).items():
        row = {"configuration": name, "seeds": " ".join(str(s) for s in group["seed"]), "runs": len(group),
               "sessions": " ".join(sorted(set(group["sessions"]))), "selection": " / ".join(sorted(set(group["selection"]))),
               "unit": group["unit"].iloc[0] if group["unit"].nunique() == 1 else "fold"}
        for key in METRIC_KEYS:
            row[key], row[f"{key}_std"] = group[key].mean(), group[key].std(ddof=0)
        for column, _ in typed_columns(frame):
            row[column], row[f"{column}_std"] = group[column].mean(), group[column].std(ddof=0)
        rows.append(row)
    return pd.DataFrame(rows)


def seed_groups(frame: pd.DataFrame) -> dict:
    """{configuration: its runs' rows}, in the table's order."""
    grouped = frame.assign(configuration=configurations(frame)).groupby("configuration", sort=False)
    return {name: group for name, group in grouped}


def seeds_markdown(table: pd.DataFrame) -> str:
    best = {k: table[k].max() for k in METRIC_KEYS}
    typed = typed_columns(table)
    lines = [f"| configuration | seeds | WA (%) | UA (%) | macro-F1 (%) |{''.join(f' {name} (%) |' for _, name in typed)}",
             f"|---|---|---:|---:|---:|{'---:|' * len(typed)}"]
    for r in table.itertuples():
        cells = [f"{getattr(r, k):.2f} ± {getattr(r, k + '_std'):.2f}" for k in METRIC_KEYS]
        cells = [f"**{c}**" if getattr(r, k) == best[k] and len(table) > 1 else c for c, k in zip(cells, METRIC_KEYS)]
        cells += [f"{getattr(r, c):.2f} ± {getattr(r, c + '_std'):.2f}" for c, _ in typed]
        lines.append(f"| {r.configuration} | {r.seeds} | {' | '.join(cells)} |")
    return "\n".join(lines + ["", "Mean ± population std over the seeds of each run's mean over its folds "
                              f"(test {test_units(table)} {' ; '.join(sorted(set(table['sessions'])))}). WA = overall accuracy, "
                              "UA = mean of the per-class recalls."]) + "\n"


def typed_columns(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The per-type UA columns some run of the frame has: [(column, header), ...]."""
    return [(f"ua_{kind}", f"UA {kind}") for kind in TYPE_NAMES
            if f"ua_{kind}" in frame and frame[f"ua_{kind}"].notna().any()]


def compare(paths, out_dir, seeds: bool = False, paired: bool = False, resamples: int = RESAMPLES,
            seed: int = SEED) -> pd.DataFrame:
    """Write comparison.csv, comparison.md and comparison.png for the runs under `paths`; with
    `seeds`, also seeds.csv and seeds.md (one row per configuration over its seeds, and the
    seed-level tests, seeds_significance.csv); with `paired`, significance.csv and .md (every
    pair of runs tested utterance by utterance). Runs that cannot be paired are refused before
    anything is written."""
    files = find_results(paths)
    frame = comparison_frame(files, resamples, seed)
    significance = paired_significance(files, frame, resamples, seed) if paired else None
    out_dir = Path(out_dir)
    if seeds:
        write_seeds(frame, out_dir)
    if significance is not None:
        table, utterances = significance
        with atomic_path(out_dir / "significance.csv", suffix=".csv") as tmp:
            table[SIGNIFICANCE_COLUMNS].to_csv(tmp, index=False, float_format="%.4f")
        atomic_write_text(out_dir / "significance.md", significance_markdown(table, utterances, resamples, seed))
    if frame["sessions"].nunique() > 1:
        log.warning("the runs were tested on different sessions (%s); their means are not comparable",
                    "; ".join(f"{label}: {s}" for label, s in zip(frame["label"], frame["sessions"])))
    with atomic_path(out_dir / "comparison.csv", suffix=".csv") as tmp:
        frame.drop(columns="settings").to_csv(tmp, index=False, float_format="%.4f")
    atomic_write_text(out_dir / "comparison.md", markdown_table(frame))
    plot_comparison(frame, out_dir / "comparison.png")
    return frame


def paired_significance(files, frame: pd.DataFrame, resamples: int, seed: int) -> tuple:
    """significance_table over the runs of the frame, in its order, read from their predictions."""
    by_dir = {str(Path(path).parent): Path(path) for path in files}
    runs = [(r.label, read_predictions(r.path, load_results(by_dir[r.path]))) for r in frame.itertuples()]
    return significance_table(runs, resamples, seed)


def write_seeds(frame: pd.DataFrame, out_dir: Path) -> None:
    """seeds.csv and seeds.md, one row per configuration; seeds_significance.csv and seeds.md's
    last section: Welch's t-test between the configurations with enough seeds."""
    table, groups = over_seeds(frame), seed_groups(frame)
    tests = seed_tests(groups)
    with atomic_path(out_dir / "seeds.csv", suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out_dir / "seeds_significance.csv", suffix=".csv") as tmp:
        tests.to_csv(tmp, index=False, float_format="%.4f")
    counts = {name: len(group) for name, group in groups.items()}
    atomic_write_text(out_dir / "seeds.md", seeds_markdown(table) + seeds_section(tests, counts))


def default_out(first) -> Path:
    """`comparison/` in the save folder of the first run given (a run folder's parent, the
    folder of a results.json's run, or a save folder itself), never the working directory."""
    first = Path(first)
    if first.is_file():
        first = first.parent
    return (first.parent if (first / "results.json").is_file() else first) / "comparison"
