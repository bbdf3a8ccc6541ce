"""The text the networks read and write: the longest transcript a text encoder takes, the
embedding mmer reads (the encoder's last hidden state over the transcript's tokens), and the
CTC head's greedy transcript in the sentence case of the transcripts it stands in for. Shared by
training's feature extraction (dataio/), prediction (inference/) and the pipeline a shared model
folder runs (hf_pipeline.py), so all three read and write text the same way."""
import re

import torch


def max_tokens(tokenizer, encoder) -> int:
    """Longest input the text encoder accepts. RoBERTa numbers positions from padding_idx + 1,
    so roberta-base's 514 positions hold 512 tokens."""
    positions = encoder.config.max_position_embeddings
    if "roberta" in encoder.config.model_type:
        positions -= encoder.config.pad_token_id + 1
    return min(positions, tokenizer.model_max_length)


@torch.inference_mode()
def embed_text(text: str, tokenizer, encoder) -> torch.Tensor:
    """One transcript -> the encoder's last hidden state [T, H] (float32, on the encoder's
    device): its tokens with the tokenizer's special tokens, cut to max_tokens."""
    ids = tokenizer(text, truncation=True, max_length=max_tokens(tokenizer, encoder), return_tensors="pt")
    hidden = encoder(input_ids=ids["input_ids"].to(encoder.device),
                     attention_mask=ids["attention_mask"].to(encoder.device)).last_hidden_state
    return hidden[0].float()


def sentence_case(text: str) -> str:
    """"WELL I FINALLY DID IT" -> "Well I finally did it": the greedy CTC transcript in the case
    of the sentence-case transcripts the text features were made from (a capital first letter
    and a capital pronoun I)."""
    lowered = re.sub(r"\bi\b", "I", text.lower())
    return lowered[:1].upper() + lowered[1:]


def greedy_decode(frame_ids, tokenizer) -> str:
    """Best-path decoding of per-frame argmax ids with the CTC vocabulary's Wav2Vec2CTCTokenizer:
    merge repeats, drop blanks, `|` -> space. <s>, </s> and <unk> are never CTC targets, so a
    frame predicting one reads as a blank."""
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    ids = [tokenizer.pad_token_id if i in specials else int(i) for i in frame_ids]
    return tokenizer.decode(ids)


def decode_ctc(ctc_logits: torch.Tensor, frame_lengths: torch.Tensor, tokenizer) -> list[str]:
    """Greedy CTC of a batch: argmax per valid frame, then greedy_decode."""
    ids = ctc_logits.argmax(dim=-1).cpu()
    return [greedy_decode(row[:n].tolist(), tokenizer) for row, n in zip(ids, frame_lengths.tolist())]
