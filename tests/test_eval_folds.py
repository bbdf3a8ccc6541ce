"""--eval_only re-creates the folds of the run it re-evaluates: with only --eval_only and
--checkpoint_dir, every checkpoint scores the test set of its own fold (the same utterances and
metrics as the training run), whatever made the folds; a flag that contradicts the record is
refused, naming both values."""
import pandas as pd
import pytest

import run

# two runs cover every setting that makes folds (LOSO: tests/test_run_control.py); the label map
# leaves exc out, which the checkpoints' label set records too
SCHEMES = {
    "kfold_seed1_impro_label_map": {"kfold": 3, "seed": 1, "utterance_types": "impro", "sessions": "1",
                                    "label_map": "neu=neu,sad=sad,ang=ang,hap=hap,exc="},
    "fold_by_speaker": {"fold_by": "speaker", "sessions": "Ses01_F", "limit_utterances": 2},
}


@pytest.fixture(scope="module")
def train(demo, tmp_path_factory):
    """scheme -> (its run folder, the training run's results, the audio cache), each trained once."""
    done, cache = {}, tmp_path_factory.mktemp("folds_cache")

    def trained(scheme: str):
        if scheme not in done:
            save = tmp_path_factory.mktemp(f"folds_{scheme}")
            flags = {"run": "unimodal_baseline", "epochs": 1, "max_steps": 1, "save_path": save, "cache_dir": cache,
                     **SCHEMES[scheme]}
            done[scheme] = save / "unimodal_baseline", run.main(demo.flags(**flags)), cache
        return done[scheme]
    return trained


def predictions(run_dir, fold) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / f"{fold}_predictions.csv")
    return frame.sort_values(by=list(frame.columns[:1])).reset_index(drop=True)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_eval_only_with_only_the_checkpoint_folder_scores_each_folds_own_test_set(train, scheme, tmp_path):
    run_dir, results, cache = train(scheme)
    again = run.main(["--eval_only", "--checkpoint_dir", str(run_dir), "--save_path", str(tmp_path),
                      "--device", "cpu", "--cache_dir", str(cache)])
    assert sorted(again["folds"]) == sorted(results["folds"]), scheme
    for fold, metrics in results["folds"].items():
        for key in ("wa", "ua", "confusion"):
            assert again["folds"][fold][key] == metrics[key], (scheme, fold, key)
        pd.testing.assert_frame_equal(predictions(tmp_path / "unimodal_baseline", fold), predictions(run_dir, fold))


@pytest.mark.parametrize("flag, value", [("kfold", "4"), ("seed", "7"), ("fold_by", "session"),
                                         ("utterance_types", "script"), ("label_map", "neu=neu")])
def test_a_flag_that_contradicts_the_recorded_folds_is_refused_naming_both_values(train, tmp_path, capsys, flag,
                                                                                 value):
    run_dir, _, _ = train("kfold_seed1_impro_label_map")
    with pytest.raises(SystemExit):
        run.main(["--eval_only", "--checkpoint_dir", str(run_dir), "--save_path", str(tmp_path), f"--{flag}", value])
    err = capsys.readouterr().err
    recorded = {"kfold": "3", "seed": "1", "fold_by": "None", "utterance_types": "impro",
                "label_map": "neu=neu,sad=sad,ang=ang,hap=hap,exc="}[flag]
    assert f"--{flag} {value}" in err and f"{flag} {recorded}" in err and "--cross_corpus" in err
