"""unimodal_baseline: wav2vec2 -> mean over valid frames -> Linear(D_audio, 4). Loss: CE."""
from torch import nn

from .base import AudioFrames, EmotionOutput, SpeechEmotionModel


class UnimodalBaseline(SpeechEmotionModel):
    def __init__(self, config, encoder):
        super().__init__(config, encoder)
        self.classifier = nn.Linear(self.pooled_dim, config.num_classes)
        self.add_objective_heads(self.pooled_dim)

    def classify(self, audio: AudioFrames, text=None, text_lengths=None) -> EmotionOutput:
        pooled = self.pooled_audio(audio.frames, audio.valid)          # [B, D_audio]
        logits = self.classifier(pooled)                               # [B, classes]
        return EmotionOutput(logits=logits, frame_lengths=audio.lengths, ctc_logits=self.ctc_head(audio),
                             embedding=pooled)
