"""The corpus table's vocabulary, with no pandas or torch (run.py checks its flags against it
before those load): which utterance types a table may name and how the CTC targets are read."""

# IEMOCAP's dialogues are improvised or scripted; the scripted ones repeat the same lines in every
# session, so a text branch can meet a test sentence in training. Other tables may give the column.
UTTERANCE_TYPES = ("all", "impro", "script")
# the CTC targets from a transcript: clean (tags removed, punctuation a word boundary) or upstream's
CTC_TEXT_FORMS = ("clean", "upstream")
