"""The 4-class IEMOCAP label set. Class indices are fixed: they are baked into the
published checkpoints (hap/exc=0, ang=1, neu=2, sad=3)."""

CLASS_NAMES = ("hap", "ang", "neu", "sad")  # index order of the logits
LABEL_TO_INDEX = {"hap": 0, "exc": 0, "ang": 1, "neu": 2, "sad": 3}
KEPT_LABELS = frozenset(LABEL_TO_INDEX)  # release labels that enter the 4-class set
ALL_RELEASE_LABELS = ("neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx")

# What the real release yields after filtering (SPEC section 2); data_prep warns on any difference.
REFERENCE_LABEL_COUNTS = {"neu": 1708, "hap": 595, "exc": 1041, "ang": 1103, "sad": 1084}
REFERENCE_SESSION_COUNTS = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}
REFERENCE_TOTAL = 5531
