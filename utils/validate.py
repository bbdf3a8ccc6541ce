"""Check every input of a run before any training starts: the csv's rows, the audio
files and the RoBERTa features. All problems are reported at once, each by name."""
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from utils.labels import LABEL_TO_INDEX
from utils.text import clean_transcript

SHOWN_PER_KIND = 10


class InputProblems(ValueError):
    """Raised with the full list of problems found in a run's inputs."""


def table_problems(table: pd.DataFrame, sessions, needs_training: bool = True) -> dict:
    """Problems visible in the csv alone: kind -> list of 'where: what' strings. A csv of the
    test session alone is fine for evaluation (needs_training False), as upstream's inference."""
    problems = defaultdict(list)
    for name in table.loc[table["FileName"].duplicated(), "FileName"].unique():
        problems["duplicate ids (keep one row each)"].append(name)
    for row in table.loc[~table["Label"].isin(list(LABEL_TO_INDEX))].itertuples():
        problems["labels outside neu/hap/exc/ang/sad (filter them out)"].append(f"{row.FileName}: {row.Label!r}")
    for row in table.itertuples():
        if not clean_transcript(row.text):
            problems["empty transcripts in `text` (no CTC target; fix or drop the row)"].append(row.FileName)
    present = set(table["session"])
    for session in sessions:
        if session not in present:
            problems["test sessions with no utterances (check --sessions and the csv)"].append(f"session {session}")
    if needs_training and present and present <= set(sessions) and len(present) == 1:
        problems["no training sessions (the csv holds only the test session)"].append(f"sessions {sorted(present)}")
    return problems


def readable_headers(names, folder, suffix: str, read_header, errors, kinds: tuple, problems):
    """(path, header) for each `<folder>/<name><suffix>` that exists and whose header
    read_header() can parse; the others are filed under kinds = (missing, unreadable)."""
    missing, unreadable = kinds
    for name in names:
        path = Path(folder) / f"{name}{suffix}"
        if not path.is_file():
            problems[missing].append(str(path))
            continue
        try:
            header = read_header(path)
        except errors as err:
            problems[unreadable].append(f"{path}: {err}")
            continue
        yield path, header


def audio_problems(names, audio_dir, min_samples: int = 1) -> dict:
    """Missing, unreadable or empty wavs, and wavs shorter than the encoder's receptive field
    (min_samples at 16 kHz), from their headers (nothing is decoded)."""
    problems = defaultdict(list)
    kinds = ("missing audio files (check --data_path_audio)", "unreadable audio files (re-export as 16 kHz PCM wav)")
    for path, info in readable_headers(names, audio_dir, ".wav", lambda p: sf.info(str(p)),
                                       (sf.LibsndfileError, RuntimeError), kinds, problems):
        if info.frames == 0:
            problems["empty audio files (re-export or drop the row)"].append(str(path))
        elif info.frames * 16000 / info.samplerate < min_samples:
            problems[f"audio shorter than the speech encoder's receptive field ({min_samples} samples at 16 kHz, "
                     f"{min_samples / 16:.0f} ms; drop the row)"].append(f"{path}: {info.duration * 1000:.1f} ms")
    return problems


def feature_problems(names, roberta_dir) -> dict:
    """Missing or misshapen RoBERTa features: [1, T, H] or [T, H], T > 0, one H for all."""
    problems = defaultdict(list)
    dims = defaultdict(list)
    kinds = ("missing RoBERTa features (run data_prep/extract_roberta.py)", "unreadable .npy files (re-extract them)")
    for path, shape in readable_headers(names, roberta_dir, ".npy",
                                        lambda p: np.load(p, mmap_mode="r", allow_pickle=False).shape,
                                        (ValueError, OSError), kinds, problems):
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2 or shape[0] == 0:
            problems["features of the wrong shape (expected [1, T, H] or [T, H]; re-extract)"].append(
                f"{path}: {shape}")
            continue
        dims[shape[1]].append(path)
    if len(dims) > 1:
        majority = max(dims, key=lambda d: len(dims[d]))
        for dim, paths in dims.items():
            if dim != majority:
                problems[f"features whose size differs from the others' {majority} (mixed encoders?)"] += [
                    f"{p}: {dim}" for p in paths]
    return problems


def validate_inputs(table, sessions, audio_dir, roberta_dir=None, csv_path="csv", needs_training=True,
                    min_samples: int = 1) -> None:
    """Raise InputProblems listing everything wrong, grouped by kind, or return quietly."""
    problems = table_problems(table, sessions, needs_training)
    for found in (audio_problems(table["FileName"], audio_dir, min_samples),
                  feature_problems(table["FileName"], roberta_dir) if roberta_dir else {}):
        for kind, items in found.items():
            problems[kind] += items
    if not problems:
        return
    total = sum(len(v) for v in problems.values())
    lines = [f"{csv_path}: {total} problem(s) in the run's inputs; nothing was trained"]
    for kind, items in problems.items():
        lines.append(f"  {len(items)} {kind}:")
        lines += [f"    {item}" for item in items[:SHOWN_PER_KIND]]
        if len(items) > SHOWN_PER_KIND:
            lines.append(f"    ... and {len(items) - SHOWN_PER_KIND} more")
    raise InputProblems("\n".join(lines))
