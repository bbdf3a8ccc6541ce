"""A run's settings and recipes, with no torch: RunConfig (paths, folds, schedule, devices), the
model flags, and the recipe files (recipes/*/*.yaml). run.py reads its flags against these before
torch loads, so a nonsense flag is refused in a second; training/config.py resolves them."""
from dataclasses import dataclass
from pathlib import Path

import yaml

from models.errors import MMERError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_FILE = "recipe.yaml"   # the resolved recipe in a run folder: `run.py --config <run>/recipe.yaml` re-runs it
# run settings that are no flags, or that say where and how, not what, a run computes
NOT_IN_RECIPE = ("preset", "config", "world_size", "precision_resolved", "resume", "overwrite")
AUDIO_VIEWS = ("speed", "tempo", "noise", "mask")   # --audio_view (training/views.py makes them)
CALIBRATION = ("none", "dev")   # --calibrate
SAMPLERS = ("default", "balanced")   # --sampler
SELECT_METRICS = ("ua", "macro_f1", "ccc_mean")   # --select_metric


class ConfigError(MMERError):
    """Flags or a recipe that contradict each other or the files they name (run.py: exit code 2)."""


@dataclass
class RunConfig:
    """Run settings (paths, folds, schedule, devices); written beside the results."""
    csv_path: str = "data/iemocap.csv"
    data_path_audio: str = "data/audio"
    data_path_roberta: str = "data/roberta"
    data_path_ssl: str | None = None   # cached hidden states of a frozen encoder (data_prep/extract_ssl.py)
    roberta: str | None = None   # the text encoder of the features (their encoder.json), else roberta-base
    save_path: str = "runs"
    sessions: list | None = None  # the folds to run (IEMOCAP: its sessions); None: all the table's
    label_map: str | None = None
    fold_by: str | None = None
    kfold: int | None = None
    dev_split: str = "utterance"
    epochs: int = 100
    batch_size: int = 2
    accum_grad: int = 4
    learning_rate: float = 1e-5
    dev_fraction: float = 0.1
    select_on: str = "dev"
    calibrate: str = "none"   # dev: one temperature per fold fitted on its dev split (training/calibration.py)
    seed: int = 0
    seeds: list | None = None    # run.py --seeds: the configuration once per seed, into <run>/seed_<s>/
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None   # torch CPU threads; None: the CPUs this process may use
    num_workers: int = 0
    cache_dir: str | None = None   # the decoded audio and gathered features; None: <save_path>/cache
    batching: str = "bucket"
    gradient_checkpointing: bool = False
    compile: bool = False
    cache_conv_features: bool | None = None   # None: on where it changes nothing (see conv_cache_setting)
    eval_batch_size: int = 8
    eval_only: bool = False
    checkpoint_dir: str | None = None
    cross_corpus: bool = False
    preset: str | None = None
    config: str | None = None     # the recipe file read (--config)
    audio_view: str = "speed,noise,mask"
    data_path_audio_view: str | None = None
    data_path_roberta_view: str | None = None
    ctc_text: str = "clean"
    attribute_range: str | None = None   # the attributes' rating scale "low,high"; None: read from the table
    sampler: str = "default"      # balanced: class-balanced training batches (dataio/sampling.py)
    select_metric: str = "ua"     # the dev metric that picks the best epoch: ua, macro_f1 or ccc_mean
    utterance_types: str = "all"
    resume: bool = False
    overwrite: bool = False
    max_skipped_fraction: float = 0.05
    max_steps: int | None = None
    limit_utterances: int | None = None
    log_every: int = 25
    tensorboard: bool = False
    world_size: int = 1   # processes training each fold (torchrun), not a flag; the global batch depends on it
    precision_resolved: dict | None = None  # what --precision became on this device: {"training": ..., "evaluation": ...}


# Model settings given by flags (defaults: ModelConfig's). Under --eval_only the checkpoints'
# recorded values win (they hold that model); of a contradicting flag only these are honoured:
MODEL_FLAGS = ("run", "wav2vec2", "alpha", "ctc_reduction", "dropout", "specaugment", "pooling", "text_pooling",
               "audio_dropout", "supcon_weight", "aug_weight", "temperature", "contrastive", "max_audio_samples",
               "layer_weights", "probe_layer_norm", "probe_head", "task", "dim_loss", "dim_weight", "loss",
               "focal_gamma", "class_weights", "soft_targets")
EVAL_OVERRIDABLE = ("wav2vec2", "max_audio_samples")
# run settings whose default, under --eval_only, is what the run being re-evaluated recorded
RECORDED_RUN = ("csv_path", "data_path_audio", "data_path_roberta", "roberta", "data_path_ssl")
# --run probe's optimisation where no flag or recipe gives it: EmoBox's downstream recipe (docs/BASELINES.md)
PROBE_DEFAULTS = {"epochs": 100, "batch_size": 32, "accum_grad": 1, "learning_rate": 1e-4}
# EmoBox trains its downstream with Adam: AdamW without weight decay is the same update
PROBE_WEIGHT_DECAY = 0.0
PROBE_MODEL_DEFAULTS = {"dropout": 0.0}   # EmoBox's head has no dropout
# run settings that define each fold's test set: under --eval_only they are the recorded run's,
# and a flag that contradicts the record is refused (--cross_corpus scores other data instead)
RECORDED_FOLDS = ("kfold", "seed", "fold_by", "utterance_types", "label_map", "limit_utterances")


# ---------------------------------------------------------------- recipes
def presets() -> list[str]:
    """The papers' recipes by name: recipes/<corpus>/<name>.yaml."""
    return sorted(path.stem for path in RECIPES.glob("*/*.yaml"))


def recipe_file(preset: str | None, config: str | None) -> Path | None:
    """The recipe --preset or --config names (None: neither); both at once are refused."""
    if preset and config:
        raise ConfigError(f"--preset {preset} and --config {config} both give a whole configuration; give one")
    if preset:
        return next(iter(sorted(RECIPES.glob(f"*/{preset}.yaml"))))
    if config and not Path(config).is_file():
        raise ConfigError(f"--config {config}: no such file; give a recipe (YAML), e.g. recipes/iemocap/mmer2023.yaml "
                          f"or a run folder's {RECIPE_FILE}")
    return Path(config) if config else None


def read_recipe(path: Path) -> dict:
    """A recipe file: a YAML mapping of flag names (without dashes) to values."""
    try:
        recipe = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not YAML ({err}); a recipe maps flag names to values, e.g. `alpha: 0.1`") from err
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of flag names to values, not a {type(recipe).__name__}")
    return recipe
