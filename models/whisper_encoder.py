"""Whisper's encoder as a speech encoder like wav2vec 2.0: raw 16 kHz samples in, frames out.
It computes Whisper's log-mel spectrogram in torch exactly as transformers' WhisperFeatureExtractor
does (each utterance padded with silence to 30 s, its own maximum for the dynamic-range clamp),
runs transformers' WhisperEncoder and keeps the frames that cover the audio, so an utterance in a
zero-padded batch gets what it gets alone. Longer than 30 s: only the first 30 s are heard."""
import logging

import torch
from torch import nn
from transformers import WhisperConfig, WhisperForAudioClassification, WhisperModel
from transformers.audio_utils import mel_filter_bank
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import WhisperEncoder

log = logging.getLogger(__name__)

# WhisperFeatureExtractor's settings, fixed by every released Whisper (they are not in its config).
SAMPLING_RATE = 16000
N_FFT = 400             # 25 ms windows
HOP_LENGTH = 160        # 10 ms between mel frames
CONV_STRIDE = 2         # conv2 halves the mel frames: 20 ms encoder frames
DYNAMIC_RANGE = 8.0     # log10 units below the utterance's maximum that are kept


class WhisperLoadError(OSError):
    """A checkpoint whose Whisper encoder weights are not all there."""


class WhisperFrontEnd:
    """The two convolutions over the log-mel spectrogram, Whisper's counterpart of wav2vec 2.0's
    convolutional feature encoder, and the fixed sinusoidal positions added to their output
    (OpenAI's Whisper keeps them as a buffer): what prepare_encoder freezes. A view of the
    encoder's own modules (not a submodule, so the state dict keeps transformers' names)."""

    def __init__(self, encoder: WhisperEncoder):
        self.convolutions = (encoder.conv1, encoder.conv2)
        self.positions = encoder.embed_positions

    def parameters(self):
        for module in (*self.convolutions, self.positions):
            yield from module.parameters()

    def _freeze_parameters(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad = False


class WhisperSpeechEncoder(nn.Module):
    """encoder(input_values [B, samples] at 16 kHz, attention_mask=None, output_hidden_states=False)
    -> .last_hidden_state [B, T, D] and .hidden_states (embedding output, then each layer), T the
    batch's longest covering frame count (_get_feat_extract_output_lengths); as Wav2Vec2Model.
    Its parameters are transformers' WhisperEncoder's, under `encoder.`."""

    def __init__(self, config: WhisperConfig, encoder: WhisperEncoder | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else WhisperEncoder(config)
        # 30 s for every released Whisper: the encoder's positions x conv stride x hop
        self.max_samples = config.max_source_positions * CONV_STRIDE * HOP_LENGTH
        filters = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=config.num_mel_bins,
                                  min_frequency=0.0, max_frequency=8000.0, sampling_rate=SAMPLING_RATE,
                                  norm="slaney", mel_scale="slaney")
        # buffers, not parameters, and not saved: they follow from the config
        self.register_buffer("mel_filters", torch.from_numpy(filters).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self._said_long = False

    @classmethod
    def from_pretrained(cls, name_or_path: str, config: WhisperConfig, attn_implementation: str = "sdpa"):
        """The encoder of a Whisper checkpoint (WhisperModel or WhisperForConditionalGeneration):
        loaded through WhisperForAudioClassification, which holds only the encoder, so the decoder's
        weights are never built; every encoder weight must be in the checkpoint."""
        from transformers.utils import logging as hf_logging
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its classifier head is new by design; missing encoder keys are checked below
        try:
            model, info = WhisperForAudioClassification.from_pretrained(
                name_or_path, config=config, attn_implementation=attn_implementation, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        missing = [key for key in info["missing_keys"] if key.startswith("encoder.")]
        if missing:
            raise WhisperLoadError(f"{name_or_path}: the checkpoint lacks {len(missing)} Whisper encoder weight(s) "
                                   f"({', '.join(missing[:3])}...); pass a Whisper model folder or hub name")
        return cls(config, model.encoder)

    # ------------------------------------------------------------ what the rest of the code reads
    @property
    def feature_extractor(self) -> WhisperFrontEnd:
        return WhisperFrontEnd(self.encoder)

    def _get_feat_extract_output_lengths(self, sample_lengths):
        """Encoder frames that cover `sample_lengths` samples: transformers' own counts, mel frames
        ceil(samples / 160) (WhisperFeatureExtractor's attention mask) through the stride-2
        convolution ((mel - 1) // 2 + 1), at most the encoder's 1500 (30 s): ceil(samples / 320)."""
        mel_frames = (sample_lengths + HOP_LENGTH - 1) // HOP_LENGTH
        frames = self.encoder._get_feat_extract_output_lengths(mel_frames)
        if isinstance(frames, torch.Tensor):
            return frames.clamp(max=self.config.max_source_positions)
        return min(frames, self.config.max_source_positions)

    def activation_checkpointing_enable(self, *args, **kwargs):
        return self.encoder.activation_checkpointing_enable(*args, **kwargs)

    def gradient_checkpointing_enable(self, *args, **kwargs):
        return self.encoder.gradient_checkpointing_enable(*args, **kwargs)

    # ------------------------------------------------------------ forward
    def log_mel(self, waves: torch.Tensor) -> torch.Tensor:
        """[B, max_samples] float32 -> [B, mel bins, 3000]: WhisperFeatureExtractor's
        _torch_extract_fbank_features (dither 0), each utterance clamped at its own maximum - 8."""
        stft = torch.stft(waves, N_FFT, HOP_LENGTH, window=self.window.float(), return_complex=True)  # fp32 under .half()
        power = stft[..., :-1].abs() ** 2                                 # [B, freq, 3000]
        log_spec = torch.clamp(self.mel_filters.float().T @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - DYNAMIC_RANGE)
        return (log_spec + 4.0) / 4.0

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False, **_) -> BaseModelOutput:
        lengths = (attention_mask.sum(dim=-1) if attention_mask is not None
                   else torch.full(input_values.shape[:1], input_values.shape[1], device=input_values.device))
        waves = input_values.float()
        if attention_mask is not None:   # padding is silence, as WhisperFeatureExtractor pads
            waves = waves * attention_mask.to(waves.dtype)
        if waves.shape[1] > self.max_samples:
            self._say_long(waves.shape[1])
            waves = waves[:, :self.max_samples]
        waves = nn.functional.pad(waves, (0, self.max_samples - waves.shape[1]))  # [B, 480000]
        with torch.autocast(waves.device.type, enabled=False):  # the spectrogram in fp32, as the extractor's
            mel = self.log_mel(waves)                                            # [B, 80, 3000]
        if self.training:
            mel_valid = torch.arange(mel.shape[-1], device=mel.device) < (lengths[:, None] + HOP_LENGTH - 1) // HOP_LENGTH
            mel = WhisperModel._mask_input_features(self, mel, attention_mask=mel_valid)  # SpecAugment, if on
        outputs = self.encoder(mel.to(self.encoder.conv1.weight.dtype), output_hidden_states=output_hidden_states)
        keep = int(self._get_feat_extract_output_lengths(lengths).max())  # frames covering the longest utterance
        hidden_states = outputs.hidden_states
        if hidden_states is not None:
            hidden_states = tuple(state[:, :keep] for state in hidden_states)
        return BaseModelOutput(last_hidden_state=outputs.last_hidden_state[:, :keep], hidden_states=hidden_states)

    def _say_long(self, samples: int) -> None:
        if not self._said_long:
            self._said_long = True
            log.warning("Whisper hears at most %.0f s: input of %.1f s cut to its first %.0f s (said once)",
                        self.max_samples / SAMPLING_RATE, samples / SAMPLING_RATE, self.max_samples / SAMPLING_RATE)
