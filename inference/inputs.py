"""predict.py's inputs, read and checked before any compute: recordings from audio files, folders
and csv files (their paths, transcripts from the column the run's features were made from, and
labels), and every problem found at once (missing files, audio the run cannot score, labels
outside its classes, missing text features): named together, or left out with --skip_bad."""
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dataio.audio import audio_suffixes
from inference.prediction import PredictError
from inference.recognizer import EmotionRecognizer, UnusableInputs

log = logging.getLogger("mmer.predict")
PATH_COLUMNS = ("path", "FileName")            # FileName: IEMOCAP id, the audio is <FileName>.wav
TRANSCRIPT_COLUMNS = ("transcript", "Sentences")


@dataclass
class Problems:
    """What keeps inputs from being predicted, found before any compute: sources that gave no
    recordings (source, message) and recordings, by row of the inputs table (messages)."""
    sources: list[tuple[str, str]] = field(default_factory=list)
    rows: dict[int, list[str]] = field(default_factory=dict)

    def add(self, row: int, message: str) -> None:
        self.rows.setdefault(row, []).append(message)

    def messages(self) -> list[str]:
        return [message for _, message in self.sources] + [m for row in sorted(self.rows) for m in self.rows[row]]

    def __bool__(self) -> bool:
        return bool(self.sources or self.rows)


def collect_inputs(sources, transcript: str | None = None, audio_dir=None, recorded_column: str | None = None,
                   text_column: str | None = None) -> pd.DataFrame:
    """One row per recording: `path`, `transcript` (None where none was given) and `label`
    (a csv's Label column, else None). Sources are audio files, folders (their audio files of
    every format dataio.audio reads, libsndfile's and FFmpeg's, sorted) or csv files (see
    read_input_csv). Every bad source and missing file is named at once (UnusableInputs)."""
    inputs, problems = read_inputs(sources, transcript, audio_dir, recorded_column, text_column)
    if problems:
        raise UnusableInputs(problems.messages())
    return inputs


def read_inputs(sources, transcript: str | None = None, audio_dir=None, recorded_column: str | None = None,
                text_column: str | None = None) -> tuple[pd.DataFrame, Problems]:
    """collect_inputs' table, and the Problems of its sources and of its rows whose audio is missing."""
    rows, problems = [], Problems()
    for source in sources:
        try:
            rows += read_source(Path(source), audio_dir, recorded_column, text_column)
        except PredictError as err:
            problems.sources.append((str(source), str(err)))
    if not rows and not problems:
        raise PredictError(f"no recordings in {[str(s) for s in sources]}; pass audio files, folders or a csv "
                           "with a path column")
    if transcript is not None and rows:
        if len(rows) != 1:
            raise PredictError(f"--transcript is the text of one recording, but {len(rows)} were given; put "
                               "the transcripts in a csv with columns path and transcript")
        rows = [(rows[0][0], transcript, rows[0][2])]
    inputs = pd.DataFrame(rows, columns=["path", "transcript", "label"], dtype=object)
    for row, path in enumerate(inputs["path"]):
        if not Path(path).is_file():
            problems.add(row, f"{path}: audio not found; check the paths (a csv's paths are relative to its folder, "
                              "or to --audio_dir when given)")
    return inputs, problems


def read_source(source: Path, audio_dir=None, recorded_column: str | None = None,
                text_column: str | None = None) -> list[tuple]:
    """(path, transcript or None, label or None) for each recording a command-line input names."""
    if source.is_dir():
        suffixes = audio_suffixes()
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in suffixes and p.is_file())
        if not files:
            raise PredictError(f"{source}: no audio files in this folder (looked for {', '.join(suffixes)})")
        return [(str(path), None, None) for path in files]
    if source.suffix.lower() == ".csv":
        return read_input_csv(source, audio_dir, recorded_column, text_column)
    if not source.exists():
        raise PredictError(f"{source}: no such file or folder; pass audio files, folders or a csv")
    return [(str(source), None, None)]


def read_input_csv(csv: Path, audio_dir=None, recorded_column: str | None = None,
                   text_column: str | None = None) -> list[tuple]:
    """Rows of a csv with a `path` column (or IEMOCAP's `FileName`, the audio being
    <FileName>.wav), resolved against --audio_dir or else the csv's folder, an optional
    transcript column (see transcript_column), an empty cell counting as none, and an optional
    `Label` column."""
    if not csv.is_file():
        raise PredictError(f"{csv}: csv not found")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    column = next((c for c in PATH_COLUMNS if c in table.columns), None)
    if column is None:
        raise PredictError(f"{csv}: no path column (found {list(table.columns)}); name the audio column 'path' "
                           "(a file path) or 'FileName' (an IEMOCAP id, read as <FileName>.wav)")
    base = Path(audio_dir) if audio_dir else csv.parent
    names = [n if column == "path" or n.lower().endswith(".wav") else f"{n}.wav" for n in table[column]]
    text_column = transcript_column(csv, list(table.columns), recorded_column, text_column)
    texts = table[text_column] if text_column else [""] * len(table)
    labels = table["Label"] if "Label" in table.columns else [None] * len(table)
    return [(str(base / Path(n).expanduser()), t if t.strip() else None, label or None)
            for n, t, label in zip(names, texts, labels)]


def transcript_column(csv: Path, columns: list[str], recorded: str | None, asked: str | None) -> str | None:
    """The column of `csv` mmer reads as the transcripts, said in the log with the reason:
    `asked` (--text_column; it must be there, and one other than `recorded` is said to differ),
    else `recorded` (the column the run's text features were made from, in its config.json),
    else transcript, then Sentences. None: no transcripts (the CTC head or --asr transcribes)."""
    if asked:
        if asked not in columns:
            raise PredictError(f"{csv}: no {asked} column (--text_column {asked}); it has {columns}. Name one of "
                               "them, or drop --text_column to read the run's recorded one")
        if recorded and asked != recorded:
            log.warning("%s: reading the %s column (--text_column), but the run's text features were made from "
                        "the %s column (its config.json): the model reads another kind of text than it was "
                        "trained on", csv, asked, recorded)
        else:
            log.info("%s: transcripts from its %s column (--text_column)", csv, asked)
        return asked
    if recorded in columns:
        log.info("%s: transcripts from its %s column, the one the run's text features were made from (its "
                 "config.json)", csv, recorded)
        return recorded
    found = next((c for c in TRANSCRIPT_COLUMNS if c in columns), None)
    if recorded and found:
        log.warning("%s: no %s column, the one the run's text features were made from (its config.json); "
                    "reading its %s column instead, another kind of text than the model was trained on "
                    "(--text_column %s says so on purpose)", csv, recorded, found, found)
    elif found:
        log.info("%s: transcripts from its %s column (the run records no text column; the first of %s found; "
                 "--text_column picks another)", csv, found, ", ".join(TRANSCRIPT_COLUMNS))
    else:
        log.info("%s: no transcript column (%s); its recordings are transcribed", csv,
                 ", ".join(([recorded] if recorded else []) + list(TRANSCRIPT_COLUMNS)))
    return found


def check_recordings(inputs: pd.DataFrame, recognizer: EmotionRecognizer, problems: Problems,
                     features_dir=None) -> None:
    """Add to `problems` what the loaded run finds wrong with the recordings, before any compute:
    audio it cannot score (EmotionRecognizer.audio_problems), labels outside its classes, text
    features missing from --data_path_roberta."""
    todo = [row for row in range(len(inputs)) if row not in problems.rows]
    found = recognizer.audio_problems([inputs["path"].iloc[row] for row in todo])
    for k, message in found.items():
        problems.add(todo[k], message)
    for row, message in label_problems(inputs, recognizer.label_set).items():
        problems.add(row, message)
    if features_dir:
        for row, path in enumerate(feature_paths(inputs, features_dir)):
            if not path.is_file():
                problems.add(row, f"{path}: no text features for {inputs['path'].iloc[row]} (--data_path_roberta); "
                                  "extract them with data_prep/extract_roberta.py, or drop the flag to embed the "
                                  "transcripts")


def label_problems(inputs: pd.DataFrame, label_set) -> dict[int, str]:
    """{row: message} for each recording whose label the run's label set cannot read, when any
    recording has one (WA, UA and the confusion matrix need every recording's)."""
    if "label" not in inputs or inputs["label"].isna().all():
        return {}
    classes = ", ".join(label_set.classes)
    problems = {}
    for row, (path, label) in enumerate(zip(inputs["path"], inputs["label"])):
        if pd.isna(label):
            problems[row] = (f"{path}: no Label, while other recordings have one; give every row of the csv a "
                             f"class of the run ({classes}), or none")
        elif label_set.unknown([label]):
            problems[row] = f"{path}: Label {label!r} is not a class of the run ({classes}); fix the csv's Label"
    return problems


def drop_bad(inputs: pd.DataFrame, problems: Problems, skip_bad: bool) -> tuple[pd.DataFrame, list[dict]]:
    """The inputs to predict and the ones skipped ({input, problem}): all problems at once
    (UnusableInputs), or with --skip_bad the bad inputs left out, listed in the log."""
    if not problems:
        return inputs, []
    good = len(inputs) - len(problems.rows)
    if not skip_bad or not good:
        fix = ("--skip_bad: no recording is left to predict" if skip_bad else
               f"--skip_bad predicts the other {good} recording(s) and lists these" if good else "")
        raise UnusableInputs(problems.messages(), fix)
    skipped = ([{"input": source, "problem": message} for source, message in problems.sources]
               + [{"input": inputs["path"].iloc[row], "problem": "; ".join(problems.rows[row])}
                  for row in sorted(problems.rows)])
    log.warning("--skip_bad: skipping %d input(s), predicting the other %d:\n  %s", len(skipped), good,
                "\n  ".join(item["problem"] for item in skipped))
    return inputs.drop(index=list(problems.rows)).reset_index(drop=True), skipped


def feature_paths(inputs: pd.DataFrame, folder) -> list[Path]:
    """--data_path_roberta: each recording's `<stem>.npy`."""
    return [Path(folder) / f"{Path(path).stem}.npy" for path in inputs["path"]]
