"""One fold: train on its training part, keep the best epoch (on dev, or on test if asked),
score that checkpoint on the test part; resumable after each epoch. Also the scoring of a
saved or published checkpoint (--eval_only) and which folds a run still has to do."""
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from dataio import corpus
from models import ModelConfig
from models.checkpoint import (calibration_temperature, checkpoint_path, load_checkpoint, restore_model,
                               save_checkpoint, scaled_probabilities, store_calibration)
from training import imbalance, runinfo
from training.calibration import calibration_metrics, temperature_record
from training.config import RunConfig
from training.conv_cache import use_conv_cache
from training.inputs import Corpus
from training.settings import ConfigError
from training.loop import (build_training, check_skipped, compile_regions, evaluate, fixed_lengths,
                           labelled, log_epoch, make_loader, predict_split, report_long_targets, tensorboard_writer,
                           train_epoch, uses_layerdrop, warn_ctc_scale, write_predictions)
from training.metrics import attribute_metrics, emotion_metrics, metrics_by_group
from training.views import Views, audio_view_settings, view_files
from utils import distributed
from utils.device import seed_everything
from utils.files import atomic_write_text

log = logging.getLogger("mmer")


def fold_of(corpus_: Corpus, name: str, run_cfg: RunConfig) -> corpus.Fold:
    return corpus.make_fold(corpus_.table, corpus_.scheme, name, run_cfg.dev_fraction, run_cfg.seed,
                            run_cfg.dev_split)


def run_fold(session: str, corpus_: Corpus, model_cfg: ModelConfig, run_cfg: RunConfig,
             device, run_dir: Path, said: set | None = None) -> dict:
    """Train on the fold's training part, keep the best epoch (on dev, or on test if asked),
    then score it on the test part. A `<fold>_last.pt` after each epoch makes it resumable.
    Under torchrun every rank trains (DDP) and evaluates its share; rank 0 alone writes.
    said: the run's warnings given once (shared by its folds)."""
    said = set() if said is None else said
    seed_everything(run_cfg.seed)
    fold = fold_of(corpus_, session, run_cfg)
    log.info("fold %s: train %d, dev %d, test %d utterances", session, len(fold.train), len(fold.dev), len(fold.test))
    train_loader = make_loader(corpus_, fold.train, run_cfg, True, device)
    if model_cfg.aug_weight:  # each training batch gets a batch of its utterances' augmented views
        files = (view_files(corpus_.dataset.names, run_cfg.data_path_audio_view) if run_cfg.data_path_audio_view
                 else None)
        train_loader.views = Views(corpus_, audio_view_settings(run_cfg.audio_view), run_cfg.seed,
                                   corpus_.collate.spec, model_cfg.max_audio_samples, files)
    dev_loader = make_loader(corpus_, fold.dev, run_cfg, False, device) if len(fold.dev) else None
    test_loader = make_loader(corpus_, fold.test, run_cfg, False, device)
    model, optimizer = build_training(model_cfg, run_cfg, device)
    weights = set_class_weights(model, corpus_, fold.train, session)
    use_conv_cache(model, corpus_, run_cfg, device)
    rank0 = distributed.is_main()
    if rank0:
        report_long_targets(model, corpus_, fold.train)
    board = tensorboard_writer(run_dir, session) if run_cfg.tensorboard and rank0 else None

    def save_best(record):  # the fold's selected model, with the metrics it was chosen by
        save_checkpoint(run_dir / f"{session}_model.pt", model, model_config=model_cfg.to_dict(), session=session,
                        epoch=record["epoch"], selected_on=run_cfg.select_on,
                        metrics={"dev": record["dev"], "test": record["test"]},
                        **({"selected_by": run_cfg.select_metric} if run_cfg.select_metric != "ua" else {}),
                        **({"class_weights": weights} if weights is not None else {}))

    state = restore_fold(run_dir, session, model, optimizer, save_best) if run_cfg.resume else None
    state = state or runinfo.FoldState(session=session)
    if run_cfg.compile:
        compile_regions(model, static_shapes=fixed_lengths(run_cfg, corpus_.collate.spec))
    # after the restore: DDP starts by giving every rank rank 0's weights
    ddp = distributed.wrap_model(model, device, find_unused_parameters=uses_layerdrop(model))
    for epoch in range(state.epoch + 1, run_cfg.epochs + 1):
        start = time.perf_counter()
        distributed.seed_rank(run_cfg.seed, epoch)
        train_loader.batch_sampler.set_epoch(epoch)
        record = {"epoch": epoch, **train_epoch(model, train_loader, optimizer, run_cfg, device, epoch, ddp)}
        check_skipped(record, run_cfg, session)
        if epoch == 1 and rank0 and "ctc_scale" not in said and warn_ctc_scale(record, model_cfg, session):
            said.add("ctc_scale")
        record["dev"] = evaluate(model, dev_loader, device, run_cfg.precision) if dev_loader is not None else None
        record["test"] = evaluate(model, test_loader, device, run_cfg.precision)
        record["selected_on"] = run_cfg.select_on
        score = record["dev" if run_cfg.select_on == "dev" else "test"][run_cfg.select_metric]
        improved = score > state.best_score or state.best_epoch == 0   # the first epoch counts even at CCC <= -1 or NaN
        if improved:
            state.best_score, state.best_epoch = score, epoch
        state.epoch = epoch
        record["best_epoch"] = state.best_epoch
        record["seconds"] = round(time.perf_counter() - start, 3)
        if rank0:  # last.pt first: whatever a kill interrupts after it, restore() can redo from it
            state.save(run_dir, model, optimizer, record)
            if improved:
                save_best(record)
        log_epoch(session, record, board)
    return finish_fold(session, corpus_, model_cfg, run_cfg, device, run_dir, fold)


def set_class_weights(model, corpus_: Corpus, train_idx, session) -> dict | None:
    """--class_weights: the categorical loss's weight of each class, from the fold's training
    labels (training/imbalance.py) -> {class: weight} as recorded, None without weights."""
    mode = model.config.class_weights
    if mode == "none":
        return None
    classes = corpus_.label_set.classes
    labels = [corpus_.dataset.labels[i] for i in train_idx]
    weights = imbalance.class_weights(imbalance.class_counts(labels, len(classes)), mode, classes,
                                      f"fold {session}'s training part")
    model.class_weight = torch.tensor(weights, dtype=torch.float32, device=next(model.parameters()).device)
    log.info("fold %s: --class_weights %s: %s", session, mode,
             ", ".join(f"{name} {weight:.3f}" for name, weight in zip(classes, weights)))
    return {name: float(weight) for name, weight in zip(classes, weights)}


def restore_fold(run_dir: Path, session: int, model, optimizer, save_best) -> "runinfo.FoldState | None":
    """--resume: rank 0 restores `<session>_last.pt` (and repairs the stats and best model
    after a kill); the other ranks read the fold state and optimizer from the same file, and
    get the weights from rank 0 when DDP wraps the model. None: the fold starts afresh."""
    if distributed.is_main():
        return runinfo.FoldState.restore(run_dir, session, model, optimizer, save_best)
    path = run_dir / f"{session}_last.pt"
    if not path.is_file():
        return None
    payload = load_checkpoint(path)
    optimizer.load_state_dict(payload["optimizer"])
    return runinfo.FoldState(**payload["fold_state"])


def finish_fold(session, corpus_, model_cfg, run_cfg, device, run_dir: Path, fold: corpus.Fold) -> dict:
    """(--calibrate dev: fit the best checkpoint's temperature on the dev part,) score it on the
    test part, record the fold as finished."""
    distributed.barrier()  # every rank reads the best checkpoint, which rank 0 has now written
    if run_cfg.calibrate == "dev":
        calibrate_checkpoint(session, corpus_, model_cfg, run_cfg, device, run_dir, fold.dev)
        distributed.barrier()  # the temperature is in the checkpoint before any rank reads it again
    metrics = evaluate_checkpoint(session, corpus_, model_cfg, run_cfg, device, run_dir, run_dir, fold.test)
    if distributed.is_main():
        runinfo.finish_fold(run_dir, session, metrics)
    return metrics


def calibrate_checkpoint(session, corpus_, model_cfg, run_cfg, device, run_dir: Path, dev_idx) -> dict:
    """--calibrate dev: the temperature minimising the NLL of the fold's selected model on its dev
    split, stored in `<fold>_model.pt` (training/calibration.py); -> the record stored."""
    path = run_dir / f"{session}_model.pt"
    if not len(dev_idx):
        raise ConfigError(f"fold {session}: --calibrate dev needs a dev split, and this fold has none; "
                          "raise --dev_fraction, or drop --calibrate")
    model, _ = restore_model(path, model_cfg.run, model_cfg.wav2vec2)
    model.to(device)
    use_conv_cache(model, corpus_, run_cfg, device)
    _, labels, _, logits = predict_split(model, make_loader(corpus_, dev_idx, run_cfg, False, device), device,
                                         run_cfg.precision, logits=True)
    classed = labelled(labels)
    record = temperature_record(logits[classed], labels[classed])
    if distributed.is_main():
        store_calibration(path, record)
    log.info("fold %s: temperature %.3f fitted on %d dev utterances (dev NLL %.4f -> %.4f)", session,
             record["temperature"], record["utterances"], record["nll_before"], record["nll_after"])
    return record


def evaluate_checkpoint(session, corpus_, model_cfg, run_cfg, device, checkpoint_dir: Path, run_dir: Path,
                        test_idx=None) -> dict:
    """Score `<checkpoint_dir>/<fold>_model.pt` on the fold's test part and write its predictions:
    the probabilities of the checkpoint's temperature (1 unless calibrated; the argmax is the
    same either way), with their ECE, NLL and Brier, and those of the plain softmax beside them
    where a temperature applies."""
    if test_idx is None:
        test_idx = fold_of(corpus_, session, run_cfg).test
    model, payload = restore_model(checkpoint_path(checkpoint_dir, session), model_cfg.run, model_cfg.wav2vec2)
    model.to(device)
    use_conv_cache(model, corpus_, run_cfg, device)
    loader = make_loader(corpus_, test_idx, run_cfg, False, device)
    task = model.config.task
    names, y_true, _, logits, *predicted = predict_split(model, loader, device, run_cfg.precision, logits=True,
                                                         attributes=task != "categorical")
    attributes = attribute_columns(corpus_, model.config, names, predicted[0][0]) if predicted else {}
    if distributed.is_main() and hasattr(model, "featurizer"):   # on cached hidden states, whatever the task
        write_layer_weights(run_dir / f"{session}_layer_weights.json", model)
    if task == "dimensional":   # the classifier was not trained: no class is predicted or scored
        if distributed.is_main():
            write_predictions(run_dir / f"{session}_predictions.csv", names, y_true, None, None,
                              corpus_.label_set.classes, attributes)
        return {**attributes_metrics(model.config, attributes), "n": int(len(names)), "epoch": payload.get("epoch"),
                "selected_on": payload.get("selected_on"), **recorded_training(payload)}
    logits = torch.from_numpy(logits)
    temperature = calibration_temperature(payload)
    raw = scaled_probabilities(logits).numpy()
    probs = scaled_probabilities(logits, temperature).numpy()
    y_pred = raw.argmax(axis=1)
    classes = corpus_.label_set.classes
    if distributed.is_main():
        write_predictions(run_dir / f"{session}_predictions.csv", names, y_true, y_pred, probs, classes, attributes)
    classed = labelled(y_true)   # the categorical metrics count the utterances with a class only
    y_true, y_pred, probs, raw = y_true[classed], y_pred[classed], probs[classed], raw[classed]
    metrics = {**emotion_metrics(y_true, y_pred, len(classes)), **calibration_metrics(y_true, probs),
               "temperature": temperature, **attributes_metrics(model.config, attributes)}
    if payload.get("calibration"):  # what the checkpoint's temperature changed
        metrics["uncalibrated"] = calibration_metrics(y_true, raw)
        metrics["calibration"] = payload["calibration"]
    if corpus.typed(corpus_.table):  # IEMOCAP: improvised and scripted test utterances apart
        types = corpus_.table.set_index("FileName").loc[list(np.asarray(names)[classed]), "utterance_type"].to_numpy()
        metrics["by_type"] = metrics_by_group(types, y_true, y_pred, len(classes))
    metrics["epoch"] = payload.get("epoch")
    metrics["selected_on"] = payload.get("selected_on")  # None: a checkpoint without our record (published)
    metrics.update(recorded_training(payload))
    return metrics


def attribute_columns(corpus_: Corpus, config, names, predicted) -> dict:
    """{attribute: (the table's ratings, the predictions)} of the utterances `names`, both in the
    corpus's units: the ratings as the table gives them (NaN where empty), the predictions mapped
    back from [0, 1] by the model's recorded scale."""
    rows = corpus_.table.set_index("FileName").loc[list(names)]
    rated = imbalance.numeric_columns(rows, config.attributes)
    return {name: (rated[:, i], predicted[:, i]) for i, name in enumerate(config.attributes)}


def attributes_metrics(config, attributes: dict) -> dict:
    """CCC, Pearson and MSE of each attribute (and ccc_mean), in the corpus's units; {} without attributes."""
    if not attributes:
        return {}
    return {**attribute_metrics({name: rated for name, (rated, _) in attributes.items()},
                                {name: predicted for name, (_, predicted) in attributes.items()}),
            "attribute_range": list(config.attribute_range)}


def recorded_training(payload: dict) -> dict:
    """What the checkpoint records of how it was trained and chosen beyond --select_on: the
    class weights (--class_weights) and the metric that picked it (--select_metric, when not UA)."""
    return {key: payload[key] for key in ("class_weights", "selected_by") if payload.get(key) is not None}


def write_layer_weights(path: Path, model) -> None:
    """The fold's weight of each cached hidden state (they sum to 1): which layers the model reads."""
    weights = model.featurizer.layer_weights().detach().cpu().tolist()
    states = model.config.ssl_layers or list(range(len(weights)))
    record = {"encoder": model.config.wav2vec2, "layer_weights": model.config.layer_weights,
              "layer_norm": model.config.probe_layer_norm, "hidden_states": states,
              "weights": [round(w, 6) for w in weights]}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def folds_to_run(run_dir: Path, run_cfg: RunConfig) -> list[str]:
    """The requested folds less, with --resume, those finished in this folder already (by an
    earlier run, or by another process running folds in parallel)."""
    todo = []
    for session in run_cfg.sessions:
        if run_cfg.resume and not run_cfg.eval_only and runinfo.finished_fold(run_dir, session):
            log.info("fold %s: finished in an earlier run, kept", session)
        else:
            todo.append(session)
    return todo


def finished_folds(run_dir: Path) -> dict:
    """The test metrics of every finished fold in the folder, whichever process trained it:
    the results of a run are those of all its folds."""
    names = sorted((path.name[: -len("_result.json")] for path in run_dir.glob("*_result.json")),
                   key=corpus.natural_key)
    return {name: runinfo.finished_fold(run_dir, name) for name in names}

