"""The CTC side of the transcript: the 32-symbol character vocabulary (through
transformers' Wav2Vec2CTCTokenizer) and the target ids / greedy decoding built on it."""
import functools
import re
from pathlib import Path

from transformers import Wav2Vec2CTCTokenizer

VOCAB_FILE = Path(__file__).resolve().parents[1] / "data_prep" / "wav2vec2_char_vocab.json"


@functools.lru_cache(maxsize=1)
def ctc_tokenizer() -> Wav2Vec2CTCTokenizer:
    return Wav2Vec2CTCTokenizer(str(VOCAB_FILE), word_delimiter_token="|", do_lower_case=False)


def clean_transcript(text: str) -> str:
    """Upper-case, drop characters outside the vocabulary, collapse spaces."""
    vocab = ctc_tokenizer().get_vocab()
    kept = "".join(ch if (ch in vocab and len(ch) == 1 and ch != "|") else (" " if ch.isspace() else "")
                   for ch in str(text).upper())
    return re.sub(r" +", " ", kept).strip()


def ctc_target_ids(text: str) -> list[int]:
    """Target ids for the CTC loss; spaces become the word delimiter `|`."""
    return ctc_tokenizer()(clean_transcript(text)).input_ids


def greedy_decode(frame_ids) -> str:
    """Best-path decoding of per-frame argmax ids: merge repeats, drop blanks, `|` -> space.
    <s>, </s> and <unk> are never CTC targets, so a frame predicting one reads as a blank."""
    tokenizer = ctc_tokenizer()
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    ids = [tokenizer.pad_token_id if i in specials else int(i) for i in frame_ids]
    return tokenizer.decode(ids)
