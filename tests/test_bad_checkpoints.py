"""Files that are not checkpoints (cut short, text, random bytes, an HTML error page saved by a
failed download, empty) get one message naming the file, what it is and the fix, never torch's
advice to turn weights_only off; a pickle that would import code is still refused as unsafe."""
import io
import pathlib
import pickle
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import run
from models.checkpoint import CheckpointError, load_checkpoint

NOT_A_CHECKPOINT = "not a checkpoint (corrupt or incomplete download?)"
HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def truncated_safetensors(path):
    save_file({"weight": torch.zeros(64)}, str(path))
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) - 100])


def truncated_pt(path):
    torch.save({"state_dict": {"weight": torch.zeros(64)}}, path)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])


BAD = {
    "truncated.safetensors": truncated_safetensors,
    "truncated.pt": truncated_pt,
    "text.pt": lambda p: p.write_text("epoch 3, loss 0.41\nsee the run folder\n"),
    "random.pt": lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()),
    "page.pt": lambda p: p.write_bytes(HTML),
    "page.safetensors": lambda p: p.write_bytes(HTML),
    "empty.pt": lambda p: p.write_bytes(b""),
    "empty.safetensors": lambda p: p.write_bytes(b""),
}
WHAT = {"text.pt": "text ('epoch 3, loss 0.41')", "page.pt": "HTML page", "page.safetensors": "HTML page",
        "empty.pt": "empty", "empty.safetensors": "empty"}


@pytest.mark.parametrize("name", list(BAD))
def test_a_file_that_is_not_a_checkpoint_is_named_as_such_with_the_fix(tmp_path, name):
    path = tmp_path / name
    BAD[name](path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {NOT_A_CHECKPOINT}: ") and "download it again" in message, message
    assert WHAT.get(name, "") in message[len(f"{path}: {NOT_A_CHECKPOINT}: "):], message
    assert not re.search("weights.only|execute code", message, re.IGNORECASE), message


class _CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_whole_pickle_that_imports_code_is_refused_as_unsafe_naming_what_it_imports(tmp_path, how):
    marker, path = tmp_path / "pwned", tmp_path / "1_model.pt"
    payload = {"state_dict": {}, "payload": _CreatesAFile(str(marker))}
    buffer = io.BytesIO()
    pickle.dump(payload, buffer) if how == "pickle" else torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused") and "pathlib.Path" in message, message
    assert NOT_A_CHECKPOINT not in message and not re.search("weights.only", message, re.IGNORECASE), message
    assert not marker.exists()


def test_eval_only_on_a_folder_holding_an_html_page_stops_before_writing(tmp_path, capsys):
    folder, out = tmp_path / "checkpoints", tmp_path / "out"
    folder.mkdir()
    (folder / "1_model.pt").write_bytes(HTML)
    with pytest.raises(SystemExit) as stop:
        run.main(["--eval_only", "--checkpoint_dir", str(folder), "--save_path", str(out)])
    assert stop.value.code == 2
    said = capsys.readouterr().err
    assert f"{folder / '1_model.pt'}: {NOT_A_CHECKPOINT}" in said and "Traceback" not in said
    assert not out.exists()
