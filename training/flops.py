"""FLOPs of a training step and of an evaluation forward as a function of the utterance's
length: exact counts (torch's FlopCounterMode, corrected for the CPU attention kernel and grouped
convolutions) on synthetic utterances of three lengths, fitted by a quadratic (FlopModel)."""
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

from dataio.audio import TARGET_SR as SR
from models import MODELS, ModelConfig, build_model


@dataclass
class FlopModel:
    """FLOPs of one utterance padded to n samples: a fixed part (the transcript's tokens),
    a linear part and a quadratic one (attention), fitted on three exact FlopCounterMode counts."""
    constant: float
    linear: float
    quadratic: float

    def __call__(self, samples) -> float:
        samples = np.asarray(samples, dtype=float)
        return self.constant + self.linear * samples + self.quadratic * samples**2

    def per_audio_second(self, sample_counts) -> float:
        """Useful FLOPs per audio second over utterances of these lengths (no padding)."""
        return float(self(sample_counts).sum() / (np.sum(sample_counts) / SR))


def synthetic_batch(model_cfg, seconds: float, device):
    """One utterance of the given length; text length and CTC target grow with it
    (about 2.5 words and 12 characters per second of speech)."""
    samples = int(seconds * SR)
    tokens, chars = 2 + int(2.5 * seconds), max(1, int(12 * seconds))
    inputs = {"input_values": torch.randn(1, samples), "sample_lengths": torch.tensor([samples]),
              "attention_mask": None, "text": None, "text_lengths": None}
    if MODELS[model_cfg.run].uses_text:
        inputs["text"], inputs["text_lengths"] = torch.randn(1, tokens, model_cfg.text_dim), torch.tensor([tokens])
    targets = (torch.randint(1, model_cfg.vocab_size, (chars,)), torch.tensor([chars]))
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return moved, torch.tensor([0], device=device), targets[0].to(device), targets[1].to(device)


def cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def conv_backward_flops(grad_out, x, weight, bias, stride, padding, dilation, transposed, output_padding,
                        groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient asked for (input, weight) costs what the forward did. torch's own formula
    ignores `groups` and counts wav2vec2's grouped positional convolution 16 times over."""
    return conv_flop_count(x, weight, grad_out, transposed) * (int(output_mask[0]) + int(output_mask[1]))


# Corrections to torch's counter: it knows only the GPU attention kernels (the CPU one computes
# the same products) and miscounts the backward of grouped convolutions.
FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward_flops,
                 torch.ops.aten.convolution_backward: conv_backward_flops}


def count_flops(model, model_cfg, seconds: float, device, train: bool) -> float:
    """Exact FLOPs of one forward (+ backward when train) on one utterance. LayerDrop is off
    while counting, so the count is that of every layer (training skips 10 % of them at random)."""
    inputs, labels, targets, target_lengths = synthetic_batch(model_cfg, seconds, device)
    model.train(train)
    config = model.wav2vec2.config
    layerdrop, config.layerdrop = config.layerdrop, 0.0
    counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
    try:
        with counter, torch.set_grad_enabled(train):
            output = model(**inputs)
            if train:
                model.loss(output, labels, targets, target_lengths)["total"].backward()
    finally:
        config.layerdrop = layerdrop
        model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def fit_flop_model(model, model_cfg, device, train: bool, lengths_s=(2.0, 4.0, 8.0)) -> FlopModel:
    """Three lengths fit the quadratic exactly when 2.5 tokens per second is a whole number."""
    samples = np.asarray(lengths_s) * SR
    counts = [count_flops(model, model_cfg, s, device, train) for s in lengths_s]
    quadratic, linear, constant = np.polyfit(samples, counts, deg=2)
    return FlopModel(float(constant), float(linear), float(quadratic))


def flop_models(model_cfg: ModelConfig, device, lengths_s=(2.0, 4.0, 8.0)) -> tuple[FlopModel, FlopModel]:
    """FLOP models of a training step and of an evaluation forward of this configuration."""
    model = build_model(model_cfg).to(device)
    return (fit_flop_model(model, model_cfg, device, True, lengths_s),
            fit_flop_model(model, model_cfg, device, False, lengths_s))
