"""The data edges that change numbers silently or crash late: pre-made views cut before they are
normalised (upstream's order), a table's own dev rows trained on under --select_on test, IEMOCAP's
4-class set for IEMOCAP's table only, and empty or broken tables named before any work."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from transformers import Wav2Vec2FeatureExtractor

import run
from dataio import corpus
from dataio.dataset import DataError
from dataio.labels import LabelSet, corpus_label_set
from models.encoders import AudioInputSpec
from training.views import Views

RATE = 16000
CUT = 210000  # the 2023 configuration's --max_audio_samples, about 13 s


def test_a_premade_view_longer_than_13_s_is_cut_then_normalised_as_upstream(tmp_path):
    rng = np.random.default_rng(0)
    quiet, loud = 0.01 * rng.standard_normal(CUT), 0.5 + 0.8 * rng.standard_normal(3 * RATE)  # 15 s in all
    path = tmp_path / "tts_Ses01F_impro01_F000.wav"
    sf.write(path, np.concatenate([quiet, loud]).astype(np.float32), RATE, subtype="FLOAT")
    views = Views(SimpleNamespace(view_text=None), None, 0, AudioInputSpec(), CUT, {0: [path]})
    view = views.view(0, {"name": "Ses01F_impro01_F000", "wave": None}, epoch=0)
    samples, _ = sf.read(path, dtype="float32")
    # upstream: processor(audio[:210000]) with Wav2Vec2FeatureExtractor's do_normalize
    expected = Wav2Vec2FeatureExtractor(do_normalize=True)(samples[:CUT], sampling_rate=RATE).input_values[0]
    assert len(view["wave"]) == CUT
    np.testing.assert_allclose(view["wave"], expected, atol=1e-5)


def split_table() -> pd.DataFrame:
    rows = [("a", "train"), ("b", "dev"), ("c", "test"), ("d", "train"), ("e", "dev"), ("f", "test")]
    table = pd.DataFrame({"FileName": [r[0] for r in rows], "split": [r[1] for r in rows],
                          "Label": ["ang", "sad"] * 3, "speaker": list("xyxyxy")})
    table["label_index"] = [0, 1] * 3
    return table


def test_select_on_test_trains_on_the_tables_own_dev_rows():
    table = split_table()
    scheme = corpus.fold_scheme(table)
    no_selection = corpus.make_fold(table, scheme, "1", dev_fraction=0.0, seed=0)
    assert list(no_selection.train) == [0, 1, 3, 4] and len(no_selection.dev) == 0
    assert list(no_selection.test) == [2, 5]
    on_dev = corpus.make_fold(table, scheme, "1", dev_fraction=0.1, seed=0)
    assert list(on_dev.train) == [0, 3] and list(on_dev.dev) == [1, 4]


def test_only_iemocaps_own_table_gets_iemocaps_four_classes(tmp_path):
    assert corpus_label_set(["ang", "neu", "sad"]) == LabelSet(("ang", "neu", "sad"), {})
    assert corpus_label_set(["ang", "neu", "sad"], iemocap=True) == LabelSet.iemocap()
    csv = tmp_path / "other.csv"
    pd.DataFrame({"FileName": ["u1", "u2", "u3"], "Label": ["sad", "hap", "neu"], "fold": ["1", "2", "3"]}).to_csv(
        csv, index=False)
    table, label_set = corpus.read_table(csv)
    assert label_set.classes == ("hap", "neu", "sad")
    assert list(table["label_index"]) == [2, 0, 1]


BAD_TABLES = {
    "empty": ("", "the file is empty"),
    "header_only": ("FileName,Label,session\n", "a header but no rows"),
    "empty_cells": ("FileName,Label,session\nSes01F_impro01_F000,neu,1\n,sad,1\nSes01F_impro01_F002,,\n",
                    "empty FileName on line 3; empty Label on line 4; empty session on line 4"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TABLES))
def test_a_broken_table_is_named_by_line_and_column(tmp_path, kind):
    text, says = BAD_TABLES[kind]
    csv = tmp_path / "table.csv"
    csv.write_text(text)
    with pytest.raises(DataError) as err:
        corpus.read_table(csv)
    assert str(csv) in str(err.value) and says in str(err.value)


def test_run_refuses_a_header_only_table_and_writes_nothing(demo, tmp_path):
    csv = tmp_path / "table.csv"
    csv.write_text("FileName,Label,session\n")
    with pytest.raises(DataError, match="a header but no rows"):
        run.main(demo.flags(run="unimodal_baseline", csv_path=csv, save_path=tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_an_empty_fold_by_cell_is_refused(tmp_path):
    table = split_table().drop(columns=["split"]).assign(group=["1", "2", "", "1", "2", "1"])
    with pytest.raises(DataError, match="--fold_by group"):
        corpus.fold_scheme(table, fold_by="group")
