"""Recipes: the papers' configurations as files (recipes/iemocap/*.yaml) that --preset or
--config reads, each flag given beside one overriding it, and the resolved recipe a run writes
into its folder, which --config reads back to re-run it."""
import dataclasses
import json

import pytest
import yaml

import run

# The 2023 paper's settings as upstream's 2023 code runs them (shared/reference/upstream_fixture_2023):
# written out here by hand, not read from the recipe under test.
MMER2023 = {"run": "mmer", "alpha": 0.1, "supcon_weight": 0.1, "aug_weight": 0.1, "pooling": "max",
            "text_pooling": "max", "audio_dropout": "ctc", "contrastive": "upstream", "max_audio_samples": 210_000}


def settings(model_cfg, run_cfg) -> dict:
    return {**dataclasses.asdict(model_cfg), **dataclasses.asdict(run_cfg)}


def test_the_2023_recipe_holds_the_papers_settings_and_flags_beside_it_win(demo, tmp_path):
    model_cfg, run_cfg = run.parse_args(demo.flags(save_path=tmp_path, config="recipes/iemocap/mmer2023.yaml",
                                                   learning_rate=None, epochs=None))
    assert {key: getattr(model_cfg, key) for key in MMER2023} == MMER2023
    assert (run_cfg.learning_rate, run_cfg.audio_view, run_cfg.epochs) == (5e-5, "speed,noise,mask", 100)
    model_cfg, run_cfg = run.parse_args(demo.flags(save_path=tmp_path, config="recipes/iemocap/mmer2023.yaml",
                                                   pooling="mean", learning_rate=1e-3))
    assert (model_cfg.pooling, run_cfg.learning_rate, model_cfg.text_pooling) == ("mean", 1e-3, "max")


def test_preset_names_the_same_recipe_as_its_file(demo, tmp_path):
    by_name = settings(*run.parse_args(demo.flags(save_path=tmp_path, preset="mmer2023")))
    by_file = settings(*run.parse_args(demo.flags(save_path=tmp_path, config="recipes/iemocap/mmer2023.yaml")))
    assert {k: v for k, v in by_name.items() if k not in ("preset", "config")} == \
        {k: v for k, v in by_file.items() if k not in ("preset", "config")}


def test_the_2022_recipe_is_the_defaults(demo, tmp_path):
    assert settings(*run.parse_args(demo.flags(save_path=tmp_path, preset="mmer2022"))) == \
        {**settings(*run.parse_args(demo.flags(save_path=tmp_path))), "preset": "mmer2022"}


@pytest.mark.parametrize("text, message", [
    ("alpah: 0.1\n", "'alpah' is not a setting of run.py"),
    ("alpha: -1\n", "--alpha"),
    ("- alpha\n", "a recipe is a mapping"),
    ("alpha: [0.1\n", "not YAML"),
])
def test_a_bad_recipe_is_refused_naming_the_file(demo, tmp_path, capsys, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        run.parse_args(demo.flags(save_path=tmp_path, config=recipe))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err
    if "--alpha" not in message:
        assert str(recipe) in err


def test_preset_and_config_together_are_refused(demo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(demo.flags(save_path=tmp_path, preset="mmer2023", config="recipes/iemocap/mmer2023.yaml"))
    assert "give one" in capsys.readouterr().err


def test_the_recipe_a_run_writes_re_runs_it(demo, tmp_path):
    first = tmp_path / "first"
    run.main(demo.flags(save_path=first, run="unimodal_baseline", alpha=0, epochs=1, max_steps=1, sessions=1,
                        preset="mmer2023", aug_weight=0))
    recipe = first / "unimodal_baseline" / "recipe.yaml"
    recorded = json.loads((first / "unimodal_baseline" / "config.json").read_text())
    assert yaml.safe_load(recipe.read_text())["max_audio_samples"] == 210_000
    model_cfg, run_cfg = run.parse_args(["--config", str(recipe)])
    for part, cfg in (("model", model_cfg), ("run", run_cfg)):
        now = dataclasses.asdict(cfg)
        differ = {key for key in recorded[part] if recorded[part][key] != now[key]}
        assert differ <= {"preset", "config", "world_size", "precision_resolved", "text_dim", "num_classes",
                          "labels"}, part
