"""run.py --seeds: one configuration once per seed, each a whole run in <run>/seed_<s>/ that its
own recipe re-runs, and the seed table beside them."""
import json

import pandas as pd
import pytest
import yaml

import run


@pytest.fixture(scope="module")
def seeded(demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("seeds")
    results = run.main(demo.flags(run="unimodal_baseline", epochs=1, max_steps=1, sessions="1", seed=None,
                                  seeds="0 5", save_path=save))
    return save / "unimodal_baseline", results


def test_each_seed_is_a_whole_run_that_records_its_seed(seeded):
    parent, results = seeded
    assert sorted(results) == [0, 5]
    for seed in (0, 5):
        folder = parent / f"seed_{seed}"
        assert json.loads((folder / "config.json").read_text())["run"]["seed"] == seed
        recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
        assert recipe["seed"] == seed and "seeds" not in recipe
        assert json.loads((folder / "results.json").read_text())["folds"]["1"]["ua"] == results[seed]["folds"]["1"]["ua"]


def test_the_seed_table_is_the_mean_and_std_over_the_seeds(seeded):
    parent, results = seeded
    uas = [100 * results[seed]["folds"]["1"]["ua"] for seed in (0, 5)]
    mean = (uas[0] + uas[1]) / 2
    std = abs(uas[0] - uas[1]) / 2   # the population std of two values, as the table says
    table = pd.read_csv(parent / "seeds.csv")
    assert len(table) == 1 and table["seeds"].iloc[0] == "0 5"
    assert table["ua"].iloc[0] == pytest.approx(mean, abs=1e-6)
    assert table["ua_std"].iloc[0] == pytest.approx(std, abs=1e-6)
    assert (parent / "seeds.md").is_file()


@pytest.mark.parametrize("extra, says", [({"seed": 3}, "without --seed"), ({"seeds": "1 1"}, "each seed once")])
def test_seeds_beside_seed_or_twice_are_refused(demo, tmp_path, capsys, extra, says):
    flags = {"run": "unimodal_baseline", "seed": None, "seeds": "0 1", "save_path": tmp_path, **extra}
    with pytest.raises(SystemExit):
        run.main(demo.flags(**flags))
    assert says in capsys.readouterr().err and not list(tmp_path.iterdir())
