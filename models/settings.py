"""The model settings and their choices, with no torch: run.py checks its flags against them
before torch loads (a refusal in a second, not after the import), and every module of the
networks reads them from here."""
from dataclasses import asdict, dataclass

VARIANTS = ("mmer", "cai_sota", "unimodal_baseline", "probe")   # --run: variants.MODELS has one class each
FINE_TUNED = VARIANTS[:3]   # the paper's three, which fine-tune the encoder (the probe reads cached states only)
TEMPERATURE = 0.07        # upstream's self.temperature for both losses
CONTRASTIVE_FORMS = ("upstream", "normalised")
POOLING_METHODS = ("max", "mean", "attention", "statistics")
TEXT_POOLING_METHODS = ("mean", "max")

UPSTREAM_MICRO_BATCH = 2  # upstream summed the CTC loss over micro-batches of 2 utterances
CTC_REDUCTIONS = ("sum", "batch_sum", "mean")
AUDIO_DROPOUT = ("all", "ctc")
# frozen-encoder baselines on cached hidden states (models/probe.py, --data_path_ssl)
PROBE_HEADS = ("superb", "linear")   # EmoBox's (and emotion2vec's) Linear-ReLU-mean-Linear; a linear probe: mean-Linear
PROBE_HIDDEN = 256                   # the superb head's width (EmoBox)
UNKNOWN_ENCODER = "unknown"          # the encoder of cached states whose folder names none (another tool's)
# dimensional emotion and imbalanced classes (models/dimensional.py, issue 30)
TASKS = ("categorical", "dimensional", "both")   # --task: the classes, the attributes, or both heads trained
ATTRIBUTES = ("arousal", "valence", "dominance")   # a table's attribute columns, in the head's order
DIM_LOSSES = ("ccc", "mse")          # --dim_loss: 1 - mean CCC (the MSP-Podcast baseline's), or mean MSE
CATEGORICAL_LOSSES = ("ce", "focal")   # --loss
CLASS_WEIGHTS = ("none", "balanced", "sqrt")   # --class_weights (training/imbalance.py)


def layer_weights_choice(value: str) -> str:
    """--layer_weights: learnable (s3prl's softmax-weighted sum), last, or a hidden state's index K."""
    if value in ("learnable", "last") or value.isdigit():
        return value
    raise ValueError(f"--layer_weights {value!r}: give learnable, last or a hidden state's index (0 = the "
                     "embedding output)")


@dataclass
class ModelConfig:
    """Model settings; saved in every checkpoint so it can be rebuilt without flags."""
    run: str = "mmer"
    wav2vec2: str = "facebook/wav2vec2-base"
    alpha: float = 0.1                # weight of the auxiliary CTC loss
    ctc_reduction: str = "sum"        # sum: (2 / B) x upstream's sum; batch_sum: upstream's sum; mean: / target length
    dropout: float = 0.1              # on the encoder's last hidden state, the text embeddings and the fusion layers
    num_classes: int = 4
    labels: dict | None = None        # the label set (labels.LabelSet.to_dict); None: IEMOCAP's 4 classes
    vocab_size: int = 32              # CTC symbols, <pad>=0 is the blank
    text_dim: int = 768               # RoBERTa hidden size (mmer only)
    specaugment: bool = False
    attn_implementation: str = "sdpa"
    # the 2023 configuration (run.py --preset mmer2023); these defaults are the 2022 one
    pooling: str = "mean"             # of the audio frames: mean, max, attention, statistics
    text_pooling: str = "mean"        # of mmer's fused text stream: mean, max (upstream 2023's fuse_type pools both)
    audio_dropout: str = "all"        # all: dropout before fusion, pooling and CTC (2022); ctc: the CTC head's input only
    supcon_weight: float = 0.0        # self-contrastive loss over the batch's labels
    aug_weight: float = 0.0           # contrastive loss between each utterance and its augmented view
    temperature: float = TEMPERATURE  # of both contrastive losses
    contrastive: str = "upstream"     # upstream: upstream's losses as they are; normalised: SupCon / InfoNCE (ours)
    max_audio_samples: int | None = None  # audio cut to this many samples (2023: 210,000, about 13 s)
    # cached hidden states of a frozen encoder (--data_path_ssl): the learnable weighted sum of
    # them replaces the fine-tuned encoder; None: the encoder runs on the audio
    ssl_states: int | None = None     # hidden states per frame in the cache
    ssl_width: int | None = None      # their width
    ssl_layers: list | None = None    # which of the encoder's hidden states they are (0 = embedding output)
    layer_weights: str = "learnable"  # learnable (softmax over learnable weights), last, or a state's index K
    probe_layer_norm: bool = False    # layer norm of each state before the weighted sum (s3prl's option)
    probe_head: str = "superb"        # --run probe's head: superb (Linear-ReLU-mean-Linear) or linear (mean-Linear)
    # dimensional emotion and imbalanced classes; these defaults train the classes alone, as before
    task: str = "categorical"         # categorical, dimensional (attributes only: the classifier is not trained), both
    attributes: list | None = None    # the attribute columns the head predicts, in its output order
    attribute_range: list | None = None   # [low, high]: the corpus's rating scale, mapped to [0, 1] for training
    dim_loss: str = "ccc"             # ccc: 1 - mean CCC over the attributes; mse: their mean MSE
    dim_weight: float = 1.0           # weight of the attribute loss beside the categorical one (task both)
    loss: str = "ce"                  # the categorical loss: ce, or focal (Lin et al. 2017)
    focal_gamma: float = 2.0          # focal's gamma; 0 is cross-entropy
    class_weights: str = "none"       # none, balanced (N / (K n_k)) or sqrt, from each fold's training labels
    soft_targets: bool = False        # train the categorical head on the table's votes_<class> fractions

    def to_dict(self) -> dict:
        return asdict(self)
