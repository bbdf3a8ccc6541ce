"""Check a run's files before any training starts: the audio and the RoBERTa features, from
their headers (the table's own checks are corpus.table_problems). All problems are reported
at once, each by name."""
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dataio.audio import AudioError, audio_info
from models.errors import MMERError


SHOWN_PER_KIND = 10
HEADER_THREADS = 8


class InputProblems(MMERError, ValueError):
    """Raised with the full list of problems found in a run's inputs."""


def readable_headers(paths, read_header, errors, kinds: tuple, problems):
    """(path, header) for each path that exists and whose header read_header() can parse;
    the others are filed under kinds = (missing, unreadable). Headers are read in threads
    (file system latency and libsndfile/FFmpeg release the GIL), in order."""
    missing, unreadable = kinds

    def header(path):
        if not path.is_file():
            return None, None
        try:
            return read_header(path), None
        except errors as err:
            return None, err
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        for path, (found, err) in zip(paths, pool.map(header, paths, chunksize=256)):
            if err is not None:
                problems[unreadable].append(f"{path}: {err}")
            elif found is None:
                problems[missing].append(str(path))
            else:
                yield path, found


def audio_problems(paths, min_samples: int = 1) -> dict:
    """Missing, unreadable or empty audio files (a wav cut short or a header declaring an absurd rate
    or length among the unreadable: dataio.audio.check_header), and files shorter than the encoder's
    receptive field (min_samples at 16 kHz), from their headers (nothing is decoded)."""
    problems = defaultdict(list)
    kinds = ("missing audio files (check --data_path_audio)",
             "unreadable audio files (cut short, a header no recording has, no audio stream, corrupt, or a codec "
             "FFmpeg cannot decode: copy them again or re-export as 16 kHz PCM wav)")
    for path, info in readable_headers(paths, audio_info, (AudioError,), kinds, problems):
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
    for path, shape in readable_headers([Path(roberta_dir) / f"{name}.npy" for name in names],
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


def ssl_problems(names, ssl_dir) -> dict:
    """Missing or misshapen cached hidden states: [states, frames, width], frames > 0, the same
    states and width in every file."""
    problems = defaultdict(list)
    shapes = defaultdict(list)
    kinds = ("missing hidden states (run data_prep/extract_ssl.py on the csv: it resumes)",
             "unreadable .npy files (re-extract them)")
    for path, shape in readable_headers([Path(ssl_dir) / f"{name}.npy" for name in names],
                                        lambda p: np.load(p, mmap_mode="r", allow_pickle=False).shape,
                                        (ValueError, OSError), kinds, problems):
        if len(shape) != 3 or shape[1] == 0:
            problems["hidden states of the wrong shape (expected [states, frames, width]; re-extract)"].append(
                f"{path}: {shape}")
            continue
        shapes[(shape[0], shape[2])].append(path)
    if len(shapes) > 1:
        majority = max(shapes, key=lambda k: len(shapes[k]))
        for key, paths in shapes.items():
            if key != majority:
                problems[f"hidden states unlike the others' {majority[0]} states of width {majority[1]} (mixed "
                         "encoders or --layers?)"] += [f"{p}: {key[0]} x {key[1]}" for p in paths]
    return problems


def file_problems(problems: dict, audio_paths, names, roberta_dir=None, min_samples: int = 1) -> dict:
    """Add the audio files' problems and, with roberta_dir, the text features' to `problems`."""
    for found in (audio_problems(audio_paths, min_samples),
                  feature_problems(names, roberta_dir) if roberta_dir else {}):
        for kind, items in found.items():
            problems[kind] += items
    return problems


def raise_problems(problems: dict, csv_path="csv") -> None:
    """Raise InputProblems listing everything wrong, grouped by kind, or return quietly."""
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
