"""Long recordings: a recording longer than `Windows.long_seconds` is scored in windows read
one batch at a time, each owning the part nearest its centre; the recording's result is the
duration-weighted summary, with the timeline beside it (as a table or a figure)."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dataio.audio import audio_info, prepare_samples, read_frames
from inference.prediction import Prediction


@dataclass(frozen=True)
class Span:
    """A window of a long recording, in samples at 16 kHz; `own_*` is the part of the recording
    it speaks for in the timeline (the owned parts of all windows cover the recording once)."""
    start: int
    end: int
    own_start: int
    own_end: int
    rate: int = 16000

    @property
    def start_s(self) -> float:
        return self.start / self.rate

    @property
    def end_s(self) -> float:
        return self.end / self.rate


@dataclass
class WindowPrediction:
    span: Span
    prediction: Prediction


@dataclass
class Windows:
    """How long recordings are cut: recordings over `long_seconds` are scored in windows of
    `seconds`, one every `hop_seconds` (half overlapping by default), the last one ending with
    the recording; `batch` windows per pass. Each second of the recording is owned by the
    window whose centre is nearest, so the timeline covers it exactly once, and the summary
    weighs each window by the length it owns."""
    seconds: float = 6.0
    hop_seconds: float = 3.0
    long_seconds: float = 30.0
    batch: int = 8

    def spans(self, samples: int, rate: int) -> list[Span]:
        size, hop = round(self.seconds * rate), round(self.hop_seconds * rate)
        if samples <= size:
            return [Span(0, samples, 0, samples, rate)]
        starts = list(range(0, samples - size + 1, hop))
        if starts[-1] + size < samples:
            starts.append(samples - size)
        centres = [start + size / 2 for start in starts]
        bounds = [0] + [round((a + b) / 2) for a, b in zip(centres, centres[1:])] + [samples]
        return [Span(start, start + size, bounds[k], bounds[k + 1], rate) for k, start in enumerate(starts)]


class WindowSource:
    """Windows of a recording read from its file one at a time (a file's source frames around
    the window, downmixed and resampled), so memory does not grow with its length."""

    def __init__(self, path, sample_rate, rate: int):
        self.path, self.rate, self.array = str(path), rate, None
        self.info = info = audio_info(self.path)
        self.source_rate = info.samplerate
        self.samples = int(np.ceil(info.frames * rate / info.samplerate))

    @classmethod
    def of_array(cls, samples: np.ndarray) -> "WindowSource":
        source = cls.__new__(cls)
        source.array, source.samples = samples, len(samples)
        return source

    def read(self, span: Span) -> np.ndarray:
        if self.array is not None:
            return self.array[span.start:span.end]
        first = int(np.floor(span.start * self.source_rate / self.rate))
        last = int(np.ceil(span.end * self.source_rate / self.rate))
        frames, _ = read_frames(self.path, first, last, self.info)
        samples = prepare_samples(frames, self.source_rate, self.rate, self.path)
        wanted = span.end - span.start
        return np.pad(samples[:wanted], (0, max(0, wanted - len(samples))))


def owned_mean(timeline: list[WindowPrediction], values: np.ndarray) -> np.ndarray:
    """The windows' values [W, K] weighed by the length of the recording each owns -> [K]."""
    weights = np.array([w.span.own_end - w.span.own_start for w in timeline], dtype=float)
    return weights @ values / weights.sum()


def summarise(name: str, timeline: list[WindowPrediction], classes: list[str]) -> Prediction:
    """The whole recording: the windows' probabilities, and attributes where the model predicts
    them, weighed by the length each owns. A model without classes (task dimensional, whose
    windows carry no label) gets none."""
    first = timeline[0].prediction
    label, probabilities = None, {}
    if first.label is not None:
        mean = owned_mean(timeline, np.array([[w.prediction.probabilities[c] for c in classes] for w in timeline]))
        label, probabilities = classes[int(mean.argmax())], {c: float(v) for c, v in zip(classes, mean)}
    attributes = None
    if first.attributes is not None:
        names = list(first.attributes)
        mean = owned_mean(timeline, np.array([[w.prediction.attributes[a] for a in names] for w in timeline]))
        attributes = {a: float(v) for a, v in zip(names, mean)}
    return Prediction(source=name, label=label, probabilities=probabilities, attributes=attributes,
                      transcript_source=first.transcript_source, windows=timeline)


def timeline_table(prediction: Prediction) -> pd.DataFrame:
    """One row per window: its extent, the part it owns, its label and probabilities (a model
    that predicts classes), its attributes (one with an attribute head), its transcript."""
    rows = [{"window": k, "start_s": w.span.start_s, "end_s": w.span.end_s,
             "own_start_s": w.span.own_start / w.span.rate, "own_end_s": w.span.own_end / w.span.rate,
             **({} if w.prediction.label is None else {"predicted_label": w.prediction.label}),
             **{f"prob_{c}": v for c, v in w.prediction.probabilities.items()},
             **(w.prediction.attributes or {}),
             "transcript": w.prediction.transcript, "transcript_source": w.prediction.transcript_source}
            for k, w in enumerate(prediction.windows or [])]
    return pd.DataFrame(rows)


def plot_timeline(prediction: Prediction, path, attribute_range=None) -> None:
    """The class probabilities over time, and below them the attributes where the model predicts
    them (on the corpus's scale `attribute_range` [low, high] when given); each window drawn
    over the part it owns."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from utils.files import save_figure
    table = timeline_table(prediction)
    panels = [("probability", list(prediction.probabilities), (0, 1))] if prediction.label is not None else []
    if prediction.attributes is not None:
        panels.append(("attribute", list(prediction.attributes), attribute_range))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), layout="constrained", sharex=True,
                             squeeze=False)
    x = np.ravel(np.column_stack([table["own_start_s"], table["own_end_s"]]))
    for ax, (what, names, limits) in zip(axes[:, 0], panels):
        columns = [f"prob_{name}" for name in names] if what == "probability" else names
        for k, (name, column) in enumerate(zip(names, columns)):
            ax.plot(x, np.repeat(table[column].to_numpy(), 2), label=name, color=f"C{k}")
        ax.set_ylabel(what if limits is None or what == "probability" else f"{what} ({limits[0]:g}-{limits[1]:g})")
        if limits is not None:
            ax.set_ylim(*limits)
        ax.legend(loc="upper right", ncol=len(names))
    axes[-1, 0].set_xlabel("time (s)")
    overall = prediction.label if prediction.label is not None else \
        ", ".join(f"{a} {v:.2f}" for a, v in prediction.attributes.items())
    axes[0, 0].set_title(f"{Path(prediction.source).name}: {overall} overall ({len(table)} windows)")
    save_figure(fig, path)
