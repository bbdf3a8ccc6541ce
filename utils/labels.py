"""The 4-class IEMOCAP label set and what an utterance id says. Class indices are fixed:
they are baked into the published checkpoints (hap/exc=0, ang=1, neu=2, sad=3)."""
import re

CLASS_NAMES = ("hap", "ang", "neu", "sad")  # index order of the logits
LABEL_TO_INDEX = {"hap": 0, "exc": 0, "ang": 1, "neu": 2, "sad": 3}
KEPT_LABELS = frozenset(LABEL_TO_INDEX)  # release labels that enter the 4-class set
ALL_RELEASE_LABELS = ("neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx")

# What the real release yields after filtering (SPEC section 2); data_prep warns on any difference.
REFERENCE_LABEL_COUNTS = {"neu": 1708, "hap": 595, "exc": 1041, "ang": 1103, "sad": 1084}
REFERENCE_SESSION_COUNTS = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}
REFERENCE_TOTAL = 5531

# <dialog>_<speaker gender><index>, the dialog starting Ses0<session>: Ses01F_impro01_F000
_UTTERANCE_ID = re.compile(r"^Ses0(?P<session>[1-5])[FM]_\S+_(?P<gender>[FM])\d+$")


def utterance_fields(utterance: str) -> dict | None:
    """session, speaker (`Ses01_F`) and gender of an utterance id; None if it is malformed."""
    match = _UTTERANCE_ID.match(utterance)
    if match is None:
        return None
    session, gender = int(match["session"]), match["gender"]
    return {"session": session, "speaker": f"Ses{session:02d}_{gender}", "gender": gender}
