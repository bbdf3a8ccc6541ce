"""unimodal_baseline: wav2vec2 -> mean over valid frames -> Linear(D_audio, 4). Loss: CE."""
from torch import nn

from models.base import EmotionOutput, SpeechEmotionModel


class UnimodalBaseline(SpeechEmotionModel):
    def __init__(self, config, encoder):
        super().__init__(config, encoder)
        self.classifier = nn.Linear(self.audio_dim, config.num_classes)

    def forward(self, input_values, sample_lengths, attention_mask=None, text=None, text_lengths=None,
                conv_features=None):
        audio_frames, frame_valid, lengths = self.encode_audio(input_values, sample_lengths, attention_mask,
                                                                   conv_features)
        logits = self.classifier(self.pooled_audio(audio_frames, frame_valid))  # [B, 4]
        return EmotionOutput(logits=logits, frame_lengths=lengths, ctc_logits=self.ctc_head(audio_frames))
