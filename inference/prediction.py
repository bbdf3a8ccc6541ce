"""What a prediction returns: the label, the class probabilities, the attributes (a model with an
attribute head, run.py --task dimensional|both), the transcript it read and where that came from
(and a long recording's timeline); and the error of bad input to it."""
from dataclasses import dataclass, field

import pandas as pd

from models.errors import MMERError


class PredictError(MMERError, ValueError):
    """Bad input to the prediction; the message names the file and the fix."""


@dataclass
class Prediction:
    """One recording's result; probabilities in the run's class order. A model trained with
    --task dimensional predicts no class (its classifier was never trained): label None and no
    probabilities, only the attributes."""
    source: str                       # the file, or "array <i>"
    label: str | None
    probabilities: dict = field(default_factory=dict)   # class name -> probability ({} under task dimensional)
    transcript: str = ""              # the text mmer read ("" for audio-only models)
    transcript_source: str = "none"   # given | asr | ctc | none (audio-only model)
    ctc_transcript: str = ""          # what the model's CTC head heard (variants with a CTC head)
    windows: list | None = None       # a long recording's timeline (WindowPrediction), else None
    attributes: dict | None = None    # attribute name -> value in the corpus's units (None: no attribute head)

    def as_row(self) -> dict:
        classes = {} if self.label is None else {"predicted_label": self.label,
                                                 **{f"prob_{name}": p for name, p in self.probabilities.items()}}
        return {"file": self.source, **classes, **(self.attributes or {}),
                "transcript": self.transcript, "transcript_source": self.transcript_source,
                "ctc_transcript": self.ctc_transcript, "windows": len(self.windows) if self.windows else 0}


def predictions_table(predictions: list[Prediction]) -> pd.DataFrame:
    return pd.DataFrame([p.as_row() for p in predictions])
