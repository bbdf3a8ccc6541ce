"""A run's two configurations: the run settings (RunConfig: paths, folds, schedule, devices)
beside the model's (models.ModelConfig), resolved from the flags, a recipe (recipes/*/*.yaml,
`--preset NAME` or `--config FILE`) and, under --eval_only, what the re-evaluated run recorded;
and the recipe a run writes beside its results, which `--config` reads back."""
import json
import logging
from dataclasses import asdict
from pathlib import Path

import yaml

from dataio import corpus
from dataio.dataset import DataError, ssl_folder_shape
from dataio.text_features import features_text_encoder, recorded_encoder
from dataio.labels import read_label_map
from models import MODELS, ModelConfig
from models.settings import UNKNOWN_ENCODER
from models.checkpoint import CheckpointError, find_checkpoints, load_checkpoint, model_settings
from models.encoders import audio_input_spec, conv_cache_changes_training, conv_cache_refusal, encoder_config
from training import runinfo
from training.imbalance import parse_attribute_range
from training.settings import (EVAL_OVERRIDABLE, MODEL_FLAGS, NOT_IN_RECIPE, PROBE_DEFAULTS, PROBE_MODEL_DEFAULTS,
                               RECIPE_FILE, RECORDED_FOLDS, RECORDED_RUN, ConfigError, RunConfig)
from training.views import audio_view_settings
from utils.device import evaluation_precision, training_precision
from utils.files import atomic_write_text
from utils.hub import check_model_name

log = logging.getLogger("mmer")


# ---------------------------------------------------------------- the recipe a run writes
def resolved_recipe(model_cfg: ModelConfig, run_cfg: RunConfig) -> dict:
    """Every setting of a run as a recipe: model settings first, then the run's; what `--config`
    reads back to re-run it (not --resume or --overwrite, which say how to start, not what)."""
    model = {key: getattr(model_cfg, key) for key in MODEL_FLAGS}
    run = {key: value for key, value in asdict(run_cfg).items() if key not in NOT_IN_RECIPE and value is not None}
    return {**model, **run}


def write_recipe(run_dir: Path, model_cfg: ModelConfig, run_cfg: RunConfig) -> None:
    text = yaml.safe_dump(resolved_recipe(model_cfg, run_cfg), sort_keys=False, allow_unicode=True)
    atomic_write_text(run_dir / RECIPE_FILE, f"# the resolved settings of this run: python run.py --config {RECIPE_FILE}\n"
                      + text)


# ---------------------------------------------------------------- resolution
def resolve_configs(args, preset_model: dict) -> tuple[ModelConfig, RunConfig]:
    """The two configurations from the flags, the preset's model settings and, under
    --eval_only, what the re-evaluated run recorded."""
    d = RunConfig()
    if args.eval_only and not args.checkpoint_dir:
        raise ConfigError("--eval_only needs --checkpoint_dir DIR holding <session>_model.pt files")
    check_calibration(args)
    if args.seeds is not None:
        if args.seed is not None or args.eval_only or len(set(args.seeds)) < len(args.seeds):
            raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))}: give each seed once, without --seed, and "
                              "not with --eval_only (re-evaluate each <run>/seed_<s> folder instead)")
        if any(seed < 0 for seed in args.seeds):
            raise ConfigError(f"--seeds {' '.join(map(str, args.seeds))}: seeds are integers >= 0")
    recorded_model, recorded_run = recorded_settings(args.checkpoint_dir) if args.eval_only else ({}, {})
    for key in RECORDED_RUN:
        if getattr(args, key) is None:
            setattr(args, key, recorded_run.get(key, getattr(d, key)))
    if args.label_map and Path(args.label_map).expanduser().is_file():
        args.label_map = absolute(args.label_map)  # recorded so that --eval_only finds it from anywhere
    if args.eval_only and not args.cross_corpus:
        restore_folds(args, recorded_run.get("folds"))
    for key in RECORDED_FOLDS:
        if getattr(args, key) is None:
            setattr(args, key, getattr(d, key))
    if args.sessions is not None and len(set(args.sessions)) < len(args.sessions):
        raise ConfigError(f"--sessions {' '.join(map(str, args.sessions))}: a session is named twice; name each once")
    if args.kfold and args.fold_by:
        raise ConfigError("--kfold and --fold_by both say how to make folds; give one")
    if args.label_map:
        read_label_map(args.label_map)  # refused here when malformed
    if args.cross_corpus and not args.eval_only:
        raise ConfigError("--cross_corpus evaluates trained checkpoints on another corpus: give it with --eval_only")
    if args.select_on == "dev" and args.dev_fraction <= 0 and not args.eval_only:
        raise ConfigError("--select_on dev needs --dev_fraction > 0")
    model_cfg = model_config(args, preset_model, recorded_model)
    for key, value in optimisation_defaults(model_cfg.run).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.data_path_ssl and not args.eval_only:
        frozen_encoder_settings(args, model_cfg)
    elif model_cfg.run == "probe" and not args.eval_only:
        raise ConfigError("--run probe trains on a frozen encoder's cached hidden states: give --data_path_ssl DIR "
                          "(written by data_prep/extract_ssl.py)")
    if not model_cfg.ssl_states:   # on cached states the encoder is loaded only to predict from audio
        check_model_name(model_cfg.wav2vec2, "--wav2vec2")
    check_views(args, model_cfg)
    check_task(args, model_cfg)
    run_cfg = RunConfig(**{k: getattr(args, k) for k in RunConfig.__dataclass_fields__ if hasattr(args, k)})
    if model_cfg.ssl_states:
        check_frozen_encoder_flags(model_cfg, run_cfg)
    else:
        run_cfg.cache_conv_features = conv_cache_setting(run_cfg.cache_conv_features, model_cfg, run_cfg)
    if run_cfg.select_on == "test":
        run_cfg.dev_fraction = 0.0  # upstream trained on all four training sessions
    for key in ("csv_path", "data_path_audio", "data_path_roberta", "save_path", "checkpoint_dir",
                "data_path_audio_view", "data_path_roberta_view", "data_path_ssl"):
        setattr(run_cfg, key, absolute(getattr(run_cfg, key)))
    if MODELS[model_cfg.run].uses_text:
        run_cfg.roberta = features_text_encoder(run_cfg.data_path_roberta, run_cfg.roberta)
    return model_cfg, run_cfg


def check_task(args, model_cfg: ModelConfig) -> None:
    """--select_metric against --task (its default: ua, or ccc_mean under --task dimensional, which
    reports no class); the flags of the categorical loss mean nothing under --task dimensional."""
    if args.select_metric is None:
        args.select_metric = "ccc_mean" if model_cfg.task == "dimensional" else RunConfig().select_metric
    if args.select_metric == "ccc_mean" and model_cfg.task == "categorical":
        raise ConfigError("--select_metric ccc_mean picks the epoch by the attributes' mean CCC, and --task categorical "
                          "predicts none: add --task both (or dimensional), or select on ua or macro_f1")
    if args.select_metric != "ccc_mean" and model_cfg.task == "dimensional":
        raise ConfigError(f"--select_metric {args.select_metric}: --task dimensional trains and reports no class, so "
                          "the epoch is picked by the attributes' mean CCC: drop --select_metric, or use --task both")
    if model_cfg.task == "dimensional" and (model_cfg.soft_targets or model_cfg.class_weights != "none"
                                            or model_cfg.loss != "ce" or args.sampler == "balanced"):
        raise ConfigError("--soft_targets, --class_weights, --loss focal and --sampler balanced shape the categorical "
                          "loss, and --task dimensional trains none: drop them, or use --task both")
    if model_cfg.task == "dimensional" and getattr(args, "calibrate", "none") == "dev":
        raise ConfigError("--calibrate dev fits a temperature to the class probabilities, and --task dimensional "
                          "predicts no class: drop --calibrate, or use --task both")
    if args.attribute_range is not None:
        parse_attribute_range(args.attribute_range)   # nonsense refused before any data is read
    if args.attribute_range is not None and model_cfg.task == "categorical":
        raise ConfigError("--attribute_range sets the attributes' scale, and --task categorical predicts none: add "
                          "--task both (or dimensional), or drop it")


def optimisation_defaults(run: str) -> dict:
    """The schedule where no flag or recipe gives it: --run probe's is EmoBox's downstream recipe,
    the fine-tuned variants' the paper's (RunConfig)."""
    d = RunConfig()
    return {key: PROBE_DEFAULTS[key] if run == "probe" else getattr(d, key) for key in PROBE_DEFAULTS}


def frozen_encoder_settings(args, model_cfg: ModelConfig) -> None:
    """--data_path_ssl: the cached states' count, width and which of the encoder's hidden states
    they are, read from the folder (its encoder.json, else the arrays' headers: another tool's
    folder); the encoder it names is the run's --wav2vec2 (prediction recomputes the states
    with it), and a --wav2vec2 that contradicts it is refused."""
    folder = Path(args.data_path_ssl)
    if not folder.is_dir():
        raise ConfigError(f"--data_path_ssl {folder}: no such folder; write it with data_prep/extract_ssl.py")
    try:
        states, width, _ = ssl_folder_shape(folder)
    except DataError as err:
        raise ConfigError(str(err)) from err
    stamp = {}
    if (folder / "encoder.json").is_file():
        try:
            stamp = json.loads((folder / "encoder.json").read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{folder / 'encoder.json'}: not JSON ({err}); re-extract, or delete it to read the "
                              "arrays as another tool's") from err
    encoder = stamp.get("encoder")
    if encoder and args.wav2vec2 and not same_setting(args.wav2vec2, encoder):
        raise ConfigError(f"--wav2vec2 {args.wav2vec2}: the hidden states in {folder} are {encoder}'s (its "
                          "encoder.json); drop --wav2vec2, or extract the states with it")
    if encoder:
        model_cfg.wav2vec2 = local_path(encoder)
    elif not args.wav2vec2:   # recorded as unknown, not as the default encoder it may not be
        model_cfg.wav2vec2 = UNKNOWN_ENCODER
        log.info("%s has no encoder.json (another tool's folder): %d hidden states of width %d; pass --wav2vec2 "
                 "with the encoder that wrote them to predict from audio later", folder, states, width)
    layers = stamp.get("layers")
    model_cfg.ssl_states, model_cfg.ssl_width = states, width
    model_cfg.ssl_layers = [int(k) for k in layers] if layers and len(layers) == states else list(range(states))
    featurizer_check(model_cfg)


def featurizer_check(model_cfg: ModelConfig) -> None:
    choice = model_cfg.layer_weights
    if choice not in ("learnable", "last") and int(choice) not in model_cfg.ssl_layers:
        raise ConfigError(f"--layer_weights {choice}: the cached hidden states are the encoder's "
                          f"{' '.join(map(str, model_cfg.ssl_layers))}; pick one of them, last or learnable")


def check_frozen_encoder_flags(model_cfg: ModelConfig, run_cfg: RunConfig) -> None:
    """What needs the fine-tuned encoder or the audio has no meaning on cached states."""
    for flag, given in (("--cache_conv_features", run_cfg.cache_conv_features),
                        ("--gradient_checkpointing", run_cfg.gradient_checkpointing),
                        ("--compile", run_cfg.compile), ("--specaugment", model_cfg.specaugment)):
        if given:
            raise ConfigError(f"{flag}: acts on the fine-tuned encoder, and --data_path_ssl trains on its cached hidden "
                              f"states; drop {flag}")
    if model_cfg.aug_weight or run_cfg.data_path_audio_view:
        raise ConfigError("--aug_weight / --data_path_audio_view: the augmented views are audio, and --data_path_ssl "
                          "reads none; drop them (--supcon_weight works on cached states)")
    if model_cfg.max_audio_samples:
        raise ConfigError("--max_audio_samples cuts the audio, and --data_path_ssl reads none; cut it when extracting")
    run_cfg.cache_conv_features = False


def check_calibration(args) -> None:
    """--calibrate dev fits a temperature on the dev split while training a fold."""
    if getattr(args, "calibrate", "none") != "dev":
        return
    if args.eval_only:
        raise ConfigError("--calibrate dev fits each fold's temperature while training it; --eval_only applies the "
                          "temperature each checkpoint stores already: drop --calibrate")
    if args.select_on == "test":
        raise ConfigError("--calibrate dev fits the temperature on the dev split, and --select_on test holds none out "
                          "(upstream's protocol trains on every training utterance); use --select_on dev, or drop "
                          "--calibrate")
    if args.dev_fraction <= 0:
        raise ConfigError("--calibrate dev needs a dev split: --dev_fraction > 0")


def restore_folds(args, recorded: dict | None) -> None:
    """--eval_only: the settings that made the run's folds (RECORDED_FOLDS) from its config.json,
    so that each checkpoint scores the test set of its own fold, not utterances it trained on.
    A flag that contradicts the record is refused, naming both values."""
    if recorded is None:  # published checkpoints, or a folder without run.py's config.json
        return
    for key in RECORDED_FOLDS:
        given, saved = getattr(args, key), recorded.get(key)
        if given is not None and str(given) != str(saved):
            raise ConfigError(f"--{key} {given}: the run in {args.checkpoint_dir} made its folds with {key} "
                              f"{saved} (its config.json), so its checkpoints would score utterances they were "
                              f"trained on; drop --{key} to re-create the run's folds, or pass --cross_corpus to "
                              "score every checkpoint on the whole table")
        setattr(args, key, saved)


def model_config(args, preset: dict, recorded: dict) -> ModelConfig:
    """Each model setting from, in this order: a flag given; the preset; ModelConfig's default.
    Under --eval_only the checkpoints' recorded settings come first (they hold that model): a
    flag that contradicts one is named, and only --wav2vec2 and --max_audio_samples win."""
    defaults = ModelConfig()
    values = {}
    for key in MODEL_FLAGS:
        given = getattr(args, key)
        if key in recorded:
            values[key] = recorded[key]
            if given is not None and not same_setting(given, recorded[key]):
                values[key] = contradicted(key, given, recorded[key], args.checkpoint_dir)
        else:
            values[key] = given if given is not None else preset.get(key, getattr(defaults, key))
    if values["run"] == "probe" and "run" not in recorded:
        for key, value in PROBE_MODEL_DEFAULTS.items():
            if getattr(args, key) is None and key not in preset:
                values[key] = value
    values["wav2vec2"] = local_path(values["wav2vec2"])
    for key in ("specaugment", "probe_layer_norm", "soft_targets"):   # store_true flags: None (not given) is False
        values[key] = bool(values[key])
    kept = {key: value for key, value in recorded.items()
            if key in ModelConfig.__dataclass_fields__ and key not in MODEL_FLAGS}   # labels, text_dim, ...
    return ModelConfig(**values, **kept)


def same_setting(given, recorded) -> bool:
    return str(given) == str(recorded) or local_path(str(given)) == str(recorded)


def contradicted(key: str, given, recorded, checkpoint_dir):
    """A flag beside --eval_only that contradicts what the checkpoints recorded -> the value used."""
    if key == "run":
        raise CheckpointError(f"{checkpoint_dir}: holds {recorded} models, but --run is {given}; "
                              f"drop --run or pass --run {recorded}")
    if key in EVAL_OVERRIDABLE:
        log.warning("--%s %s given; the run in %s recorded %s", key, given, checkpoint_dir, recorded)
        return given
    log.warning("--%s %s ignored: the checkpoints in %s hold a model with %s %s", key, given, checkpoint_dir,
                key, recorded)
    return recorded


def conv_cache_setting(asked: bool | None, model_cfg: ModelConfig, run_cfg) -> bool:
    """--cache_conv_features: on where asked and possible; by default, where it changes nothing."""
    config, spec = encoder_config(model_cfg.wav2vec2), audio_input_spec(model_cfg.wav2vec2)
    why_not = conv_cache_refusal(config, spec)
    if model_cfg.aug_weight and audio_view_settings(run_cfg.audio_view) is not None:
        why_not = why_not or "would not serve the augmented audio views, which change every epoch (--audio_view)"
    if asked and why_not:
        raise ConfigError(f"--cache_conv_features: {model_cfg.wav2vec2} {why_not}; it is offered for wav2vec2, HuBERT and WavLM "
                "encoders")
    if asked is None:
        return why_not is None and not conv_cache_changes_training(config, spec)
    if asked and conv_cache_changes_training(config, spec):
        log.info("--cache_conv_features: %s takes no attention mask, so training with the cache masks padded frames "
                 "where training without it lets them into the encoder", model_cfg.wav2vec2)
    return asked


def check_views(args, model_cfg: ModelConfig) -> None:
    """The augmentation loss needs views: augmented audio (--audio_view, or the pre-made files of
    --data_path_audio_view) or transcripts (--data_path_roberta_view, mmer only)."""
    try:
        audio = audio_view_settings(args.audio_view)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if args.data_path_audio_view:
        if not Path(args.data_path_audio_view).is_dir():
            raise ConfigError(f"--data_path_audio_view {args.data_path_audio_view}: no such folder; give the folder of the "
                    "pre-made augmented audio (<anything><FileName>.wav)")
        args.audio_view = "none"   # the files are the audio views
    if args.data_path_roberta_view and not MODELS[model_cfg.run].uses_text:
        raise ConfigError(f"--data_path_roberta_view: {model_cfg.run} reads no text; augmented transcripts are for mmer")
    if (model_cfg.aug_weight and not args.eval_only and audio is None and not args.data_path_audio_view
            and not args.data_path_roberta_view):
        raise ConfigError("--aug_weight needs augmented views, and none is asked for: give --audio_view (e.g. speed,noise,mask), "
                "--data_path_audio_view (pre-made augmented audio) or, for mmer, --data_path_roberta_view (features "
                "of an augmented transcript column)")


def recorded_settings(checkpoint_dir) -> tuple[dict, dict]:
    """What the run in checkpoint_dir recorded -> (model settings, run settings): the model
    settings of its first checkpoint (ours: their ModelConfig; published: what their layout
    says, models.checkpoint.model_settings), and the data paths, text encoder and, under
    "folds", the settings that made its folds, from its config.json (run.py's runs)."""
    folder = Path(checkpoint_dir)
    run_part = {}
    config = folder / "config.json"
    if config.is_file():
        try:
            saved = json.loads(config.read_text())
            run_part = {key: saved["run"].get(key) for key in RECORDED_RUN if saved["run"].get(key) is not None}
            run_part["folds"] = {key: saved["run"].get(key, getattr(RunConfig(), key)) for key in RECORDED_FOLDS}
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
            raise CheckpointError(f"{config}: not the config.json run.py writes ({err}); give the settings as flags "
                                  "or remove the file") from err
    checkpoint = next(iter(find_checkpoints(folder).values()))
    return model_settings(load_checkpoint(checkpoint)), run_part


def absolute(path: str | None) -> str | None:
    """Paths are recorded absolute, so a run folder's config works from any working directory."""
    return None if path is None else str(Path(path).expanduser().resolve())


def local_path(name_or_path: str) -> str:
    """A model given as a local folder is recorded absolute; a hub name stays as it is."""
    return absolute(name_or_path) if Path(name_or_path).expanduser().exists() else name_or_path


def resolve_precision(run_dir: Path, model_cfg: ModelConfig, run_cfg: RunConfig, device) -> None:
    """What --precision means on this device (run_cfg.precision_resolved, recorded in config.json):
    --precision auto trains in bf16 where the device computes it natively. A resumed run keeps
    what its config.json recorded, so it does not change precision between machines (and says so)."""
    hidden = model_cfg.ssl_width or encoder_config(model_cfg.wav2vec2).hidden_size
    now = {"training": training_precision(device, run_cfg.precision, hidden),
           "evaluation": evaluation_precision(run_cfg.precision)}
    recorded = runinfo.recorded_setting(run_dir, "run", "precision_resolved") if run_cfg.resume else None
    if recorded and recorded != now and run_cfg.precision == "auto":
        log.warning("--precision auto: the run in %s trained in %s (its config.json); on %s it would resolve to %s, "
                    "but the resumed run keeps %s (pass --overwrite to start afresh in %s)", run_dir,
                    recorded["training"], device, now["training"], recorded["training"], now["training"])
        now = recorded
    run_cfg.precision_resolved = now


def record_config(run_dir: Path, model_cfg: ModelConfig, run_cfg: RunConfig, frame) -> None:
    """config.json (the settings, data checksums and the features' text encoder, training.runinfo)
    and recipe.yaml (the resolved recipe, which `run.py --config` reads back)."""
    uses_text = MODELS[model_cfg.run].uses_text
    features = [Path(run_cfg.data_path_roberta) / f"{name}.npy" for name in frame["FileName"]] if uses_text else None
    audio = ([Path(run_cfg.data_path_ssl) / f"{name}.npy" for name in frame["FileName"]] if model_cfg.ssl_states
             else corpus.audio_paths(frame, run_cfg.data_path_audio))   # cached states stand for the audio
    runinfo.write_config(run_dir, model_cfg, run_cfg, runinfo.data_checksums(run_cfg.csv_path, audio, features),
                         recorded_encoder(run_cfg.data_path_roberta) if uses_text else None)
    write_recipe(run_dir, model_cfg, run_cfg)

