"""The MSP-Podcast importer: `import_msppodcast` turns a release of the corpus, as distributed, into
corpus tables (docs/CORPUS.md): `corpus.csv` (Train, Development and Test1), `test2.csv` and
`test3.csv` (the extra test sets, scored apart), `label_map.json` and `audio/<FileName>.wav`
(data_prep/import_msppodcast.py is its command line; docs/MSPPODCAST.md the whole chain).

What this relies on, read in the release's readme and in the MSP-Podcast Challenge's baseline
(github.com/msplabresearch/MSP-Podcast_Challenge: utils/data/podcast.py, process_labels_for_categorical.py):
- `Labels/labels_consensus.csv`, one row per speaking turn: FileName (`MSP-PODCAST_0001_0008.wav`),
  EmoClass (A angry, S sad, H happy, U surprise, F fear, D disgust, C contempt, N neutral; O other,
  X no agreement), EmoAct, EmoVal, EmoDom (means of the annotators' 1-7 ratings), SpkrID (a number,
  or `Unknown`), Gender and Split_Set (Train, Development, Test1, Test2, Test3; some earlier releases
  say Validation for Development). Newer releases also give `labels_consensus.json`, the same fields
  keyed by FileName; the csv is read where both are.
- `Labels/labels_detailed.csv` (optional), one row per annotation: FileName and the annotator's
  primary emotion, in `EmoClass_Major` (or `EmoClass`) as a word (`Angry`, `Other-Concerned`) or a
  code, or as the second field of `EmoDetail` (`WORKER00012; Angry; Annoyed; A:5.0; V:2.0; D:4.0;`).
- `Audios/<FileName>`: the audio, 16 kHz mono wavs (any other format is converted).

The tables: FileName (without `.wav`), Label (the class name; `other` and `no_agreement` for O and
X, which keep their attributes and which label_map.json maps to null, so that training and metrics
leave them out and say so), EmoClass (the code as given), valence, arousal, dominance (1-7, as
given), speaker (SpkrID; each Unknown turn its own `unknown_<FileName>`, never one speaker), gender,
split (train, dev, test), Split_Set (as given), duration (seconds), and, with labels_detailed.csv,
annotators (annotations of the turn) and `votes_<class>` for the eight classes: the share of the
votes cast for one of them that went to each (summing to 1; empty where none was, e.g. all Other)."""
import io
import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from dataio.audio import TARGET_SR, AudioError, audio_info
from dataio.iemocap import Problem, ReleaseError, Source, place_audio, write_audio
from dataio.labels import LABEL_MAP_FILE
from utils.files import atomic_write_text

log = logging.getLogger(__name__)

CSV_NAME = "corpus.csv"
CODES = {"A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear", "D": "disgust", "C": "contempt",
         "N": "neutral", "O": "other", "X": "no_agreement"}
LEFT_OUT = ("other", "no_agreement")   # no class: kept with their attributes, mapped to null
CLASSES = tuple(name for name in CODES.values() if name not in LEFT_OUT)  # the Challenge's order
# Split_Set -> (table, split). Test2 and Test3 are tables of their own: scored apart, never trained on.
# Validation: what some earlier releases call Development.
SPLIT_SETS = {"Train": (CSV_NAME, "train"), "Development": (CSV_NAME, "dev"), "Validation": (CSV_NAME, "dev"),
              "Test1": (CSV_NAME, "test"), "Test2": ("test2.csv", "test"), "Test3": ("test3.csv", "test")}
TABLES = tuple(dict.fromkeys(table for table, _ in SPLIT_SETS.values()))
ATTRIBUTES = {"EmoVal": "valence", "EmoAct": "arousal", "EmoDom": "dominance"}
SCALE = (1.0, 7.0)
FIELDS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
VOTE_WORDS = {"angry": "angry", "anger": "angry", "sad": "sad", "sadness": "sad", "happy": "happy",
              "happiness": "happy", "surprise": "surprise", "surprised": "surprise", "fear": "fear",
              "disgust": "disgust", "contempt": "contempt", "neutral": "neutral"}
VOTE_COLUMNS = ("EmoClass_Major", "EmoClass")   # the annotator's primary emotion, where it has a column
RESTORE = "restore Labels/ from the MSP-Podcast release as distributed"
RESTORE_AUDIO = "restore it from the release's Audios/ folder"


@dataclass(frozen=True)
class Turn:
    """One speaking turn of labels_consensus, checked."""
    name: str          # FileName without .wav: the table's FileName
    file: str          # FileName as given: the file in Audios/
    code: str
    valence: float
    arousal: float
    dominance: float
    speaker: str       # SpkrID as given
    gender: str
    split_set: str
    where: str         # `line 12` (csv) or `entry MSP-PODCAST_0001_0008.wav` (json), for messages


# ---------------------------------------------------------------- pure parsing and checks


def listed(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def grouped(path, found: dict) -> list[Problem]:
    """One problem per kind, naming where it occurs: a release-wide defect is one line, not 100,000."""
    return [Problem(path, f"{what}: {listed(wheres)}", todo) for (what, todo), wheres in found.items()]


def stem(file: str) -> str:
    """A FileName as the tables name it: without `.wav`."""
    return file[:-len(".wav")] if file.lower().endswith(".wav") else file


def attribute(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_turn(fields: dict, where: str, found: dict) -> Turn | None:
    """The Turn of one consensus entry (all values as strings), or None with its defects in found:
    (what, todo) -> places."""
    before = sum(map(len, found.values()))
    file, code, split_set = fields["FileName"].strip(), fields["EmoClass"].strip(), fields["Split_Set"].strip()
    if not file or "/" in file or "\\" in file:
        found["FileName empty or a path, not a file name in Audios/", RESTORE].append(f"{where} ({file!r})")
    if code not in CODES:
        found[f"EmoClass {code!r} is none of the release's codes {' '.join(CODES)}", RESTORE].append(where)
    if split_set not in SPLIT_SETS:
        found[f"Split_Set {split_set!r} is none of {', '.join(SPLIT_SETS)}", RESTORE].append(where)
    values = {}
    for column in ATTRIBUTES:
        values[column] = attribute(fields[column])
        if values[column] is None:
            found[f"{column} is not a number", RESTORE].append(f"{where} ({fields[column]!r})")
        elif not SCALE[0] <= values[column] <= SCALE[1]:
            found[f"{column} lies outside the scale 1-7", RESTORE].append(f"{where} ({fields[column]})")
    if sum(map(len, found.values())) > before:
        return None
    return Turn(stem(file), file, code, values["EmoVal"], values["EmoAct"], values["EmoDom"], fields["SpkrID"].strip(),
                fields["Gender"].strip(), split_set, where)


def parse_consensus_csv(text: str, path) -> tuple[list[Turn], list[Problem]]:
    """The turns of labels_consensus.csv, and every problem of the file."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        return [], [Problem(path, f"not a readable csv ({err})", RESTORE)]
    missing = [field for field in FIELDS if field not in frame.columns]
    if missing:
        return [], [Problem(path, f"no column {', '.join(missing)} (it has {', '.join(frame.columns)})", RESTORE)]
    found = defaultdict(list)
    turns = [check_turn(row, f"line {number}", found)
             for number, row in enumerate(frame[list(FIELDS)].to_dict("records"), start=2)]
    return [t for t in turns if t is not None], grouped(path, found)


def parse_consensus_json(text: str, path) -> tuple[list[Turn], list[Problem]]:
    """The turns of labels_consensus.json ({FileName: {field: value}}), and every problem of the file."""
    try:
        entries = json.loads(text)
    except ValueError as err:
        return [], [Problem(path, f"not valid JSON ({err})", RESTORE)]
    if not isinstance(entries, dict):
        return [], [Problem(path, "not a JSON object of FileName -> labels", RESTORE)]
    found, turns = defaultdict(list), []
    for file, fields in entries.items():
        missing = [f for f in FIELDS[1:] if f not in fields] if isinstance(fields, dict) else list(FIELDS[1:])
        if missing:
            found[f"no {', '.join(missing)}", RESTORE].append(f"entry {file}")
            continue
        values = {field: "" if fields[field] is None else str(fields[field]) for field in FIELDS[1:]}
        turns.append(check_turn({"FileName": file, **values}, f"entry {file}", found))
    return [t for t in turns if t is not None], grouped(path, found)


def check_unique(turns: list[Turn], path) -> list[Problem]:
    by_name = defaultdict(list)
    for turn in turns:
        by_name[turn.name].append(turn.where)
    found = defaultdict(list)
    for name, wheres in by_name.items():
        if len(wheres) > 1:
            found["a FileName listed more than once", "keep one row per file"].append(f"{name} ({', '.join(wheres)})")
    return grouped(path, found)


def vote_class(choice: str) -> str | None:
    """An annotator's primary emotion as a class name, `other` (Other, Other-<free text>, O), or None."""
    choice = choice.strip()
    if choice in CODES and choice != "X":
        return CODES[choice]
    word = choice.lower()
    return "other" if word.startswith("other") else VOTE_WORDS.get(word)


_DETAIL = re.compile(r"^\s*[^;]*;\s*(?P<choice>[^;]*);")  # `WORKER00012; Angry; Annoyed; A:5.0; ...`


def parse_detailed(text: str, path) -> tuple[dict[str, Counter], list[Problem]]:
    """FileName (without .wav) -> votes per class name (and `other`) of labels_detailed.csv."""
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        return {}, [Problem(path, f"not a readable csv ({err})", RESTORE)]
    column = next((c for c in (*VOTE_COLUMNS, "EmoDetail") if c in frame.columns), None)
    if "FileName" not in frame.columns or column is None:
        return {}, [Problem(path, f"no FileName, or none of the columns {', '.join(VOTE_COLUMNS)}, EmoDetail (it has "
                            f"{', '.join(frame.columns)})", RESTORE)]
    votes, found = defaultdict(Counter), defaultdict(list)
    for number, (file, value) in enumerate(zip(frame["FileName"], frame[column]), start=2):
        match = _DETAIL.match(value) if column == "EmoDetail" else None
        choice = match["choice"] if match else value
        voted = vote_class(choice) if column != "EmoDetail" or match else None
        if voted is None:
            found[f"an annotator's emotion {choice.strip()!r} is none of {', '.join(CLASSES)}, Other or their codes",
                  RESTORE].append(f"line {number}")
            continue
        votes[stem(file.strip())][voted] += 1
    return dict(votes), grouped(path, found)


def vote_fractions(counts: Counter | None) -> dict:
    """annotators and votes_<class>: each class's share of the votes cast for one of the classes."""
    counts = counts or Counter()
    cast = sum(counts[c] for c in CLASSES)
    return {"annotators": sum(counts.values()),
            **{f"votes_{c}": counts[c] / cast if cast else None for c in CLASSES}}


def speaker_of(turn: Turn) -> str:
    """SpkrID, except that turns of an unknown speaker are each their own: they share no voice."""
    return f"unknown_{turn.name}" if turn.speaker.lower() in ("", "unknown") else turn.speaker


def build_tables(turns: list[Turn], seconds: dict, votes: dict | None) -> dict[str, pd.DataFrame]:
    """Table file name -> its rows, sorted by FileName."""
    rows = defaultdict(list)
    for turn in sorted(turns, key=lambda t: t.name):
        table, split = SPLIT_SETS[turn.split_set]
        row = {"FileName": turn.name, "Label": CODES[turn.code], "EmoClass": turn.code, "valence": turn.valence,
               "arousal": turn.arousal, "dominance": turn.dominance, "speaker": speaker_of(turn),
               "gender": turn.gender, "split": split, "Split_Set": turn.split_set,
               "duration": round(seconds[turn.name], 6)}
        if votes is not None:
            row.update(vote_fractions(votes.get(turn.name)))
        rows[table].append(row)
    return {table: pd.DataFrame(table_rows) for table, table_rows in rows.items()}


def label_map_text() -> str:
    """label_map.json: each class to itself, in the Challenge's order; other and no_agreement to null."""
    return json.dumps({**{c: c for c in CLASSES}, **{label: None for label in LEFT_OUT}}, indent=2) + "\n"


# ---------------------------------------------------------------- reading the release


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def read_consensus(msp_dir: Path) -> tuple[list[Turn], Path]:
    """The turns of Labels/labels_consensus.csv (else .json); ReleaseError with every problem of it."""
    if not msp_dir.is_dir():
        raise ReleaseError([Problem(msp_dir, "no such folder", "pass the MSP-Podcast release folder (holding Labels/ "
                                    "and Audios/) as --msp_dir")])
    csv_path, json_path = msp_dir / "Labels" / "labels_consensus.csv", msp_dir / "Labels" / "labels_consensus.json"
    if csv_path.is_file():
        path, (turns, problems) = csv_path, parse_consensus_csv(read_text(csv_path), csv_path)
    elif json_path.is_file():
        path, (turns, problems) = json_path, parse_consensus_json(read_text(json_path), json_path)
    else:
        nested = sorted(p.parent.parent for p in msp_dir.glob("*/Labels/labels_consensus.*"))
        hint = (f"pass {nested[0]} as --msp_dir" if nested else
                "pass the release folder, the one holding Labels/labels_consensus.csv (or .json) and Audios/")
        raise ReleaseError([Problem(csv_path, "missing, and so is labels_consensus.json", hint)])
    problems += check_unique(turns, path)
    if not problems and not turns:
        problems.append(Problem(path, "lists no speaking turn", RESTORE))
    if problems:
        raise ReleaseError(problems)
    return turns, path


def read_votes(msp_dir: Path, turns: list[Turn]) -> tuple[dict | None, list[Problem]]:
    path = msp_dir / "Labels" / "labels_detailed.csv"
    if not path.is_file():
        log.info("no %s: the tables get no votes_<class> columns (soft targets)", path)
        return None, []
    votes, problems = parse_detailed(read_text(path), path)
    names = {turn.name for turn in turns}
    unlabelled = len(set(votes) - names)
    if unlabelled:
        log.info("%s: %d file(s) not in the consensus labels are ignored", path, unlabelled)
    unvoted = len(names - set(votes))
    if unvoted and not problems:
        log.warning("%s names no annotation of %d speaking turn(s): their votes_<class> cells stay empty", path,
                    unvoted)
    return votes, problems


def probe_audio(msp_dir: Path, turns: list[Turn], labels: Path) -> tuple[list[Source], dict, list[Problem]]:
    """(sources, FileName -> seconds, problems) of every turn's audio: missing, unreadable and empty
    files are named one by one (a missing folder, or no file at all, once)."""
    audios = msp_dir / "Audios"
    if not audios.is_dir() or not any((audios / turn.file).is_file() for turn in turns):
        what = "no such folder" if not audios.is_dir() else f"holds none of the {len(turns)} files {labels.name} lists"
        return [], {}, [Problem(audios, f"{what} (e.g. {turns[0].file}, {turns[0].where})",
                                "download the release's audio: Audios/<FileName> as labels_consensus names them")]
    sources, seconds, problems = [], {}, []
    for turn in turns:
        path = audios / turn.file
        if not path.is_file():
            problems.append(Problem(path, f"missing, but {labels.name} {turn.where} labels it", RESTORE_AUDIO))
            continue
        try:
            info = audio_info(path)
        except AudioError as err:
            problems.append(Problem(path, f"unreadable audio ({err.reason})", RESTORE_AUDIO))
            continue
        if info.frames == 0:
            problems.append(Problem(path, "the file holds no samples", RESTORE_AUDIO))
            continue
        convert = (info.samplerate, info.channels, info.subtype, info.format) != (TARGET_SR, 1, "PCM_16", "WAV")
        sources.append(Source(turn.name, path, convert))
        seconds[turn.name] = info.frames / info.samplerate
    return sources, seconds, problems


def scan_release(msp_dir) -> tuple[dict[str, pd.DataFrame], list[Source]]:
    """The tables and the audio sources of a release; raises ReleaseError listing every problem
    (the labels first: the audio is probed only when the consensus labels are sound)."""
    msp_dir = Path(msp_dir)
    turns, labels = read_consensus(msp_dir)
    votes, problems = read_votes(msp_dir, turns)
    sources, seconds, audio_problems = probe_audio(msp_dir, turns, labels)
    if problems + audio_problems:
        raise ReleaseError(problems + audio_problems)
    return build_tables(turns, seconds, votes), sorted(sources)


# ---------------------------------------------------------------- writing the output


def summary(tables: dict[str, pd.DataFrame]) -> str:
    lines = []
    for name, table in tables.items():
        labels, splits = table["Label"].value_counts(), table["split"].value_counts()
        lines.append(f"{name}: {len(table)} speaking turns, {table['duration'].sum() / 3600:.2f} h, "
                     + "  ".join(f"{s} {splits[s]}" for s in ("train", "dev", "test") if s in splits))
        lines.append("  " + "  ".join(f"{label} {labels[label]}" for label in (*CLASSES, *LEFT_OUT) if label in labels))
    every = pd.concat(tables.values())
    left_out = every["Label"].isin(LEFT_OUT)
    if left_out.any():
        lines.append(f"{int(left_out.sum())} turn(s) labelled O (other) or X (no agreement) keep their attributes but "
                     f"are left out of categorical training and metrics ({LABEL_MAP_FILE} maps them to null)")
    unknown = every["speaker"].str.startswith("unknown_")
    if unknown.any():
        lines.append(f"{int(unknown.sum())} turn(s) of SpkrID Unknown: each is its own speaker, unknown_<FileName>")
    return "\n".join(lines)


def reusable(out_dir: Path, texts: dict[str, str], overwrite: bool) -> bool:
    """Whether audio already in out_dir may be kept: yes when every table there is this run's (a
    rerun, or a run that stopped before its tables); a different one (or one this release has no
    rows for) is refused unless overwrite, which then rewrites all audio."""
    differing = [out_dir / name for name in TABLES
                 if (out_dir / name).exists() and (out_dir / name).read_text() != texts.get(name)]
    if not differing:
        return True
    if not overwrite:
        raise ReleaseError([Problem(path, "already holds a different corpus table (another release, or changed "
                                    "labels)", "choose another --out_dir, or pass --overwrite to replace it")
                            for path in differing])
    log.warning("%s differ from this release's tables; --overwrite: rewriting them and all audio",
                ", ".join(map(str, differing)))
    return False


def write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        log.info("%s already up to date", path)
        return
    atomic_write_text(path, text)
    log.info("wrote %s", path)


def import_msppodcast(msp_dir, out_dir, link: bool = False, overwrite: bool = False) -> dict[str, Path]:
    """Write out_dir's tables (corpus.csv; test2.csv, test3.csv where the release has those sets),
    label_map.json and audio/; return table file name -> path. Raises ReleaseError (nothing
    written) if the release or the output folder is unusable."""
    out_dir = Path(out_dir)
    tables, sources = scan_release(msp_dir)
    log.info("%s:\n%s", msp_dir, summary(tables))
    texts = {name: table.to_csv(index=False) for name, table in tables.items()}
    reuse = reusable(out_dir, texts, overwrite)
    write_audio(sources, out_dir / "audio", link, reuse, place=partial(place_audio, todo=RESTORE_AUDIO))
    write_if_changed(out_dir / LABEL_MAP_FILE, label_map_text())
    for stale in [name for name in TABLES if name not in texts and (out_dir / name).exists()]:
        (out_dir / stale).unlink()   # --overwrite: a test set this release does not have
        log.warning("removed %s: this release has no %s rows", out_dir / stale, stale[:-4].capitalize())
    # corpus.csv goes last: its presence means the audio folder is complete.
    for name in sorted(texts, key=lambda n: n == CSV_NAME):
        write_if_changed(out_dir / name, texts[name])
    return {name: out_dir / name for name in texts}
