"""The CTC side of the transcript: the 32-symbol character vocabulary (through
transformers' Wav2Vec2CTCTokenizer) and the target ids / greedy decoding built on it."""
import functools
import re
from pathlib import Path

from transformers import Wav2Vec2CTCTokenizer

from models.text import greedy_decode as decode_with
from models.text import sentence_case  # noqa: F401  (re-exported: the case of the CTC transcripts)

VOCAB_FILE = Path(__file__).resolve().parent / "wav2vec2_char_vocab.json"


@functools.lru_cache(maxsize=1)
def ctc_tokenizer() -> Wav2Vec2CTCTokenizer:
    return Wav2Vec2CTCTokenizer(str(VOCAB_FILE), word_delimiter_token="|", do_lower_case=False)


# IEMOCAP's non-speech tags: [LAUGHTER], [BREATHING], [GARBAGE] in the transcripts, {LG}, {BR}, {NS}
# in upstream's `text` column. Nothing in the audio spells them, so they are no CTC target.
NON_SPEECH_TAG = re.compile(r"\[[^\]]*\]|\{[^}]*\}")


def clean_transcript(text: str) -> str:
    """The CTC target text: non-speech tags removed, upper-case, every character outside the
    vocabulary (punctuation) read as a word boundary, spaces collapsed. Upstream dropped such
    characters instead, which glues words ("HUSBAND.[LAUGHTER]" -> "HUSBANDLAUGHTER"); on text
    whose punctuation stands between spaces, as in upstream's csv, both give the same target."""
    vocab = ctc_tokenizer().get_vocab()
    spoken = NON_SPEECH_TAG.sub(" ", str(text)).upper()
    kept = "".join(ch if (ch in vocab and len(ch) == 1 and ch != "|") else " " for ch in spoken)
    return re.sub(r" +", " ", kept).strip()


def upstream_transcript(text: str) -> str:
    """Upstream's CTC target text (src/utils.py prepare_example): whitespace collapsed, every
    character outside the vocabulary deleted (case-sensitive: upstream's `text` column is upper
    case), so tags are spelled ("{LG}" -> "LG") and "HUSBAND.[LAUGHTER]" -> "HUSBANDLAUGHTER"."""
    vocab = "".join(t for t in ctc_tokenizer().get_vocab() if len(t) == 1)
    text = " ".join(str(text).split())
    kept = re.sub(f"[^\\s{re.escape(vocab)}]", "", text)
    return re.sub(" +", " ", kept).strip()


CTC_TEXT = {"clean": clean_transcript, "upstream": upstream_transcript}


def ctc_target_ids(text: str, mode: str = "clean") -> list[int]:
    """Target ids for the CTC loss; spaces become the word delimiter `|`. mode: "clean"
    (clean_transcript, the default) or "upstream" (upstream_transcript, upstream's targets)."""
    if mode not in CTC_TEXT:
        raise ValueError(f"ctc text {mode!r}: choose one of {', '.join(CTC_TEXT)}")
    return ctc_tokenizer()(CTC_TEXT[mode](text)).input_ids


def greedy_decode(frame_ids) -> str:
    """Best-path decoding of per-frame argmax ids with the 32-symbol vocabulary (models.text.greedy_decode)."""
    return decode_with(frame_ids, ctc_tokenizer())
