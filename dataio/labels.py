"""Label sets: which classes a model predicts, in which order, and which of a corpus's labels
become which class (merges; labels mapped to nothing are left out).

IEMOCAP's 4-class set is the default wherever a table's labels are IEMOCAP's: its class
indices are fixed, baked into the published checkpoints (hap/exc=0, ang=1, neu=2, sad=3).
Any other corpus's set comes from its data: a label map (`--label_map`, or the `label_map.json`
that data_prep/import_emobox.py writes beside the table), else its labels in sorted order.
The set is saved with every model, so metrics, predictions and reports name the corpus's
own classes, for any number of them."""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from models.errors import MMERError

CLASS_NAMES = ("hap", "ang", "neu", "sad")  # IEMOCAP: index order of the logits
LABEL_TO_INDEX = {"hap": 0, "exc": 0, "ang": 1, "neu": 2, "sad": 3}
KEPT_LABELS = frozenset(LABEL_TO_INDEX)  # release labels that enter the 4-class set
ALL_RELEASE_LABELS = ("neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx")

# What the real release yields after filtering (SPEC section 2); data_prep warns on any difference.
REFERENCE_LABEL_COUNTS = {"neu": 1708, "hap": 595, "exc": 1041, "ang": 1103, "sad": 1084}
REFERENCE_SESSION_COUNTS = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}
REFERENCE_TOTAL = 5531

# <dialog>_<speaker gender><index>, the dialog starting Ses0<session>: Ses01F_impro01_F000
_UTTERANCE_ID = re.compile(r"^Ses0(?P<session>[1-5])[FM]_\S+_(?P<gender>[FM])\d+$")
LABEL_MAP_FILE = "label_map.json"  # beside a corpus table: {label: class name}, as EmoBox's


class LabelError(MMERError, ValueError):
    """A label set that cannot be used; the message names the labels and the fix."""


def utterance_fields(utterance: str) -> dict | None:
    """session, speaker (`Ses01_F`) and gender of an IEMOCAP utterance id; None if it is not one."""
    match = _UTTERANCE_ID.match(utterance)
    if match is None:
        return None
    session, gender = int(match["session"]), match["gender"]
    return {"session": session, "speaker": f"Ses{session:02d}_{gender}", "gender": gender}


@dataclass(frozen=True)
class LabelSet:
    """Classes in logit order, and the corpus label -> class name map (a label mapped to None
    is left out of training and evaluation)."""
    classes: tuple
    mapping: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted({str(c) for c in self.mapping.values() if c is not None and c not in self.classes})
        if unknown or len(set(self.classes)) != len(self.classes) or not self.classes:
            raise LabelError(f"a label map names classes {unknown} outside its class list {list(self.classes)}, "
                             "or the list repeats a class")

    @classmethod
    def iemocap(cls) -> "LabelSet":
        return cls(CLASS_NAMES, {"hap": "hap", "exc": "hap", "ang": "ang", "neu": "neu", "sad": "sad"})

    @classmethod
    def from_mapping(cls, mapping: dict, classes=None) -> "LabelSet":
        """Classes in the order they first appear among the map's values (unless given)."""
        named = [c for c in mapping.values() if c is not None]
        return cls(tuple(classes or dict.fromkeys(named)), dict(mapping))

    @classmethod
    def from_dict(cls, saved: dict | None) -> "LabelSet":
        """As saved in a checkpoint or config.json; IEMOCAP's for those that predate label sets."""
        if not saved:
            return cls.iemocap()
        return cls(tuple(saved["classes"]), dict(saved.get("mapping") or {}))

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "mapping": dict(self.mapping)}

    @property
    def is_iemocap(self) -> bool:
        return self == LabelSet.iemocap()

    def class_of(self, label: str) -> str | None:
        """The class a corpus label becomes (None: left out); KeyError for a label it does not know."""
        if label in self.mapping:
            return self.mapping[label]
        if label in self.classes:
            return label
        raise KeyError(label)

    def index(self, label: str) -> int | None:
        name = self.class_of(label)
        return None if name is None else self.classes.index(name)

    def unknown(self, labels) -> list[str]:
        """The labels this set has no class (nor an explicit 'leave out') for."""
        return sorted({str(label) for label in labels if label not in self.mapping and label not in self.classes})

    def mapped_onto(self, mapping: dict) -> "LabelSet":
        """This set's classes with another corpus's labels mapped onto them (cross-corpus
        evaluation); a class the map names that this set lacks is refused by name."""
        outside = sorted({str(c) for c in mapping.values() if c is not None and c not in self.classes})
        if outside:
            raise LabelError(f"the label map sends labels to {', '.join(outside)}, which the model does not predict "
                             f"(its classes: {', '.join(self.classes)}); map them onto these or to null")
        return LabelSet(self.classes, dict(mapping))


def read_label_map(spec: str) -> dict:
    """--label_map: a JSON file {label: class or null}, or inline `exc=hap,fru=,neu=neu` (an
    empty class leaves the label out)."""
    path = Path(spec).expanduser()
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise LabelError(f"--label_map {spec}: no such file; give a JSON file {{label: class}} or label=class,...")
        try:
            mapping = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise LabelError(f"{path}: not valid JSON ({err}); a label map is {{\"label\": \"class\" or null}}") from err
        if not isinstance(mapping, dict):
            raise LabelError(f"{path}: a label map is a JSON object {{\"label\": \"class\" or null}}")
        return {str(k): (None if v in (None, "") else str(v)) for k, v in mapping.items()}
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise LabelError(f"--label_map {spec!r}: write label=class pairs separated by commas (class empty to leave "
                         "the label out), or give a JSON file")
    return {label.strip(): (name.strip() or None) for label, name in pairs}


def corpus_label_set(labels, label_map: dict | None = None, table_dir=None, iemocap: bool = False) -> LabelSet:
    """The label set of a corpus whose labels are `labels`: from `label_map` when given, else
    IEMOCAP's for IEMOCAP's own table (its utterance ids), else the table folder's
    label_map.json (EmoBox), else the labels themselves in sorted order. A label the set has
    no class for is the caller's to report (LabelSet.unknown)."""
    present = sorted({str(label) for label in labels})
    if label_map is None and table_dir is not None and (Path(table_dir) / LABEL_MAP_FILE).is_file():
        label_map = read_label_map(str(Path(table_dir) / LABEL_MAP_FILE))
    if label_map is not None:
        return LabelSet.from_mapping(label_map)
    if iemocap:  # IEMOCAP's own table only: another corpus with a subset of these labels gets its own classes
        return LabelSet.iemocap()
    return LabelSet(tuple(present), {})
