"""Text features: RoBERTa's last hidden state over each csv row's `Sentences` (or another
transcript column: --text_column transcript for a speech recogniser's), written as
`<out_dir>/<FileName>.npy` (float32, [1, T, H], T counting `<s>` and `</s>`). Batched on
CPU or GPU, resumable (files already written are skipped), each file written atomically."""
import hashlib
import json
import logging
from pathlib import Path


import numpy as np
import pandas as pd
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer

from utils.cli import some
from utils import distributed
from utils.device import resolve_device
from utils.files import atomic_path, atomic_write_text
from utils.hub import check_model_name
from models.errors import MMERError
from models.text import max_tokens

log = logging.getLogger(__name__)
DEFAULT_TEXT_COLUMN = "Sentences"
LOAD_HINT = "pass a local folder written by save_pretrained, or a hub name (e.g. roberta-base) with network access"


class TextFeatureError(MMERError, ValueError):
    """Bad input to the extraction; the message names the file and the fix."""


def load_text_encoder(name_or_path, device) -> tuple:
    """Tokenizer and model (eval mode, on `device`) from a save_pretrained folder or a hub name."""
    try:  # before the slow load, so a bad --device fails at once
        device = resolve_device(str(device))
    except ValueError as err:
        raise TextFeatureError(str(err)) from err
    source = str(name_or_path)
    try:
        check_model_name(source, "text encoder")
    except OSError as err:
        raise TextFeatureError(str(err)) from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise TextFeatureError(f"cannot load text encoder {source!r} ({err}); {LOAD_HINT}") from err
    if not hasattr(model.config, "max_position_embeddings"):
        kind = model.config.model_type
        raise TextFeatureError(f"{source}: a {kind} model is not a text encoder; pass a RoBERTa folder or hub name")
    return tokenizer, model.to(device).eval()


def tokenize(texts, tokenizer, model, names=None) -> list[list[int]]:
    """Token ids with the tokenizer's special tokens; over-long texts are truncated with one
    warning and empty ones warned about (they still give `<s></s>`)."""
    names = list(names) if names is not None else [f"text #{i}" for i in range(len(texts))]
    empty = [name for name, text in zip(names, texts) if not text.strip()]
    if empty:
        log.warning("empty transcript for %d utterance(s), embedding <s></s> only: %s", len(empty), some(empty))
    limit = max_tokens(tokenizer, model)
    ids = tokenizer(list(texts), verbose=False)["input_ids"]
    too_long = [i for i, row in enumerate(ids) if len(row) > limit]
    if too_long:
        log.warning(
            "%d transcript(s) longer than the model's %d tokens, truncated: %s",
            len(too_long), limit, some([names[i] for i in too_long]),
        )
        cut = tokenizer([texts[i] for i in too_long], truncation=True, max_length=limit)["input_ids"]
        for i, row in zip(too_long, cut):
            ids[i] = row
    return ids


def embed_batches(token_ids, tokenizer, model, batch_size: int, progress: bool = False):
    """Yield (index, [T, H] float32 array) per text. Batches go longest first, so each pads
    little and an out-of-memory shows at once; every row is cut back to its own length and
    padding is masked, so batching changes nothing."""
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    starts = range(0, len(order), batch_size)
    device = model.device
    with torch.inference_mode():
        for start in tqdm(starts, desc="RoBERTa", unit="batch", disable=not progress):
            chunk = order[start:start + batch_size]
            batch = tokenizer.pad({"input_ids": [token_ids[i] for i in chunk]}, return_tensors="pt")
            hidden = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).last_hidden_state.float().cpu().numpy()  # [B, T_max, H]
            for row, i in enumerate(chunk):
                yield i, hidden[row, : len(token_ids[i])]


def embed_texts(texts, tokenizer, model, device=None, batch_size: int = 32, names=None) -> list[np.ndarray]:
    """Last hidden states, one [T, H] float32 array per text, in input order. `device`
    defaults to the model's own."""
    if device is not None:
        model.to(resolve_device(str(device)))
    token_ids = tokenize(list(texts), tokenizer, model, names)
    embeddings = [None] * len(token_ids)
    for i, array in embed_batches(token_ids, tokenizer, model, batch_size):
        embeddings[i] = array
    return embeddings


def read_transcripts(csv, text_column: str = DEFAULT_TEXT_COLUMN) -> pd.DataFrame:
    """The csv's FileName and transcript columns, as strings (an empty cell is "")."""
    csv = Path(csv)
    if not csv.is_file():
        raise TextFeatureError(f"{csv}: csv not found; run the IEMOCAP preparation first or fix --csv")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    needed = ["FileName", text_column]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        fix = (" (transcribe the audio first: data_prep/transcribe.py)" if text_column == "transcript"
               else " (as written by the IEMOCAP preparation; --text_column names another)")
        raise TextFeatureError(f"{csv}: missing column(s) {missing}; it has {list(table.columns)}. "
                               f"The csv needs {needed}{fix}")
    duplicated = table["FileName"][table["FileName"].duplicated()].unique().tolist()
    if duplicated:
        raise TextFeatureError(f"{csv}: FileName repeated, each needs its own .npy: {some(duplicated)}")
    return table[needed]


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically. Through a handle, since np.save appends `.npy` to a bare temporary name."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def extract(csv, out_dir, roberta="roberta-base", batch_size: int = 32, device="auto", overwrite: bool = False,
            text_column: str = DEFAULT_TEXT_COLUMN):
    """Write `<out_dir>/<FileName>.npy` for every csv row not done yet (all with `overwrite`),
    embedding its `text_column`. Returns the counts {"written": n, "skipped": m}. Under torchrun
    (`torchrun --nproc_per_node N data_prep/extract_roberta.py ...`) process r embeds rows r, r+N,
    ... of those left to do: padding is masked, so the files are the ones one process writes."""
    table = read_transcripts(csv, text_column)
    out_dir = Path(out_dir)
    try:
        device = distributed.init_distributed(str(device))
    except ValueError as err:
        raise TextFeatureError(str(err)) from err
    if distributed.is_main():
        check_encoder_stamp(out_dir, roberta, overwrite, text_column)
    targets = [out_dir / f"{name}.npy" for name in table["FileName"]]
    todo = [i for i, path in enumerate(targets) if overwrite or not path.exists()]
    distributed.barrier()   # every process has its list before any writes
    skipped = len(targets) - len(todo)
    todo = todo[distributed.rank()::distributed.world_size()]
    if skipped:
        log.info("%d of %d feature files already in %s, skipped (--overwrite redoes them)",
                 skipped, len(targets), out_dir)
    if not todo:
        return {"written": sum(distributed.gather_objects(0)), "skipped": skipped}
    tokenizer, model = load_text_encoder(roberta, device)
    names = [table["FileName"].iloc[i] for i in todo]
    token_ids = tokenize([table[text_column].iloc[i] for i in todo], tokenizer, model, names)
    with logging_redirect_tqdm():
        # Files are written batch by batch, so a killed run keeps what it finished.
        for j, array in embed_batches(token_ids, tokenizer, model, batch_size, progress=True):
            save_npy(targets[todo[j]], array[None])  # [1, T, H], the upstream layout
    log.info("wrote %d feature files to %s", len(todo), out_dir)
    return {"written": sum(distributed.gather_objects(len(todo))), "skipped": skipped}


def encoder_stamp(roberta) -> dict:
    """What identifies the text encoder: its name (a local folder as an absolute path, so the
    record holds from any working directory) and its config (sizes, vocabulary)."""
    config = AutoConfig.from_pretrained(str(roberta)).to_json_string(use_diff=False)
    local = Path(str(roberta)).expanduser()
    name = str(local.resolve()) if local.exists() else str(roberta)
    return {"roberta": name, "config_sha256": hashlib.sha256(config.encode()).hexdigest()}


def text_encoder_width(name_or_path) -> int | None:
    """The hidden size of a text encoder whose config is here (a local folder or the Hugging
    Face cache); None when it cannot be read without the network."""
    try:
        return int(AutoConfig.from_pretrained(str(name_or_path), local_files_only=True).hidden_size)
    except (OSError, ValueError, AttributeError):
        return None


def recorded_encoder(features_dir) -> dict | None:
    """The encoder.json of a features folder (None for features without one, e.g. upstream's)."""
    path = Path(features_dir) / "encoder.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TextFeatureError(f"{path}: not the encoder.json extract_roberta.py writes ({err}); re-extract "
                               "the features or delete the file") from err


def features_text_encoder(features_dir, roberta: str | None = None, default: str = "roberta-base") -> str:
    """The text encoder that made the features in features_dir, from their encoder.json."""
    return agreed_text_encoder(recorded_encoder(features_dir), roberta, f"{Path(features_dir) / 'encoder.json'}",
                               default)


def agreed_text_encoder(stamp: dict | None, roberta: str | None, where: str, default: str = "roberta-base") -> str:
    """The text encoder a record (`stamp`, as encoder_stamp writes it) names; a given `roberta`
    must be that one (the same name or folder, or a config with the same hash). Without a
    record: `roberta`, else `default`."""
    if stamp is None:
        return roberta or default
    if roberta is None or _same_encoder(roberta, stamp):
        return stamp["roberta"]
    raise TextFeatureError(f"the text features were made by {stamp['roberta']} ({where}), not by --roberta "
                           f"{roberta}; drop --roberta, or extract features with it and train on those")


def _same_encoder(roberta: str, stamp: dict) -> bool:
    local = Path(roberta).expanduser()
    if (str(local.resolve()) if local.exists() else roberta) == stamp["roberta"]:
        return True
    if "config_sha256" not in stamp:
        return False
    try:
        return encoder_stamp(roberta)["config_sha256"] == stamp["config_sha256"]
    except (OSError, ValueError):
        return False


def check_encoder_stamp(out_dir: Path, roberta, overwrite: bool, text_column: str = DEFAULT_TEXT_COLUMN) -> None:
    """Features already in out_dir must come from the same encoder and transcript column, or a
    resumed extraction would mix two; `encoder.json` records which ones wrote them."""
    stamp_path = out_dir / "encoder.json"
    try:
        stamp = {**encoder_stamp(roberta), "text_column": text_column}
    except OSError as err:
        raise TextFeatureError(f"{roberta}: cannot read the model's config ({err}); {LOAD_HINT}") from err
    if stamp_path.is_file() and not overwrite:
        old = json.loads(stamp_path.read_text())
        if old["config_sha256"] != stamp["config_sha256"]:
            raise TextFeatureError(f"{out_dir}: holds features of another text encoder ({old['roberta']}); "
                                   "pass --overwrite to redo them all, or another --out_dir")
        if old.get("text_column", DEFAULT_TEXT_COLUMN) != text_column:
            raise TextFeatureError(f"{out_dir}: holds features of the {old.get('text_column', DEFAULT_TEXT_COLUMN)} "
                                   f"column, not of {text_column}; pass --overwrite to redo them all, or another "
                                   "--out_dir")
        return
    atomic_write_text(stamp_path, json.dumps(stamp, indent=1) + "\n")
