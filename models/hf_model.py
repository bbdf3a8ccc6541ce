"""A trained run as a Hugging Face model, for a folder that loads without this repository
(export.py --format hf): MMERConfig is its config.json, MMERForEmotionRecognition its
model.safetensors. The folder carries this package's files, so
`transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)` builds the same
networks run.py trained (variants.py), around a speech encoder rebuilt from its saved
configuration, one per fold (several: an ensemble averaging their probabilities, and the
attributes of a run trained with --task dimensional or both)."""
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .base import ModelConfig
from .checkpoint import scaled_probabilities
from .dimensional import denormalise_attributes
from .encoders import sample_counts, speech_encoder_from_config
from .errors import MMERError
from .variants import build_model

# The folder's layout: a loader refuses a folder of a newer format (its code would read it wrongly).
# 2: the folds' calibration temperatures, which format-1 code would ignore; a folder without them is 1.
# 3: a run trained with --task dimensional, whose untrained classifier older code would report.
FORMAT_VERSION = 3


class FolderFormatError(MMERError, ValueError):
    """A model folder this code cannot read; the message says which and what to do."""


class MMERConfig(PretrainedConfig):
    """config.json: the variant's settings (our ModelConfig), the speech encoder's configuration,
    the folds it holds, the text encoder mmer's transcripts go through and the speech recogniser
    recorded for transcripts not given (its Hub name, or `bundled`: the folder's subfolder holding
    it); id2label are the run's classes in the order of its probabilities. calibration_temperatures:
    each fold's T (run.py --calibrate dev), its probabilities being softmax(logits / T); None: all 1.
    model_config's task, attributes and attribute_range: whether the folds predict attributes, their
    names in output order and the corpus's rating scale [low, high] they are given on (`attributes`,
    `attribute_range`). mmer_format: the folder's layout (default: the lowest that holds these settings)."""
    model_type = "mmer"

    def __init__(self, model_config: dict | None = None, speech_encoder: dict | None = None, folds=None,
                 text_encoder: dict | None = None, asr: dict | None = None, mmer_format: int | None = None,
                 calibration_temperatures: list | None = None, **kwargs):
        if calibration_temperatures is not None and (
                len(calibration_temperatures) != len(folds or [])
                or not all(isinstance(t, (int, float)) and 0 < t < float("inf") for t in calibration_temperatures)):
            raise FolderFormatError(f"config.json: calibration_temperatures {calibration_temperatures!r} are not one "
                                    "positive number per fold; export the run again with export.py --format hf")
        if mmer_format is None:
            mmer_format = 3 if (model_config or {}).get("task") == "dimensional" else \
                2 if any(t != 1.0 for t in calibration_temperatures or []) else 1
        if int(mmer_format) > FORMAT_VERSION:
            raise FolderFormatError(
                f"this model folder is of MMER format {mmer_format}, newer than this code reads ({FORMAT_VERSION}); "
                "update the MMER repository (git pull), or load the folder with trust_remote_code=True so that "
                "the code it carries reads it")
        self.model_config = dict(model_config or {})
        self.speech_encoder = dict(speech_encoder or {})
        self.folds = [str(fold) for fold in (folds or [])]
        self.text_encoder = text_encoder
        self.asr = asr
        self.mmer_format = int(mmer_format)
        self.calibration_temperatures = (None if calibration_temperatures is None else
                                         [float(t) for t in calibration_temperatures])
        super().__init__(**kwargs)

    @property
    def variant(self) -> str:
        return self.model_config.get("run", "mmer")

    @property
    def task(self) -> str:
        return self.model_config.get("task", "categorical")

    @property
    def attributes(self) -> list | None:
        """The attributes the folds predict, in output order; None: no attribute head."""
        return list(self.model_config["attributes"]) if self.task != "categorical" else None

    @property
    def attribute_range(self) -> list | None:
        return list(self.model_config["attribute_range"]) if self.task != "categorical" else None


@dataclass
class EmotionRecognitionOutput(ModelOutput):
    """probabilities: the folds' softmax averaged [B, classes]; logits: their log, so a softmax
    gives them back; ctc_logits and frame_lengths: the first fold's CTC head (cai_sota, mmer);
    attributes: the folds' attributes averaged [B, A], in the corpus's units (config.attributes,
    config.attribute_range), None without an attribute head. Under task dimensional the
    probabilities are an untrained classifier's: report the attributes only."""
    logits: torch.FloatTensor | None = None
    probabilities: torch.FloatTensor | None = None
    ctc_logits: torch.FloatTensor | None = None
    frame_lengths: torch.LongTensor | None = None
    attributes: torch.FloatTensor | None = None


class MMERForEmotionRecognition(PreTrainedModel):
    """The run's fold models (`folds`, each a models.variants network with its own encoder)."""
    config_class = MMERConfig
    base_model_prefix = "mmer"
    main_input_name = "input_values"

    def __init__(self, config: MMERConfig):
        super().__init__(config)
        fields = ModelConfig.__dataclass_fields__
        settings = ModelConfig(**{key: value for key, value in config.model_config.items() if key in fields})
        if not config.folds or not config.speech_encoder:
            raise FolderFormatError("config.json names no folds or no speech encoder; export the run again with "
                                    "export.py --format hf")
        self.folds = nn.ModuleList(
            build_model(settings, encoder=speech_encoder_from_config(config.speech_encoder,
                                                                     settings.attn_implementation))
            for _ in config.folds)
        for fold, temperature in zip(self.folds, config.calibration_temperatures or [1.0] * len(self.folds)):
            fold.calibration_temperature = temperature   # what the Python API divides this fold's logits by too
        self.post_init()

    def _init_weights(self, module):
        """Every weight comes from model.safetensors (or, exporting, from the run's checkpoints)."""

    @property
    def uses_text(self) -> bool:
        return self.folds[0].uses_text

    @property
    def has_ctc(self) -> bool:
        return self.folds[0].has_ctc

    def forward(self, input_values, attention_mask=None, text_features=None, text_lengths=None,
                **_) -> EmotionRecognitionOutput:
        """Normalised 16 kHz audio [B, samples] (and its attention mask where the feature extractor
        gives one; without it every row is a whole recording), for mmer the transcript's text
        features [B, T_text, D_text] and their lengths [B] -> the folds' averaged probabilities (each
        fold's softmax(logits / T) with its calibration temperature)."""
        sample_lengths = sample_counts(input_values, attention_mask)
        probabilities, attributes, first = 0, 0, None
        for fold in self.folds:
            audio = fold.encode_audio(input_values, sample_lengths, attention_mask)
            output = fold.classify(audio, text_features, text_lengths)
            probabilities = probabilities + scaled_probabilities(output.logits, fold.calibration_temperature)
            if self.config.attributes is not None:   # the head reads the classifier's input, as forward does
                attributes = attributes + denormalise_attributes(fold.attribute_head(output.embedding),
                                                                 *self.config.attribute_range)
            first = output if first is None else first
        probabilities = probabilities / len(self.folds)
        return EmotionRecognitionOutput(logits=probabilities.log(), probabilities=probabilities,
                                        ctc_logits=first.ctc_logits, frame_lengths=first.frame_lengths,
                                        attributes=attributes / len(self.folds)
                                        if self.config.attributes is not None else None)

    def ctc(self, input_values, attention_mask=None):
        """The first fold's CTC head over the audio: (ctc_logits [B, T_audio, vocab], frame_lengths
        [B]); what mmer reads as its transcript where none is given, as the Python API does."""
        if not self.has_ctc:
            raise FolderFormatError(f"a {self.config.variant} model has no CTC head")
        audio = self.folds[0].encode_audio(input_values, sample_counts(input_values, attention_mask), attention_mask)
        return self.folds[0].ctc_head(audio), audio.lengths
