"""The corpus table (docs/CORPUS.md) every corpus becomes: reading it, checking it, its label
set, where its audio lies, its CTC targets, and the folds made from it.

Folds: leave one group out over `session` (IEMOCAP), `fold`, or any column (`fold_by`); a
fixed `split` column; EmoBox's `split_<k>` columns, exactly; or `kfold` speaker-independent
folds. The dev split (model selection) comes from the table where it gives one, else it is
drawn from the fold's training part only: every training speaker gives the same share of its
utterances, spread over its labels (or whole speakers, with dev_split="speaker")."""
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from dataio.labels import LabelError, LabelSet, corpus_label_set, utterance_fields
from dataio.dataset import DataError
from dataio.schema import UTTERANCE_TYPES
from dataio.text import clean_transcript
from utils.cli import some

log = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("FileName", "Label")
TEXT_COLUMNS = ("Sentences", "transcript")   # reference transcript, then a speech recogniser's
SPLITS = ("train", "dev", "test")
SPLIT_COLUMN = re.compile(r"^split_(\w+)$")
UNKNOWN = -1  # label_index of a label the label set has no class for (a problem, reported with the others)
LEFT_OUT = -2  # label_index of a label the set leaves out, kept (keep_unlabelled) for its attributes only;
#              every consumer reads a label < 0 as "no class" (losses, counts, sampler, metrics)
STRING_COLUMNS = ("FileName", "Label", "Sentences", "transcript", "text", "speaker", "path", "split", "fold",
                  "utterance_type")


# ---------------------------------------------------------------- the table
def read_table(csv_path, label_map: dict | None = None, label_set: LabelSet | None = None,
               keep_unlabelled: bool = False):
    """-> (table, label set). The table gains `label_index` (rows whose label the set leaves
    out are dropped, and it says so; with keep_unlabelled, as --task dimensional / both wants,
    they are kept with label_index LEFT_OUT, for their attributes only), `speaker` (IEMOCAP:
    from FileName; else None where the table has none), `session` (IEMOCAP: from FileName when
    the table has no grouping) and `text`, the CTC target text (default: the upper-cased
    reference transcript, else the recogniser's). label_set: a trained model's (cross-corpus
    evaluation: label_map maps this table's labels onto its classes); else the table's own
    (labels.corpus_label_set)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: csv not found; prepare it with data_prep/iemocap_prep.py or "
                        "data_prep/import_emobox.py, or write one as docs/CORPUS.md describes")
    try:
        table = pd.read_csv(csv_path, keep_default_na=False, dtype={c: str for c in STRING_COLUMNS})
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{csv_path}: the file is empty; a corpus table is a csv with a header (FileName,Label,...) "
                        "and one row per utterance (docs/CORPUS.md)") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{csv_path}: not a readable csv ({err}); a corpus table is a comma-separated UTF-8 text "
                        "file (docs/CORPUS.md)") from err
    table = table.drop(columns=[c for c in table.columns if c.startswith("Unnamed")])
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; found {list(table.columns)}. A corpus table "
                        "needs FileName and Label (docs/CORPUS.md)")
    if table.empty:
        raise DataError(f"{csv_path}: a header but no rows; add one row per utterance (docs/CORPUS.md)")
    check_empty_cells(csv_path, table)
    table = add_iemocap_fields(table)
    if "text" not in table.columns:
        source = next((c for c in TEXT_COLUMNS if c in table.columns), None)
        table["text"] = table[source].str.upper() if source else ""
        table.attrs["ctc_text"] = source
    else:
        table.attrs["ctc_text"] = "text"
    iemocap = table["FileName"].map(utterance_fields).notna().all()
    try:
        if label_set is None:
            label_set = corpus_label_set(table["Label"], label_map, csv_path.parent, iemocap=iemocap)
        elif label_map is not None:
            label_set = label_set.mapped_onto(label_map)
    except LabelError as err:
        raise DataError(f"{csv_path}: {err}") from err
    unknown = set(label_set.unknown(table["Label"]))  # named by table_problems, with the others
    table["label_index"] = [UNKNOWN if label in unknown else label_set.index(label) for label in table["Label"]]
    table.attrs["label_hint"] = ("map them with --label_map label=class, or label= to leave them out"
                                 if label_map is not None or label_set != LabelSet.iemocap()
                                 else "filter them out, or give a --label_map")
    left_out = table["label_index"].isna()
    if left_out.any():
        log.info("%s: %d utterance(s) with labels the label set leaves out (%s) are %s", csv_path,
                 int(left_out.sum()), ", ".join(sorted(set(table.loc[left_out, "Label"]))),
                 "kept for the attributes only" if keep_unlabelled else "not used")
        if keep_unlabelled:
            table.loc[left_out, "label_index"] = LEFT_OUT
        else:
            table = table[~left_out]
    table["label_index"] = table["label_index"].astype(int)
    return table.reset_index(drop=True), label_set


def read_listing(csv, error=DataError) -> pd.DataFrame:
    """A corpus table for the tools that only go through its utterances (transcription, feature
    extraction): every column as text (an empty cell is ""), so a rewritten table keeps each value
    as written; it must exist and name each utterance once in FileName, else `error` says so."""
    csv = Path(csv)
    if not csv.is_file():
        raise error(f"{csv}: table not found; prepare the corpus first (docs/CORPUS.md) or fix --csv")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "FileName" not in table.columns:
        raise error(f"{csv}: no FileName column; it has {list(table.columns)}. "
                    "Every corpus table names its utterances in FileName (docs/CORPUS.md)")
    repeated = table["FileName"][table["FileName"].duplicated()].unique().tolist()
    if repeated:
        raise error(f"{csv}: FileName repeated, each utterance needs its own: {some(repeated)}")
    return table


def check_empty_cells(csv_path, table: pd.DataFrame) -> None:
    """Every row needs a FileName and a Label, and a value in the fold column that groups it
    (session, fold): empty cells are named by csv line and column, all at once."""
    problems = []
    for column in [c for c in (*REQUIRED_COLUMNS, "session", "fold") if c in table.columns]:
        empty = table[column].astype(str).str.strip() == ""
        if empty.any():
            lines = [str(i + 2) for i in np.flatnonzero(empty)]  # line 1 is the header
            shown = ", ".join(lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
            problems.append(f"empty {column} on line{'s' if len(lines) > 1 else ''} {shown}")
    if problems:
        raise DataError(f"{csv_path}: {'; '.join(problems)}; fill them in or drop those rows (docs/CORPUS.md)")


def add_iemocap_fields(table: pd.DataFrame) -> pd.DataFrame:
    """Speaker and session read from IEMOCAP utterance ids where the table does not give them
    (upstream's csv has neither); other corpora's ids say nothing."""
    fields = [utterance_fields(name) for name in table["FileName"]]
    iemocap = len(fields) > 0 and all(f is not None for f in fields)
    if "speaker" not in table.columns:
        table["speaker"] = [f["speaker"] for f in fields] if iemocap else None
    if "session" not in table.columns and iemocap and not grouping_columns(table):
        table["session"] = [f["session"] for f in fields]
    if "utterance_type" not in table.columns and iemocap:
        table["utterance_type"] = [iemocap_utterance_type(name) for name in table["FileName"]]
    return table


def iemocap_utterance_type(name: str) -> str | None:
    """impro or script, from the dialogue in an IEMOCAP id (Ses01F_impro01_F000, Ses01F_script01_1_F000)."""
    dialogue = name.split("_")[1] if name.count("_") >= 2 else ""
    return "impro" if dialogue.startswith("impro") else "script" if dialogue.startswith("script") else None


def typed(table: pd.DataFrame) -> bool:
    """Whether every row says whether it is improvised or scripted."""
    return "utterance_type" in table.columns and table["utterance_type"].isin(UTTERANCE_TYPES[1:]).all()


def select_utterance_types(table: pd.DataFrame, types: str) -> pd.DataFrame:
    """--utterance_types impro|script: only those rows, for training and testing alike (the
    literature's "improvised only" protocol on IEMOCAP)."""
    if types == "all":
        return table
    if not typed(table):
        raise DataError(f"--utterance_types {types}: the table does not say which utterances are improvised or "
                        "scripted (IEMOCAP ids do; other tables need an utterance_type column of impro/script)")
    log.info("--utterance_types %s: %d of %d utterances kept", types, int((table["utterance_type"] == types).sum()),
             len(table))
    return table[table["utterance_type"] == types].reset_index(drop=True)


def audio_paths(table: pd.DataFrame, audio_dir) -> list[Path]:
    """Each row's audio: `<audio_dir>/<path>` (absolute paths kept) where the table has a `path`,
    else `<audio_dir>/<FileName>.wav`."""
    paths = table["path"] if "path" in table.columns else [""] * len(table)
    return [Path(audio_dir) / (path or f"{name}.wav") for name, path in zip(table["FileName"], paths)]


def text_source(table: pd.DataFrame) -> str | None:
    """The column the CTC targets come from: text, Sentences or transcript (None: no transcript)."""
    return table.attrs.get("ctc_text")


def transcript_record(csv_path, table: pd.DataFrame, features: dict | None) -> dict:
    """Where a run's transcripts came from: the column of its CTC targets and of its text
    features (their encoder.json) and, for a speech recogniser's `transcript` column, the
    recogniser and its word error rate against the reference transcripts (the `.asr.json`
    data_prep/transcribe.py writes beside the table)."""
    record = {"ctc_targets": text_source(table), "text_features": (features or {}).get("text_column")}
    asr = Path(csv_path).with_suffix(".asr.json")
    if "transcript" in record.values() and asr.is_file():
        saved = json.loads(asr.read_text())
        record["asr"] = {key: saved.get(key) for key in ("model", "language", "wer")}
    return record


# ---------------------------------------------------------------- folds
@dataclass(frozen=True)
class FoldScheme:
    """How a table is cut into folds: kind is `split_k` (EmoBox's columns), `split`, `kfold`,
    `group` (leave one value of `column` out), or `whole` (every row is the test set of every
    fold: trained models evaluated on another corpus); names are the folds, in order."""
    kind: str
    column: str | None
    names: tuple

    def describe(self) -> str:
        return {"split_k": "the table's split_<k> columns", "split": "the table's fixed split",
                "kfold": f"{len(self.names)} speaker-independent folds",
                "whole": "the whole table, for each fold's model"}.get(
            self.kind, f"leave-one-{self.column}-out")


@dataclass
class Fold:
    name: str
    train: np.ndarray
    dev: np.ndarray
    test: np.ndarray


def grouping_columns(table: pd.DataFrame) -> list[str]:
    return sorted((c for c in table.columns if SPLIT_COLUMN.match(c)), key=natural_key)


def fold_scheme(table: pd.DataFrame, fold_by: str | None = None, kfold: int | None = None) -> FoldScheme:
    """The folds of a table: `kfold` or `fold_by` when given, else from the first of its
    split_<k> columns, split, fold or session column."""
    if kfold:
        if table["speaker"].isna().any():
            raise DataError("--kfold makes speaker-independent folds and needs a speaker column in the table")
        return FoldScheme("kfold", "speaker", tuple(str(k) for k in range(1, kfold + 1)))
    if fold_by:
        if fold_by not in table.columns or table[fold_by].isna().any() or (table[fold_by].astype(str).str.strip()
                                                                          == "").any():
            raise DataError(f"--fold_by {fold_by}: the table has no such column with a value in every row "
                            f"(columns: {', '.join(table.columns)})")
        return FoldScheme("group", fold_by, tuple(sorted({str(v) for v in table[fold_by]}, key=natural_key)))
    split_columns = grouping_columns(table)
    if split_columns:
        return FoldScheme("split_k", None, tuple(SPLIT_COLUMN.match(c)[1] for c in split_columns))
    if "split" in table.columns:
        return FoldScheme("split", "split", ("1",))
    for column in ("fold", "session"):
        if column in table.columns:
            return FoldScheme("group", column, tuple(sorted({str(v) for v in table[column]}, key=natural_key)))
    raise DataError("the table says nothing of folds: give it a session, fold, split or split_<k> column, or pass "
                    "--fold_by COLUMN (e.g. speaker) or --kfold K (docs/CORPUS.md)")


def natural_key(name) -> tuple:
    """'2' before '10', numbers before words."""
    name = str(name)
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def given_splits(table: pd.DataFrame, scheme: FoldScheme, name: str) -> pd.Series | None:
    """The train/dev/test column of a fold the table splits itself (None for group folds)."""
    if scheme.kind == "split_k":
        return table[f"split_{name}"]
    if scheme.kind == "split":
        return table["split"]
    return None


def make_fold(table: pd.DataFrame, scheme: FoldScheme, name: str, dev_fraction: float, seed: int,
              dev_split: str = "utterance") -> Fold:
    """Fold `name`: its test rows, and train / dev rows from the rest only."""
    if scheme.kind == "whole":
        return Fold(name, np.array([], dtype=int), np.array([], dtype=int), np.arange(len(table)))
    splits = given_splits(table, scheme, name)
    if splits is not None:
        test = np.flatnonzero(splits.to_numpy() == "test")
        rest = np.flatnonzero(splits.to_numpy() == "train")
        dev = np.flatnonzero(splits.to_numpy() == "dev")
        if dev_fraction <= 0:  # no selection on dev (--select_on test): the table's dev rows are trained on
            return Fold(name, np.sort(np.concatenate([rest, dev])), np.array([], dtype=int), test)
        if len(dev):
            return Fold(name, rest, dev, test)
    else:
        in_test = (kfold_test(table, scheme, name, seed) if scheme.kind == "kfold"
                   else table[scheme.column].astype(str).to_numpy() == name)
        test, rest = np.flatnonzero(in_test), np.flatnonzero(~in_test)
    if dev_fraction <= 0 or len(rest) == 0:
        return Fold(name, rest, np.array([], dtype=int), test)
    in_dev = draw_dev(table, rest, dev_fraction, seed, dev_split)
    return Fold(name, np.sort(rest[~in_dev]), np.sort(rest[in_dev]), test)


def kfold_test(table: pd.DataFrame, scheme: FoldScheme, name: str, seed: int) -> np.ndarray:
    """Fold `name` of K speaker-independent folds, stratified by label (scikit-learn's
    StratifiedGroupKFold, shuffled with the seed; rows kept without a class, LEFT_OUT, are a
    stratum of their own)."""
    splitter = StratifiedGroupKFold(n_splits=len(scheme.names), shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(table)), table["label_index"], table["speaker"].astype(str)))
    in_test = np.zeros(len(table), dtype=bool)
    in_test[folds[scheme.names.index(name)][1]] = True
    return in_test


def draw_dev(table: pd.DataFrame, rest: np.ndarray, dev_fraction: float, seed: int, dev_split: str) -> np.ndarray:
    """A boolean mask over `rest`: the dev rows. By utterance: stratified by speaker (when
    known), then label, largest remainders settling the rounding. By speaker: whole speakers,
    in a seeded order, until the share is reached (no dev speaker is trained on)."""
    rng = np.random.default_rng(seed)
    n_dev = max(1, round(dev_fraction * len(rest)))
    speakers = table["speaker"].to_numpy()[rest]
    labels = table["Label"].astype(str).to_numpy()[rest]
    in_dev = np.zeros(len(rest), dtype=bool)
    if dev_split == "speaker":
        if pd.isna(speakers).any():
            raise DataError("--dev_split speaker needs a speaker column in the table")
        chosen, taken = [], 0
        for speaker in rng.permutation(sorted(set(speakers))):
            if taken >= n_dev and chosen:
                break
            if len(chosen) == len(set(speakers)) - 1:
                break  # keep at least one speaker to train on
            chosen.append(speaker)
            taken += int((speakers == speaker).sum())
        return np.isin(speakers, chosen)
    levels = [labels] if pd.isna(speakers).any() else [speakers.astype(str), labels]
    in_dev[stratified_sample(np.arange(len(rest)), levels, n_dev, rng)] = True
    return in_dev


def stratified_sample(items: np.ndarray, levels: list, n_take: int, rng: np.random.Generator) -> np.ndarray:
    """Pick n_take of `items`, shared among the groups of levels[0] in proportion to their size
    (largest remainder), recursively within each group for the next levels."""
    if not levels:
        return rng.permutation(items)[:n_take]
    keys = levels[0][items]
    groups = {k: items[keys == k] for k in sorted(set(keys))}
    exact = {k: n_take * len(g) / len(items) for k, g in groups.items()}
    quota = {k: int(np.floor(v)) for k, v in exact.items()}
    by_remainder = sorted(groups, key=lambda k: (-(exact[k] - quota[k]), rng.random()))
    for k in by_remainder[: n_take - sum(quota.values())]:
        quota[k] += 1
    return np.concatenate([stratified_sample(g, levels[1:], quota[k], rng) for k, g in groups.items()])


# ---------------------------------------------------------------- checks
def table_problems(table: pd.DataFrame, scheme: FoldScheme, folds, label_set: LabelSet, needs_ctc: bool,
                   needs_training: bool = True) -> dict:
    """Problems visible in the table alone: kind -> list of 'where: what' strings. A table of
    the test fold alone is fine for evaluation (needs_training False), as upstream's inference."""
    problems = defaultdict(list)
    for name in table.loc[table["FileName"].duplicated(), "FileName"].unique():
        problems["duplicate ids (keep one row each)"].append(name)
    for row in table.loc[table["label_index"] == UNKNOWN].itertuples():
        problems[f"labels outside the label set {', '.join(label_set.classes)} ({table.attrs['label_hint']})"].append(
            f"{row.FileName}: {row.Label!r}")
    for column in [c for c in table.columns if c == "split" or SPLIT_COLUMN.match(c)]:
        for row in table.loc[~table[column].isin(SPLITS + ("",))].itertuples():
            problems[f"values of {column} other than train/dev/test (or empty)"].append(
                f"{row.FileName}: {getattr(row, column)!r}")
    if needs_ctc:
        kind = ("empty transcripts in `text` (no CTC target; fix or drop the row)" if text_source(table) != "transcript"
                else None)
        for row in table.itertuples():
            if kind and not clean_transcript(row.text):
                problems[kind].append(row.FileName)
    unit = scheme.column if scheme.kind == "group" else "fold"
    for name in folds:
        fold = make_fold(table, scheme, name, 0.0, 0) if name in scheme.names else None
        if fold is None or len(fold.test) == 0:
            problems[f"test {unit}s with no utterances (check --sessions and the csv; its {unit}s: "
                     f"{', '.join(scheme.names)})"].append(f"{unit} {name}")
            continue
        if not needs_training:
            continue
        if len(fold.train) == 0:
            problems["folds with no training utterances (the csv holds only the test fold)"].append(f"fold {name}")
            continue
        labels = table["label_index"].to_numpy()
        missing = [label_set.classes[i] for i in sorted(set(labels[fold.test]) - set(labels[fold.train]))
                   if i >= 0]   # UNKNOWN is named above; LEFT_OUT has no class
        if missing:
            problems["folds whose test set has a class absent from their training set"].append(
                f"fold {name}: {', '.join(missing)}")
    return problems
