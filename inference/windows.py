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


def summarise(name: str, timeline: list[WindowPrediction], classes: list[str]) -> Prediction:
    """The whole recording: the windows' probabilities weighed by the length each owns."""
    weights = np.array([w.span.own_end - w.span.own_start for w in timeline], dtype=float)
    probs = np.array([[w.prediction.probabilities[c] for c in classes] for w in timeline])
    mean = weights @ probs / weights.sum()
    return Prediction(source=name, label=classes[int(mean.argmax())],
                      probabilities={c: float(v) for c, v in zip(classes, mean)},
                      transcript_source=timeline[0].prediction.transcript_source, windows=timeline)


def timeline_table(prediction: Prediction) -> pd.DataFrame:
    """One row per window: its extent, the part it owns, its label and probabilities, its transcript."""
    rows = [{"window": k, "start_s": w.span.start_s, "end_s": w.span.end_s,
             "own_start_s": w.span.own_start / w.span.rate, "own_end_s": w.span.own_end / w.span.rate,
             "predicted_label": w.prediction.label,
             **{f"prob_{c}": v for c, v in w.prediction.probabilities.items()},
             "transcript": w.prediction.transcript, "transcript_source": w.prediction.transcript_source}
            for k, w in enumerate(prediction.windows or [])]
    return pd.DataFrame(rows)


def plot_timeline(prediction: Prediction, path) -> None:
    """The class probabilities over time (each window drawn over the part it owns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from utils.files import save_figure
    table = timeline_table(prediction)
    classes = list(prediction.probabilities)
    fig, ax = plt.subplots(figsize=(10, 3.6), layout="constrained")
    for k, name in enumerate(classes):
        x = np.ravel(np.column_stack([table["own_start_s"], table["own_end_s"]]))
        y = np.repeat(table[f"prob_{name}"].to_numpy(), 2)
        ax.plot(x, y, label=name, color=f"C{k}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(f"{Path(prediction.source).name}: {prediction.label} overall ("
                 f"{len(table)} windows)")
    ax.legend(loc="upper right", ncol=len(classes))
    save_figure(fig, path)
