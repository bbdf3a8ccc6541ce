"""Any corpus: a six-class corpus in EmoBox's layout (speakers, no sessions, no transcripts,
22.05 kHz) through import -> transcribe (tiny Whisper) -> extract -> run.py for the three
variants; k-fold and fixed-split corpora; bad tables named before training; cross-corpus
evaluation through a label map; predict.py with a speech recogniser."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

import predict
import run
from dataio.corpus import fold_scheme, make_fold, read_table
from dataio.text_features import extract
from dataio.emobox import import_emobox
from synthetic.emobox import LABEL_MAP, make_emobox_corpus
from dataio.transcripts import transcribe_table
from dataio.labels import LabelSet, corpus_label_set, read_label_map
from dataio.dataset import DataError
from dataio.validate import InputProblems

CLASSES = list(dict.fromkeys(LABEL_MAP.values()))  # Anger, Disgust, Fear, Happiness, Neutral, Sadness


@pytest.fixture(scope="module")
def emobox(demo, tmp_path_factory):
    """The chain on a small six-class corpus: 4 speakers, 4 speaker-independent folds."""
    root = tmp_path_factory.mktemp("emobox")
    paths = make_emobox_corpus(root / "emobox", per_class=2, speakers=4, folds=4)
    csv = import_emobox(paths["emobox_dir"], paths["wav_root"], root / "prepared")
    transcribe_table(csv, asr=str(demo.whisper_model), device="cpu")
    extract(csv, root / "prepared" / "roberta", roberta=demo.roberta_model, device="cpu", text_column="transcript")
    return {"csv": csv, "audio": root / "prepared" / "audio", "roberta": root / "prepared" / "roberta",
            "root": root, "paths": paths}


def flags(demo, emobox, save, **overrides):
    values = {"csv_path": emobox["csv"], "data_path_audio": emobox["audio"], "data_path_roberta": emobox["roberta"],
              "wav2vec2": demo.wav2vec2_model, "epochs": 1, "batch_size": 4, "accum_grad": 1, "learning_rate": 5e-4,
              "device": "cpu", "precision": "fp32", "sessions": "1 2", "save_path": save}
    return demo.flags(**{"roberta": None, **values, **overrides})


@pytest.mark.parametrize("variant", ["mmer", "cai_sota", "unimodal_baseline"])
def test_an_emobox_corpus_trains_every_variant_with_its_own_six_classes(demo, emobox, tmp_path, variant):
    results = run.main(flags(demo, emobox, tmp_path, run=variant))
    run_dir = tmp_path / variant
    assert results["classes"] == CLASSES and set(results["folds"]) == {"1", "2"}
    assert results["folds_from"] == "the table's split_<k> columns"
    for fold in ("1", "2"):
        predictions = pd.read_csv(run_dir / f"{fold}_predictions.csv")
        assert list(predictions.columns[3:]) == [f"prob_{c}" for c in CLASSES]
        table = pd.read_csv(emobox["csv"], keep_default_na=False)
        test = table[table[f"split_{fold}"] == "test"]
        assert sorted(predictions["FileName"]) == sorted(test["FileName"])        # the fold's test split, all of it
        truth = dict(zip(test["FileName"], test["Label"].map(LABEL_MAP).fillna(test["Label"])))
        assert list(predictions["true_label"]) == [truth[name] for name in predictions["FileName"]]
        probs = predictions[[f"prob_{c}" for c in CLASSES]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert list(predictions["predicted_label"]) == [CLASSES[i] for i in probs.argmax(axis=1)]
        y_true, y_pred = predictions["true_label"], predictions["predicted_label"]
        metrics = results["folds"][fold]
        assert metrics["wa"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert metrics["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=CLASSES, average="macro",
                                                             zero_division=0))
        assert metrics["confusion"] == confusion_matrix(y_true, y_pred, labels=CLASSES).tolist()
        assert (run_dir / f"confusion_matrix_fold{fold}.png").stat().st_size > 1000
    assert "6 classes" in (run_dir / "results.md").read_text()
    if variant != "unimodal_baseline":
        assert results["transcripts"]["ctc_targets"] == "transcript"
        assert results["transcripts"]["asr"]["model"] == str(Path(demo.whisper_model).resolve())
    if variant == "mmer":
        assert results["transcripts"]["text_features"] == "transcript"
        config = json.loads((run_dir / "config.json").read_text())
        assert config["model"]["labels"]["classes"] == CLASSES and config["model"]["num_classes"] == 6


def test_the_folds_are_emoboxs_exactly(emobox):
    table, label_set = read_table(emobox["csv"])
    scheme = fold_scheme(table)
    assert scheme.kind == "split_k" and scheme.names == ("1", "2", "3", "4")
    for name in scheme.names:
        fold = make_fold(table, scheme, name, 0.1, seed=0)
        jsonl = emobox["paths"]["fold_files"][int(name)]
        test_keys = {json.loads(line)["key"] for line in jsonl["test"].read_text().splitlines()}
        assert set(table["key"].iloc[fold.test]) == test_keys
        train_speakers = set(table["speaker"].iloc[np.concatenate([fold.train, fold.dev])])
        assert not train_speakers & set(table["speaker"].iloc[fold.test])  # dev drawn from training speakers only


def test_k_speaker_independent_folds_and_a_speaker_independent_dev_split(demo, emobox, tmp_path):
    table, _ = read_table(emobox["csv"])
    scheme = fold_scheme(table, kfold=2)
    seen = []
    for name in scheme.names:
        fold = make_fold(table, scheme, name, 0.25, seed=3, dev_split="speaker")
        speakers = {part: set(table["speaker"].iloc[getattr(fold, part)]) for part in ("train", "dev", "test")}
        assert not speakers["train"] & speakers["test"] and not speakers["dev"] & (speakers["train"] | speakers["test"])
        seen += list(fold.test)
    assert sorted(seen) == list(range(len(table)))  # every utterance tested once
    results = run.main(flags(demo, emobox, tmp_path, run="unimodal_baseline", kfold=2, sessions=None,
                             dev_split="speaker"))
    assert set(results["folds"]) == {"1", "2"} and results["folds_from"] == "2 speaker-independent folds"


def test_a_fixed_split_corpus_trains_on_its_train_part_and_selects_on_its_dev(demo, tmp_path):
    paths = make_emobox_corpus(tmp_path / "msp", corpus="msp6", per_class=2, speakers=5, layout="split")
    csv = import_emobox(paths["emobox_dir"], paths["wav_root"], tmp_path / "prepared")
    table, _ = read_table(csv)
    fold = make_fold(table, fold_scheme(table), "1", 0.1, seed=0)
    assert list(table["split_1"].iloc[fold.dev].unique()) == ["dev"]
    results = run.main(demo.flags(run="unimodal_baseline", csv_path=csv, data_path_audio=tmp_path / "prepared" / "audio",
                                  roberta=None, sessions=None, epochs=1, save_path=tmp_path / "runs"))
    assert list(results["folds"]) == ["1"] and results["classes"] == CLASSES


def write_table(emobox, tmp_path, change) -> Path:
    table = pd.read_csv(emobox["csv"], keep_default_na=False, dtype=str)
    change(table)
    csv = tmp_path / "corpus.csv"
    table.to_csv(csv, index=False)
    shutil.copy(emobox["csv"].parent / "label_map.json", tmp_path / "label_map.json")
    return csv


def test_every_bad_table_is_named_before_training(demo, emobox, tmp_path):
    def damage(table):
        table.loc[0, "Label"] = "XYZ"                                            # unknown label
        table.loc[table["split_2"] == "test", "split_2"] = "train"               # fold 2: empty test set
        test_3 = table["split_3"] == "test"
        anger = table["Label"] == "ANG"
        table.loc[anger & ~test_3 & (table["split_3"] == "train"), "split_3"] = ""  # fold 3 trains on no Anger
        table.loc[1, "path"] = "gone.wav"                                         # missing audio
    csv = write_table(emobox, tmp_path, damage)
    with pytest.raises(InputProblems) as caught:
        run.main(flags(demo, emobox, tmp_path / "runs", csv_path=csv, run="unimodal_baseline", sessions="1 2 3"))
    message = str(caught.value)
    for expected in ("'XYZ'", "fold 2", "fold 3: Anger", "gone.wav"):
        assert expected in message
    assert not (tmp_path / "runs").exists()


def test_cross_corpus_evaluation_maps_the_corpus_labels_onto_the_models_classes(demo, emobox, tmp_path):
    iemocap_run = run.main(demo.flags(run="cai_sota", epochs=1, sessions="1", save_path=tmp_path / "iemocap"))
    assert iemocap_run["classes"] == ["hap", "ang", "neu", "sad"]
    mapping = "ANG=ang,HAP=hap,NEU=neu,SAD=sad,DIS=,FEA="
    results = run.main(["--eval_only", "--checkpoint_dir", str(tmp_path / "iemocap" / "cai_sota"), "--csv_path",
                        str(emobox["csv"]), "--data_path_audio", str(emobox["audio"]), "--label_map", mapping,
                        "--cross_corpus", "--save_path", str(tmp_path / "cross"), "--device", "cpu"])
    assert results["classes"] == ["hap", "ang", "neu", "sad"]  # the model's classes
    assert results["folds_from"] == "the whole table, for each fold's model"
    table, _ = read_table(emobox["csv"])
    assert results["folds"]["1"]["n"] == table["Label"].isin(["ANG", "HAP", "NEU", "SAD"]).sum()
    cross = ["--eval_only", "--checkpoint_dir", str(tmp_path / "iemocap" / "cai_sota"), "--csv_path", str(emobox["csv"]),
             "--data_path_audio", str(emobox["audio"]), "--cross_corpus", "--save_path", str(tmp_path / "bad")]
    with pytest.raises(DataError, match="sends labels to anger, which the model does not predict"):
        run.main(cross + ["--label_map", "ANG=anger,HAP=hap"])
    with pytest.raises(InputProblems, match=r"(?s)labels outside the label set.*'DIS'"):  # DIS, FEA not mapped
        run.main(cross + ["--label_map", "ANG=ang,HAP=hap,NEU=neu,SAD=sad"])


def test_label_maps_merge_order_and_leave_out():
    label_set = LabelSet.from_mapping(read_label_map("exc=hap,hap=hap,ang=ang,fru=,neu=neu"))
    assert label_set.classes == ("hap", "ang", "neu")
    assert label_set.index("exc") == 0 and label_set.index("fru") is None and label_set.unknown(["sur"]) == ["sur"]
    assert corpus_label_set(["neu", "exc", "sad"], iemocap=True) == LabelSet.iemocap()
    assert corpus_label_set(["neu", "exc", "sad"]).classes == ("exc", "neu", "sad")   # not IEMOCAP's own table
    assert corpus_label_set(["b", "a", "c"]).classes == ("a", "b", "c")


def test_predict_can_take_transcripts_from_a_speech_recogniser(demo, emobox, tmp_path):
    run.main(flags(demo, emobox, tmp_path, run="mmer", sessions="1"))
    wav = next(emobox["audio"].glob("*.wav"))
    table = predict.main(["--checkpoint_dir", str(tmp_path / "mmer"), str(wav), "--asr", str(demo.whisper_model),
                          "--device", "cpu"])
    assert list(table["transcript_source"]) == ["asr"]
    assert list(table.columns[2:8]) == [f"prob_{c}" for c in CLASSES]
