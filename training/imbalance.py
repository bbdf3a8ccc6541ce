"""Imbalanced classes and attribute scales, read from a training table: the class weights of the
weighted losses (models/dimensional.py, F.cross_entropy) and the rating scale that
normalise_attributes maps to [0, 1]. No torch: these are numbers a run records before it trains."""
import math

import numpy as np

from dataio.labels import LabelError
from models.settings import ATTRIBUTES
from training.settings import ConfigError

CLASS_WEIGHT_MODES = ("none", "balanced", "sqrt")


def class_counts(labels, num_classes: int) -> np.ndarray:
    """Utterances of each class [num_classes]; labels < 0 (left out) are not counted."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels[labels >= 0], minlength=num_classes)


def class_weights(counts, mode: str = "balanced", class_names=None, source: str = "the training split") -> np.ndarray:
    """One weight per class, from its utterance count n_k (K classes, N utterances):
    - "none": 1 for every class;
    - "balanced": N / (K n_k), the MSP-Podcast Challenge baseline's (and scikit-learn's
      compute_class_weight("balanced")): every class weighs N / K in total, as if balanced;
    - "sqrt": sqrt(N / (K n_k)), a milder correction (weights inversely proportional to the square
      root of the class frequency; the total weight of class k is sqrt(n_k N / K)).
    A class with no utterance has no finite weight: an error names it (source: where the counts
    come from, for the message)."""
    if mode not in CLASS_WEIGHT_MODES:
        raise ConfigError(f"--class_weights {mode!r} is not one of {', '.join(CLASS_WEIGHT_MODES)}")
    counts = np.asarray(counts, dtype=np.float64)
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(len(counts))]
    if counts.ndim != 1 or len(counts) == 0 or len(names) != len(counts) or (counts < 0).any():
        raise LabelError(f"class counts {counts.tolist()} of {source} for classes {names}: need one "
                         "non-negative count per class")
    if mode == "none":
        return np.ones(len(counts))
    empty = [name for name, count in zip(names, counts) if count == 0]
    if empty:
        raise LabelError(f"{source} has no utterance of {', '.join(map(repr, empty))}, so --class_weights {mode} "
                         "cannot weigh it: leave the class out of the label map (--label_map, null), choose other "
                         "folds, or use --class_weights none")
    balanced = counts.sum() / (len(counts) * counts)
    return balanced if mode == "balanced" else np.sqrt(balanced)


def parse_attribute_range(given: str) -> tuple[float, float]:
    """`--attribute_range 1,7` -> (1.0, 7.0); anything else (one number, words, low >= high,
    infinities) is refused with the flag's form."""
    parts = [part.strip() for part in given.split(",")]
    try:
        low, high = (float(part) for part in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"--attribute_range {given!r}: give the rating scale as low,high with low < high, "
                          "e.g. --attribute_range 1,5 (IEMOCAP) or 1,7 (MSP-Podcast)")
    return low, high


def attribute_range(frame, columns, given: str | None = None, source: str = "the table") -> tuple[float, float]:
    """The rating scale (low, high) of the attribute columns of `frame` (a pandas DataFrame):
    parsed from `given` (--attribute_range) when set, else read from the data, the smallest and
    largest rating rounded out to whole numbers (IEMOCAP's means of 1-5 ratings: (1, 5) once the
    table holds both ends). Missing ratings (NaN) are ignored; a rating outside a given scale,
    a missing column, or no rating at all is refused, naming `source` and the fix."""
    columns = list(columns)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ConfigError(f"{source} has no column {', '.join(missing)} (its columns: {', '.join(map(str, frame.columns))}); "
                          "name the attribute columns it has, or re-make the table with its importer (data_prep/)")
    values = frame[columns].to_numpy(dtype=np.float64)
    rated = values[~np.isnan(values)]
    if given is not None:
        low, high = parse_attribute_range(given)
        outside = rated[(rated < low) | (rated > high)]
        if outside.size:
            raise ConfigError(f"{source} rates {outside[0]:g}, outside --attribute_range {given}: give the corpus's "
                              f"scale (its ratings span {rated.min():g} to {rated.max():g})")
        return low, high
    if rated.size == 0:
        raise ConfigError(f"{source} has no rating in {', '.join(columns)} to read the scale from: fill them, "
                          "or give it with --attribute_range low,high")
    if not np.isfinite(rated).all():
        raise ConfigError(f"{source} rates {rated[~np.isfinite(rated)][0]:g} in {', '.join(columns)}: a rating must "
                          "be a finite number on the corpus's scale (leave a missing one empty)")
    low, high = float(math.floor(rated.min())), float(math.ceil(rated.max()))
    if low == high:
        raise ConfigError(f"every rating in {source}'s {', '.join(columns)} is {low:g}, so the scale cannot be read "
                          "from them: give it with --attribute_range low,high")
    return low, high


def numeric_columns(frame, columns, source: str = "the table"):
    """The columns as float64 [rows, columns], an empty cell NaN (the tables are read with empty
    cells kept as ""); a cell that is no number is refused, naming its column and row."""
    values = np.full((len(frame), len(columns)), np.nan)
    for k, column in enumerate(columns):
        cells = frame[column]
        for row, cell in enumerate(cells):
            if isinstance(cell, str) and not cell.strip():
                continue
            try:
                values[row, k] = float(cell)
            except (TypeError, ValueError):
                raise ConfigError(f"{source}: column {column} holds {cell!r} (row {row + 1} of the table read): a "
                                  "rating or vote fraction is a number, or an empty cell where none is known") from None
    return values


def table_attributes(frame, task: str, source: str = "the table") -> list[str]:
    """The attribute columns of the table that --task dimensional / both trains on (in the attribute
    head's order, models.settings.ATTRIBUTES); none is refused, naming the table's columns."""
    present = [name for name in ATTRIBUTES if name in frame.columns]
    if not present:
        raise ConfigError(f"{source}: --task {task} trains on the attribute columns {', '.join(ATTRIBUTES)}, and the "
                          f"table has none (its columns: {', '.join(map(str, frame.columns))}); re-make it with its "
                          "importer (data_prep/iemocap_prep.py, data_prep/import_msppodcast.py), add them, or use "
                          "--task categorical")
    return present


def vote_columns(frame, classes, source: str = "the table") -> list[str]:
    """votes_<class> of each of the model's classes (data_prep/import_msppodcast.py writes them from
    labels_detailed.csv), for --soft_targets; a missing one is refused, naming those expected."""
    expected = [f"votes_{name}" for name in classes]
    missing = [column for column in expected if column not in frame.columns]
    if missing:
        raise ConfigError(f"{source}: --soft_targets trains on the annotators' vote fractions, one column per class "
                          f"({', '.join(expected)}), and the table lacks {', '.join(missing)}; import the corpus with "
                          "its per-annotator labels (MSP-Podcast: Labels/labels_detailed.csv), or drop --soft_targets")
    return expected
