"""The EmoBox importer: `import_emobox` turns one EmoBox corpus into the corpus table of
docs/CORPUS.md, `corpus.csv` + `audio/<FileName>.wav` + `label_map.json` (data_prep/import_emobox.py
is its command line). One file for the one release format: the notes below on what EmoBox's
repository holds govern its pure parsers and checks of the metadata and its thin layer that checks
every wav, converts (or links) the audio and writes the csv last, so they are read together.

What this relies on, read in EmoBox's repository (github.com/emo-box/EmoBox: README.md,
EmoBox/EmoDataset.py, EmoBox/utils/preprocess_utils.py, data/{cremad,cafe,iemocap,meld,msppodcast,
pavoque}/):
- `emobox_dir` is one corpus folder, `data/<corpus>/`, holding `fold_<k>/<corpus>_train_fold_<k>.jsonl`
  and `<corpus>_test_fold_<k>.jsonl` for k = 1..K, optionally `<corpus>_valid_fold_<k>.jsonl` (the
  official dev set of MSP-Podcast and MELD, which have one fold), and `label_map.json`.
- Each jsonl line is one JSON object: key (`<corpus>-<id>`, unique), dataset, wav, type, sample_rate,
  num_frame, task, length (seconds), emo (the corpus's own code), channel; PAVOQUE's also carry
  start_time/end_time (seconds): the utterance is that stretch of a long recording, cut as EmoDataset
  does (frames int(start * sr) to int(end * sr)). Required here: key, wav, emo.
- `wav` is relative to the EmoBox root and starts with `downloads/<corpus>/`, so `wav_root` is the
  folder that holds `downloads/` (EmoBox README, "Prepare datasets"). Not all are wavs: PAVOQUE's
  are flac (read by libsndfile); MELD's mp4, MER2023's and eNTERFACE's avi, EMNS's webm and MEAD's m4a
  are read by FFmpeg (PyAV; dataio.audio): the first audio stream, converted to 16 kHz mono wav.
- `channel` is not a channel count (CREMA-D writes 1 for every file, MELD 1 or 3): channels are read
  from the files and averaged; sample_rate and num_frame are likewise taken from the file itself.
- `label_map.json` maps emo code -> class name, and may map two codes to one name (IEMOCAP's
  exc and hap -> Happy): it is copied as it is, merging is the reader's business.
- No jsonl names the speaker. `data/<corpus>/data.seg.wrd.stm` does (`<key> <channel> <spk> ...`,
  written for every corpus by preprocess_utils.write_mini_format); when it is there and names every
  key, its spk becomes the `speaker` column, otherwise there is none. It is EmoBox's grouping, not
  always the talker: IEMOCAP's spk is the dialog's lead actor (`Ses01F` for an M utterance too).

The csv: FileName (the key, characters other than letters, digits, `.`, `_`, `-` replaced by `_`),
key (as EmoBox spells it), path (`<FileName>.wav`), Label (the emo code), speaker (see above),
dataset, duration (seconds of the source), and `split_<k>` per fold: train, dev (EmoBox's valid),
test, or empty when the utterance is not in fold k."""
import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dataio.iemocap import Problem, ReleaseError, link_or_copy, write_audio
from dataio.audio import TARGET_SR, AudioError, audio_info, read_audio, write_wav
from utils.files import atomic_write_text

log = logging.getLogger(__name__)

CSV_NAME = "corpus.csv"
LABEL_MAP = "label_map.json"
STM = "data.seg.wrd.stm"
SPLIT_OF_FILE = {"train": "train", "valid": "dev", "test": "test"}  # EmoBox's file word -> csv split
REQUIRED = ("key", "wav", "emo")
RESTORE = "restore it from EmoBox's data/ folder"
LENGTH_TOLERANCE_S = 0.1   # jsonl length vs the file's: more is reported (another version of the corpus?)
SHORT_STREAM_FRACTION = 0.05  # a file this much shorter than the jsonl's length is refused (truncated)
SEGMENT_TOLERANCE_S = 0.01  # a segment may end this far past the end of its recording
_FOLD_DIR = re.compile(r"^fold_(\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Entry:
    """One jsonl line."""
    key: str
    dataset: str
    wav: str
    emo: str
    start: float | None
    end: float | None
    length: float | None
    where: str  # `<file>:<line>`, for messages


@dataclass(frozen=True)
class Source:
    """Where an output wav comes from and how: converted (resampled, downmixed, cut) or copied as it is."""
    name: str
    path: Path
    start: float | None
    end: float | None
    seconds: float
    convert: bool


# ---------------------------------------------------------------- pure parsing and checks


def safe_name(key: str) -> str:
    """The key as a file name: characters outside letters, digits, `.`, `_`, `-` become `_`."""
    name = _UNSAFE.sub("_", key)
    return "_" + name[1:] if name.startswith(".") else name


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_line(line: str, where: str, corpus: str) -> Entry | str:
    """An Entry, or what is wrong with the line."""
    try:
        obj = json.loads(line)
    except ValueError as err:
        return f"not valid JSON ({err})"
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    bad = [field for field in REQUIRED if not isinstance(obj.get(field), str) or not obj[field].strip()]
    if bad:
        return "field " + ", ".join(repr(f) for f in bad) + " missing or not a non-empty string"
    start, end = obj.get("start_time"), obj.get("end_time")
    if (start is None) != (end is None):
        return "start_time and end_time must come together"
    if start is not None and not (_number(start) and _number(end) and 0 <= start < end):
        return f"start_time {start!r} and end_time {end!r} must be numbers with 0 <= start_time < end_time"
    length = obj.get("length")
    return Entry(key=obj["key"], dataset=str(obj.get("dataset") or corpus), wav=obj["wav"], emo=obj["emo"],
                 start=start, end=end, length=float(length) if _number(length) else None, where=where)


def parse_jsonl(text: str, name: str, corpus: str) -> tuple[list[Entry], list[Problem]]:
    """The entries of one fold file and a problem per malformed line; blank lines are skipped."""
    entries, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parsed = parse_line(line, f"{name}:{number}", corpus)
        if isinstance(parsed, Entry):
            entries.append(parsed)
        else:
            problems.append(Problem(name, f"line {number}: {parsed}", RESTORE))
    return entries, problems


def parse_label_map(text: str, name: str) -> tuple[dict | None, list[Problem]]:
    try:
        mapping = json.loads(text)
    except ValueError as err:
        return None, [Problem(name, f"not valid JSON ({err})", RESTORE)]
    if not isinstance(mapping, dict) or not mapping or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        return None, [Problem(name, "must be a non-empty JSON object of emo code -> class name", RESTORE)]
    return mapping, []


def parse_stm_speakers(text: str) -> dict[str, str] | None:
    """key -> spk of an EmoBox stm file (`<key> <channel> <spk> <start> <end> ...`); None if a line is short."""
    speakers = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3:
            return None
        speakers[fields[0]] = fields[2]
    return speakers


def examples(items, n: int = 3) -> str:
    items = sorted(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_labels(folds: dict, files: dict, label_map: dict) -> list[Problem]:
    """emo codes missing from label_map.json, one problem per file and code."""
    problems = []
    for k, splits in folds.items():
        for split, entries in splits.items():
            unknown = defaultdict(list)
            for entry in entries:
                if entry.emo not in label_map:
                    unknown[entry.emo].append(entry.where.rsplit(":", 1)[1])
            for code, lines in unknown.items():
                what = (f"line {lines[0]}" + (f" and {len(lines) - 1} more" if len(lines) > 1 else "") +
                        f": emo {code!r} is not in {LABEL_MAP} (codes: {', '.join(sorted(label_map))})")
                problems.append(Problem(files[k][split], what, f"add {code!r} to {LABEL_MAP} or {RESTORE}"))
    return problems


def check_consistency(folds: dict, files: dict) -> list[Problem]:
    """Every key has one label and one audio source across all files, and appears once per fold."""
    problems, first = [], {}
    for k, splits in folds.items():
        seen = {}  # key -> (split, entry) within this fold
        overlap = defaultdict(set)
        for split, entries in splits.items():
            for entry in entries:
                if entry.key in seen:
                    other_split, other = seen[entry.key]
                    if other_split == split:
                        problems.append(Problem(files[k][split], f"line {entry.where.rsplit(':', 1)[1]}: key "
                                                f"{entry.key} already on line {other.where.rsplit(':', 1)[1]}",
                                                "keep one line per key"))
                    else:
                        overlap[tuple(sorted((other_split, split)))].add(entry.key)
                    continue
                seen[entry.key] = (split, entry)
                earlier = first.setdefault(entry.key, entry)
                if earlier.emo != entry.emo:
                    problems.append(Problem(files[k][split], f"key {entry.key} is labelled {entry.emo!r} at "
                                            f"{entry.where} but {earlier.emo!r} at {earlier.where}",
                                            f"give it one label ({RESTORE})"))
                elif (earlier.wav, earlier.start, earlier.end) != (entry.wav, entry.start, entry.end):
                    problems.append(Problem(files[k][split], f"key {entry.key} has audio {entry.wav} at "
                                            f"{entry.where} but {earlier.wav} at {earlier.where}",
                                            f"give it one audio file ({RESTORE})"))
        for (a, b), keys in overlap.items():
            what = f"fold {k}: {len(keys)} key(s) in both {a} and {b}: {examples(keys)}"
            problems.append(Problem(files[k][b], what, f"a fold's splits must not share utterances; {RESTORE}"))
    return problems


def check_folds(folds: dict, files: dict) -> list[Problem]:
    """No empty split, and no test label that the fold's training set lacks."""
    problems = []
    for k, splits in folds.items():
        for split, entries in splits.items():
            if not entries:
                problems.append(Problem(files[k][split], f"fold {k} has no {split} utterances", RESTORE))
        train, test = splits.get("train", []), splits.get("test", [])
        unseen = {e.emo for e in test} - {e.emo for e in train}
        if train and unseen:
            what = f"fold {k}: test label(s) {examples(unseen)} never occur in its training set ({files[k]['train']})"
            problems.append(Problem(files[k]["test"], what, f"a model cannot learn them; {RESTORE}"))
    return problems


def check_names(keys) -> list[Problem]:
    by_name = defaultdict(list)
    for key in keys:
        by_name[safe_name(key)].append(key)
    return [Problem(name, f"keys {examples(group)} become the same file name", "rename one of them")
            for name, group in by_name.items() if len(group) > 1]


def build_table(entries: dict, sources: dict, folds: dict, speakers: dict | None) -> pd.DataFrame:
    """The corpus table: one row per key, sorted by FileName; split_<k> as in the fold files."""
    split_of = {k: {e.key: SPLIT_OF_FILE[split] for split, es in splits.items() for e in es}
                for k, splits in folds.items()}
    rows = []
    for key, entry in entries.items():
        name = safe_name(key)
        row = {"FileName": name, "key": key, "path": f"{name}.wav", "Label": entry.emo}
        if speakers is not None:
            row["speaker"] = speakers[key]
        row.update(dataset=entry.dataset, duration=round(sources[key].seconds, 6))
        row.update({f"split_{k}": split_of[k].get(key, "") for k in sorted(folds)})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("FileName", ignore_index=True)


# ---------------------------------------------------------------- reading the corpus folder


def find_fold_files(emobox_dir: Path, problems: list[Problem]) -> dict[int, dict[str, Path]] | None:
    """fold number -> EmoBox split word (train/valid/test) -> file, with a problem per missing one;
    None (and a problem) if the folder is no corpus folder at all."""
    if not emobox_dir.is_dir():
        problems.append(Problem(emobox_dir, "no such folder", "pass EmoBox's data/<corpus> folder as --emobox_dir"))
        return None
    corpus = emobox_dir.name
    numbers = sorted(int(m[1]) for d in emobox_dir.iterdir() if d.is_dir() and (m := _FOLD_DIR.match(d.name)))
    if not numbers:
        nested = sorted(d.name for d in emobox_dir.iterdir() if d.is_dir() and any(d.glob("fold_*")))
        hint = (f"pass one corpus folder, e.g. {emobox_dir / nested[0]}" if nested
                else "pass EmoBox's data/<corpus> folder as --emobox_dir")
        problems.append(Problem(emobox_dir, "holds no fold_<k> folders", hint))
        return None
    for missing in sorted(set(range(1, numbers[-1] + 1)) - set(numbers)):
        problems.append(Problem(emobox_dir / f"fold_{missing}", f"missing, but fold_{numbers[-1]} exists", RESTORE))
    files = {}
    for k in numbers:
        folder = emobox_dir / f"fold_{k}"
        files[k] = {}
        for word in ("train", "valid", "test"):
            path = folder / f"{corpus}_{word}_fold_{k}.jsonl"
            if path.is_file():
                files[k][word] = path
            elif word != "valid":
                strays = sorted(p.name for p in folder.glob("*.jsonl") if not p.name.startswith(f"{corpus}_"))
                seen = (f" (the folder holds {examples(strays)}: EmoBox's file names start with the corpus "
                        f"folder's name, {corpus!r})" if strays else "")
                problems.append(Problem(path, f"missing: fold {k} needs a {word} file{seen}", RESTORE))
    standard = {path for splits in files.values() for path in splits.values()}
    others = sorted(p.relative_to(emobox_dir).as_posix() for p in emobox_dir.glob("fold_*/*.jsonl") if p not in standard)
    if others:
        log.warning("ignoring %d jsonl file(s) that are not EmoBox's fold files <corpus>_{train,valid,test}_fold_<k>"
                    ".jsonl (never merged): %s", len(others), ", ".join(others))
    return {k: splits for k, splits in files.items() if {"train", "test"} <= set(splits)}


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def read_metadata(emobox_dir: Path) -> tuple[dict, dict, dict, str]:
    """(folds: k -> split word -> entries, files: k -> split word -> path, label_map, label_map text);
    raises ReleaseError with every problem of the metadata."""
    problems: list[Problem] = []
    files = find_fold_files(emobox_dir, problems)
    if files is None:
        raise ReleaseError(problems)
    label_map, label_text = None, ""
    map_path = emobox_dir / LABEL_MAP
    if not map_path.is_file():
        problems.append(Problem(map_path, "missing (emo code -> class name)", RESTORE))
    elif map_path.is_file():
        label_text = read_text(map_path)
        label_map, map_problems = parse_label_map(label_text, str(map_path))
        problems += map_problems
    folds = {}
    for k, splits in files.items():
        folds[k] = {}
        for word, path in splits.items():
            folds[k][word], line_problems = parse_jsonl(read_text(path), str(path), emobox_dir.name)
            problems += line_problems
    if label_map is not None:
        problems += check_labels(folds, files, label_map)
    problems += check_consistency(folds, files) + check_folds(folds, files)
    if problems:
        raise ReleaseError(problems)
    return folds, files, label_map, label_text


def read_speakers(emobox_dir: Path, keys) -> dict[str, str] | None:
    path = emobox_dir / STM
    if not path.is_file():
        log.info("no %s: the csv gets no speaker column", path)
        return None
    speakers = parse_stm_speakers(read_text(path))
    missing = set(keys) - set(speakers or {})
    if speakers is None or missing:
        what = "has lines of fewer than 3 fields" if speakers is None else f"names no speaker for {examples(missing)}"
        log.warning("%s %s: the csv gets no speaker column", path, what)
        return None
    return {key: speakers[key] for key in keys}


def probe_sources(entries: dict, wav_root: Path) -> tuple[dict, list[Problem]]:
    """key -> Source for every entry whose audio is readable and not empty; a problem for each other."""
    problems, sources, infos = [], {}, {}
    found = [key for key, entry in entries.items() if (wav_root / entry.wav).is_file()]
    if entries and not found:
        some = next(iter(entries.values()))
        return {}, [Problem(wav_root, f"none of the {len(entries)} audio files is there (e.g. {some.wav}, "
                            f"listed at {some.where})", "pass the folder that holds downloads/<corpus>/ as --wav_root")]
    for key, entry in entries.items():
        path = wav_root / entry.wav
        if not path.is_file():
            problems.append(Problem(path, f"missing, but {entry.where} lists it for {key}",
                                    "download the corpus so that its files match the jsonl's wav paths"))
            continue
        if path not in infos:
            try:
                infos[path] = audio_info(path)
            except AudioError as err:
                infos[path] = err
        info = infos[path]
        if isinstance(info, Exception):
            problems.append(Problem(path, f"unreadable audio ({info.reason}), listed at {entry.where}",
                                    "restore the file, or convert it to wav under the same name"))
        elif info.frames == 0:
            problems.append(Problem(path, f"the file holds no samples, listed at {entry.where}", "restore the file"))
        else:
            source = make_source(key, entry, path, info, problems)
            if source is not None and entry.length and source.seconds < entry.length * (1 - SHORT_STREAM_FRACTION):
                problems.append(Problem(path, f"{source.seconds:.2f} s of audio, over {SHORT_STREAM_FRACTION:.0%} "
                                        f"shorter than the {entry.length:.2f} s {entry.where} gives for {key}",
                                        "the file is truncated or another version: download it again"))
            elif source is not None:
                sources[key] = source
    return sources, problems


def make_source(key: str, entry: Entry, path: Path, info, problems: list[Problem]) -> Source | None:
    name = safe_name(key)
    if entry.start is None:
        convert = (info.samplerate, info.channels, info.subtype, info.format) != (TARGET_SR, 1, "PCM_16", "WAV")
        return Source(name, path, None, None, info.frames / info.samplerate, convert)
    first, last = int(entry.start * info.samplerate), int(entry.end * info.samplerate)
    if first >= info.frames or last - info.frames > SEGMENT_TOLERANCE_S * info.samplerate:
        problems.append(Problem(path, f"{entry.where}: segment {entry.start}-{entry.end} s of {key} lies past the "
                                f"end of the recording ({info.frames / info.samplerate:.2f} s)", RESTORE))
        return None
    return Source(name, path, entry.start, entry.end, (min(last, info.frames) - first) / info.samplerate, True)


def warn_lengths(entries: dict, sources: dict) -> None:
    off = [key for key, source in sources.items()
           if entries[key].length is not None and abs(entries[key].length - source.seconds) > LENGTH_TOLERANCE_S]
    if off:
        key = off[0]
        log.warning("%d file(s) differ from the jsonl's length by more than %.1f s (e.g. %s: %.2f s, jsonl %.2f s); "
                    "another version of the corpus?", len(off), LENGTH_TOLERANCE_S, sources[key].path,
                    sources[key].seconds, entries[key].length)


def scan_corpus(emobox_dir, wav_root) -> tuple[pd.DataFrame, list[Source], str]:
    """The csv table, the audio sources and label_map.json's text; raises ReleaseError listing every
    problem found (metadata first: the wavs are probed only when the metadata is sound)."""
    emobox_dir, wav_root = Path(emobox_dir), Path(wav_root)
    folds, files, label_map, label_text = read_metadata(emobox_dir)
    entries = {}
    for splits in folds.values():
        for split_entries in splits.values():
            for entry in split_entries:
                entries.setdefault(entry.key, entry)
    problems = check_names(entries)
    if not wav_root.is_dir():
        problems.append(Problem(wav_root, "no such folder", "pass the folder that holds downloads/<corpus>/"))
        raise ReleaseError(problems)
    sources, wav_problems = probe_sources(entries, wav_root)
    if problems + wav_problems:
        raise ReleaseError(problems + wav_problems)
    warn_lengths(entries, sources)
    table = build_table(entries, sources, folds, read_speakers(emobox_dir, entries))
    return table, sorted(sources.values(), key=lambda s: s.name), label_text


# ---------------------------------------------------------------- writing the output


def existing_audio_reusable(csv_path: Path, csv_text: str, overwrite: bool) -> bool:
    """Yes for an identical rerun or a run that stopped before its csv; a different csv is refused
    unless --overwrite, which then rewrites all audio."""
    if not csv_path.exists() or csv_path.read_text() == csv_text:
        return True
    if not overwrite:
        raise ReleaseError([Problem(csv_path, "already holds a different corpus table (another corpus, or "
                                    "changed metadata)", "choose another --out_dir, or pass --overwrite to replace it")])
    log.warning("%s differs from this corpus's table; --overwrite: rewriting it and all audio", csv_path)
    return False


def read_segment(source: Source) -> np.ndarray:
    """Frames int(start * sr) to int(end * sr) of the recording, as EmoDataset cuts them, at 16 kHz
    mono, read by seeking (hours-long recordings are not read whole)."""
    return read_audio(source.path, TARGET_SR, start=source.start, end=source.end)


def place_audio(source: Source, dest: Path, link: bool) -> None:
    """Convert, link or copy one file; always under a temporary name, then renamed."""
    if source.convert:
        try:
            write_wav(dest, read_segment(source) if source.start is not None else read_audio(source.path))
        except AudioError as err:
            # Only a body corrupt past a valid header gets here: the scan read every header.
            what = f"could not be converted to 16 kHz mono ({err.__cause__ or err})"
            raise ReleaseError([Problem(source.path, what, "restore the file")]) from err
        return
    link_or_copy(source.path, dest, link)


def summary(table: pd.DataFrame, label_map: dict) -> str:
    counts = table["Label"].value_counts()
    lines = [f"{len(table)} utterances, {table['duration'].sum() / 3600:.2f} h"
             + (f", {table['speaker'].nunique()} speakers" if "speaker" in table else ", no speaker column"),
             "labels:  " + "  ".join(f"{code} ({label_map.get(code, '?')}) {counts[code]}" for code in sorted(counts.index))]
    for column in [c for c in table if c.startswith("split_")]:
        split = table[column].value_counts()
        lines.append(f"fold {column[6:]}: " + "  ".join(f"{s} {split[s]}" for s in ("train", "dev", "test") if s in split))
    return "\n".join(lines)


def write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


def import_emobox(emobox_dir, wav_root, out_dir, link: bool = False, overwrite: bool = False) -> Path:
    """Write out_dir/corpus.csv, out_dir/label_map.json and out_dir/audio/; return the csv's path.
    Raises ReleaseError (nothing written) if the corpus or the output folder is unusable."""
    out_dir = Path(out_dir)
    table, sources, label_text = scan_corpus(emobox_dir, wav_root)
    log.info("%s:\n%s", Path(emobox_dir).name, summary(table, json.loads(label_text)))
    csv_text = table.to_csv(index=False)
    csv_path = out_dir / CSV_NAME
    reuse = existing_audio_reusable(csv_path, csv_text, overwrite)
    write_audio(sources, out_dir / "audio", link, reuse, place=place_audio)
    write_if_changed(out_dir / LABEL_MAP, label_text)
    # The csv goes last: its presence means the audio folder is complete.
    if write_if_changed(csv_path, csv_text):
        log.info("wrote %s (%d utterances)", csv_path, len(table))
    else:
        log.info("%s already up to date (%d utterances)", csv_path, len(table))
    return csv_path
