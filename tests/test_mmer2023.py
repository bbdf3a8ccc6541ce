"""The 2023 MMER as options of the same models: the preset, the contrastive heads and losses
inside the models, augmented views in training (deterministic, training utterances only),
pooling variants, and checkpoints that predict like the others."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from inference import recognizer as inference
import run
from training import loop as training
from dataio.corpus import fold_scheme, make_fold, read_table
from dataio.text_features import extract
from models.settings import FINE_TUNED
from models import MODELS, ModelConfig
from models.encoders import prepare_encoder
from dataio.dataset import Batch
from tests.test_models import TEXT_DIM, first_losses, PINNED_LOSSES, pad_batch, random_inputs
from synthetic.tiny_models import tiny_speech_encoder
from dataio.validate import InputProblems
from training import config as training_config
from training import views as training_views


def test_the_preset_sets_the_2023_configuration_and_given_flags_win(demo, tmp_path):
    model_cfg, run_cfg = run.parse_args(demo.flags(save_path=tmp_path, preset="mmer2023", learning_rate=None))
    assert (model_cfg.pooling, model_cfg.supcon_weight, model_cfg.aug_weight, model_cfg.alpha) == ("max", 0.1, 0.1, 0.1)
    assert model_cfg.max_audio_samples == 210_000 and run_cfg.learning_rate == 5e-5
    model_cfg, run_cfg = run.parse_args(demo.flags(save_path=tmp_path, preset="mmer2023", pooling="mean",
                                                   learning_rate=1e-3))
    assert model_cfg.pooling == "mean" and run_cfg.learning_rate == 1e-3 and model_cfg.aug_weight == 0.1


def test_every_new_option_off_reproduces_the_2022_losses():
    off = dict(pooling="mean", supcon_weight=0.0, aug_weight=0.0, max_audio_samples=None)
    for run_name in FINE_TUNED:
        np.testing.assert_allclose(first_losses(run_name, **off), PINNED_LOSSES[run_name], rtol=1e-4)


def model_2023(run_name="mmer", **config):
    torch.manual_seed(0)
    encoder = prepare_encoder(tiny_speech_encoder("wav2vec2", apply_spec_augment=False))
    settings = {"run": run_name, "alpha": 0.0, "text_dim": TEXT_DIM, "supcon_weight": 0.1, "aug_weight": 0.1, **config}
    return MODELS[run_name](ModelConfig(**settings), encoder).train()


def grads_after(model, use_ce: bool, use_supcon: bool, use_aug: bool) -> dict:
    inputs = pad_batch(*random_inputs([16000, 11000, 7000, 9000], [6, 4, 9, 5], seed=3))
    inputs["attention_mask"] = None
    views = pad_batch(*random_inputs([15000, 10000, 8000, 9000], [6, 4, 9, 5], seed=4))
    views["attention_mask"] = None
    output = model(**inputs, views=views)
    losses = model.loss(output, torch.tensor([0, 0, 1, 2]))
    total = (losses["ce"] if use_ce else 0) + (losses["supcon"] if use_supcon else 0) + (losses["aug"] if use_aug else 0)
    model.zero_grad()
    total.backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def test_the_contrastive_losses_reach_exactly_the_parameters_they_should():
    model = model_2023()
    assert set(model.state_dict()) - set(model_2023(supcon_weight=0.0, aug_weight=0.0).state_dict()) == {
        f"{head}.{layer}.{kind}" for head in ("projection", "view_projection") for layer in (0, 2)
        for kind in ("weight", "bias")}
    supcon = grads_after(model, use_ce=False, use_supcon=True, use_aug=False)
    assert supcon["projection.0.weight"] and not supcon["view_projection.0.weight"]
    assert not supcon["classifier.bias"]  # the heads read the classifier's input, not its output
    assert supcon["downsample_final.weight"] and supcon["wav2vec2.encoder.layers.0.attention.q_proj.weight"]
    aug = grads_after(model, use_ce=False, use_supcon=False, use_aug=True)
    assert aug["projection.0.weight"] and aug["view_projection.0.weight"]
    ce = grads_after(model, use_ce=True, use_supcon=False, use_aug=False)
    assert ce["classifier.weight"] and not ce["projection.0.weight"] and not ce["view_projection.0.weight"]
    assert not any(g for name, g in {**supcon, **aug, **ce}.items() if name.startswith("ctc_linear"))


@pytest.mark.parametrize("pooling", ["max", "attention", "statistics"])
def test_pooling_variants_give_each_utterance_what_it_gets_alone(pooling):
    torch.manual_seed(0)
    encoder = prepare_encoder(tiny_speech_encoder("wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True,
                                                  apply_spec_augment=False))
    model = MODELS["mmer"](ModelConfig(run="mmer", text_dim=TEXT_DIM, pooling=pooling), encoder).eval()
    waves, texts = random_inputs([16000, 7000], [6, 4])
    with torch.no_grad():
        together = model(**pad_batch(waves, texts)).logits
        alone = torch.cat([model(**pad_batch([w], [t])).logits for w, t in zip(waves, texts)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert model.classifier.in_features == (2 if pooling == "statistics" else 1) * 64 + TEXT_DIM


@pytest.fixture(scope="module")
def views_run(demo, tmp_path_factory):
    """Two identical 2023-style runs (audio views), recording which utterances got views."""
    root = tmp_path_factory.mktemp("views")
    viewed = []
    original = training_views.Views.view

    def recording(self, index, item, epoch):
        viewed.append((epoch, index))
        return original(self, index, item, epoch)

    training_views.Views.view = recording
    try:
        runs = [run.main(demo.flags(run="mmer", sessions="1", epochs=1, save_path=root / f"run{k}", aug_weight=0.1,
                                    supcon_weight=0.1, pooling="max")) for k in range(2)]
    finally:
        training_views.Views.view = original
    return root, runs, viewed


def test_views_are_deterministic_under_the_seed(views_run):
    root, runs, _ = views_run
    stats = [[json.loads(line) for line in (root / f"run{k}" / "mmer" / "1_stats.txt").read_text().splitlines()]
             for k in range(2)]
    for a, b in zip(*stats):
        assert a["aug_loss"] == b["aug_loss"] and a["supcon_loss"] == b["supcon_loss"] and a["loss"] == b["loss"]
    assert runs[0]["folds"]["1"]["confusion"] == runs[1]["folds"]["1"]["confusion"]


def test_views_are_made_of_training_utterances_only(demo, views_run):
    _, _, viewed = views_run
    table, _ = read_table(demo.csv)
    fold = make_fold(table, fold_scheme(table), "1", 0.1, seed=0)
    first_run = viewed[: len(viewed) // 2]
    assert sorted(index for _, index in first_run) == sorted(fold.train)  # each training utterance once, no other


def test_a_2023_checkpoint_predicts_like_the_others(demo, views_run):
    root, _, _ = views_run
    recognizer = inference.EmotionRecognizer.from_run(root / "run0" / "mmer", device="cpu")
    assert recognizer.first.config.aug_weight == 0.1 and hasattr(recognizer.first, "view_projection")
    wav = next(demo.audio.glob("*.wav"))
    result = recognizer.predict(wav, transcript="hello there")
    assert result.label in recognizer.classes and sum(result.probabilities.values()) == pytest.approx(1.0)


def test_a_view_asked_for_without_a_source_is_refused(demo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(demo.flags(save_path=tmp_path, aug_weight=0.1, audio_view="none"))
    assert "--aug_weight needs augmented views" in capsys.readouterr().err
    with pytest.raises(InputProblems, match="augmented-transcript views"):
        run.main(demo.flags(save_path=tmp_path / "x", aug_weight=0.1, data_path_roberta_view=tmp_path / "nowhere"))


def test_text_views_come_from_the_augmented_transcript_features(demo, tmp_path):
    table = pd.read_csv(demo.csv, keep_default_na=False)
    table["AugmentedText"] = table["Sentences"].str.lower() + " indeed"
    csv = tmp_path / "with_views.csv"
    table.to_csv(csv, index=False)
    extract(csv, tmp_path / "views", roberta=demo.roberta_model, device="cpu", text_column="AugmentedText")
    results = run.main(demo.flags(run="mmer", csv_path=csv, sessions="1", epochs=1, save_path=tmp_path / "runs",
                                  aug_weight=0.1, audio_view="none", data_path_roberta_view=tmp_path / "views"))
    stats = json.loads((tmp_path / "runs" / "mmer" / "1_stats.txt").read_text().splitlines()[0])
    assert stats["aug_loss"] > 0 and set(results["folds"]) == {"1"}


# ---------------------------------------------------------------- the 2023 terms train (issue 20)
def steps_of(weights: dict, steps: int = 3) -> dict:
    """mmer with alpha 0.1 (the 2023 preset's) and the given contrastive weights, a few AdamW
    steps of training.forward_backward on fixed inputs with views -> the parameters after them."""
    model = model_2023(alpha=0.1, **weights).eval()  # no dropout: the runs differ by the term alone
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    inputs = pad_batch(*random_inputs([16000, 11000, 7000, 9000], [6, 4, 9, 5], seed=3))
    views = pad_batch(*random_inputs([15000, 10000, 8000, 9000], [6, 4, 9, 5], seed=4))
    batch = Batch(names=list("abcd"), labels=torch.tensor([0, 0, 1, 2]),
                           ctc_targets=torch.arange(5, 21), ctc_target_lengths=torch.tensor([5, 4, 3, 4]),
                           **{k: v for k, v in inputs.items() if k != "attention_mask"})
    view_batch = Batch(names=list("abcd"), labels=batch.labels, ctc_targets=batch.ctc_targets,
                                ctc_target_lengths=batch.ctc_target_lengths,
                                **{k: v for k, v in views.items() if k != "attention_mask"})
    settings = training_config.RunConfig(accum_grad=1, precision="fp32")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(steps):
        training.forward_backward(model, None, batch, 1.0, settings, torch.device("cpu"),
                                  view_batch if weights.get("aug_weight") else None)
        optimizer.step()
        optimizer.zero_grad()
    return {name: p.detach() for name, p in model.named_parameters()}, initial


@pytest.mark.parametrize("term", ["supcon_weight", "aug_weight"])
def test_the_2023_terms_reach_the_gradient_with_the_ctc_term_on(term):
    """With alpha 0.1 the total once replaced the contrastive terms: the heads never moved and
    the rest trained as if their weight were 0."""
    other = {"supcon_weight": 0.0, "aug_weight": 0.0}
    with_term, initial = steps_of({**other, term: 0.1})
    without, _ = steps_of({**other, term: 0.0, "supcon_weight": 0.1 if term == "aug_weight" else 0.0})
    shared = [name for name in without if name in with_term and not name.startswith(("projection", "view_projection"))]
    moved = [name for name in shared if not torch.equal(with_term[name], without[name])]
    assert "classifier.weight" in moved and "wav2vec2.encoder.layers.0.attention.q_proj.weight" in moved
    heads = ["projection.0.weight", "projection.2.weight"] + (["view_projection.0.weight"] if term == "aug_weight" else [])
    assert all(not torch.equal(with_term[name], initial[name]) for name in heads)


def test_views_run_in_their_own_pass_so_the_originals_losses_do_not_change():
    """wav2vec2-base's group norm sees its batch's padding: views batched with the originals
    (padded to the longest view) moved the originals' CE and CTC."""
    model = model_2023(alpha=0.1, supcon_weight=0.1, aug_weight=0.1).eval()
    waves, texts = random_inputs([9000, 8000], [6, 4], seed=3)
    view_waves, view_texts = random_inputs([16000, 15000], [6, 4], seed=4)  # longer than the originals
    inputs, views = pad_batch(waves, texts), pad_batch(view_waves, view_texts)
    inputs["attention_mask"] = views["attention_mask"] = None
    labels, targets, lengths = torch.tensor([0, 1]), torch.arange(5, 12), torch.tensor([4, 3])
    with torch.no_grad():
        model.config.aug_weight = 0.0
        alone = model.loss(model(**inputs), labels, targets, lengths)
        model.config.aug_weight = 0.1
        with_views = model.loss(model(**inputs, views=views), labels, targets, lengths)
    assert with_views["ce"].item() == alone["ce"].item() and with_views["ctc"].item() == alone["ctc"].item()
    assert with_views["aug"].item() > 0
