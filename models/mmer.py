"""MMER: wav2vec2 audio frames and cached RoBERTa text embeddings fused by cross-modal
attention (SPEC section 3, steps 1-7), plus the CTC head. Loss: CE + alpha * CTC.

Checkpoint names -> plain words: self_attention_v2 = text self-attention,
vismap2text / vismap2text_v2 = audio-to-text projections, txt2img_attention = text attends
to audio, img2txt_attention = audio attends to text, txt2txt_attention = text attends to
the text-aware audio, gate = how much of the audio-aware text to let through.

The 2023 version (upstream's fuse_type 'max') pools both streams with the same method:
config.pooling for the audio frames, config.text_pooling for the fused text stream."""
import torch
from torch import nn

from .base import AudioFrames, EmotionOutput, SpeechEmotionModel
from .fusion import AttentionBlock, bert_layer_config, lengths_to_mask, masked_mean
from .objectives import masked_max

TEXT_POOLING = {"mean": masked_mean, "max": masked_max}


class MMER(SpeechEmotionModel):
    uses_text = True
    has_ctc = True

    def __init__(self, config, encoder):
        super().__init__(config, encoder)
        text_dim = config.text_dim
        layer_config = bert_layer_config(text_dim, config.dropout, config.attn_implementation)
        self.self_attention_v2 = AttentionBlock(layer_config, cross=False)
        self.vismap2text = nn.Linear(self.audio_dim, text_dim)
        self.txt2img_attention = AttentionBlock(layer_config, cross=True)
        self.vismap2text_v2 = nn.Linear(self.audio_dim, text_dim)
        self.img2txt_attention = AttentionBlock(layer_config, cross=True)
        self.txt2txt_attention = AttentionBlock(layer_config, cross=True)
        self.gate = nn.Linear(2 * text_dim, text_dim)
        self.downsample_final = nn.Linear(2 * text_dim, text_dim)
        self.classifier = nn.Linear(self.pooled_dim + text_dim, config.num_classes)
        self.add_objective_heads(self.pooled_dim + text_dim)

    def classify(self, audio: AudioFrames, text=None, text_lengths=None) -> EmotionOutput:
        if text is None or text_lengths is None:
            raise ValueError("mmer needs the transcript's RoBERTa embeddings (text, text_lengths)")
        audio_frames, frame_valid, lengths = audio.frames, audio.valid, audio.lengths
        text_tokens = self.dropout(text.to(audio_frames.dtype))          # [B, T_text, D_text]
        token_valid = lengths_to_mask(text_lengths, text_tokens.shape[1])

        # 1. text self-attention
        text_states = self.self_attention_v2(text_tokens, text_tokens, token_valid)
        # 2. text attends to audio -> [B, T_text, D_text]
        text_from_audio = self.txt2img_attention(text_states, self.vismap2text(audio_frames), frame_valid)
        # 3. audio attends to text -> [B, T_audio, D_text]
        audio_from_text = self.img2txt_attention(self.vismap2text_v2(audio_frames), text_states, token_valid)
        # 4. text attends to the text-aware audio -> [B, T_text, D_text]
        text_from_fused = self.txt2txt_attention(text_states, audio_from_text, frame_valid)
        # 5. gated fusion -> [B, T_text, 2 * D_text]
        gate = torch.sigmoid(self.gate(torch.cat([text_from_fused, text_from_audio], dim=-1)))
        fused = torch.cat([text_from_fused, gate * text_from_audio], dim=-1)
        # 6. pool both streams and classify -> [B, 4]
        text_summary = self.downsample_final(TEXT_POOLING[self.config.text_pooling](fused, token_valid))  # [B, D_text]
        audio_summary = self.pooled_audio(audio_frames, frame_valid)             # [B, D_audio]
        embedding = torch.cat([audio_summary, text_summary], dim=-1)          # [B, D_audio + D_text]
        logits = self.classifier(embedding)
        # 7. CTC head on the audio frames
        return EmotionOutput(logits=logits, frame_lengths=lengths, ctc_logits=self.ctc_head(audio),
                             embedding=embedding)
