"""Devices, precision and seeds, all from flags (nothing assumes CUDA)."""
import contextlib
import functools
import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA when present, else CPU; otherwise any torch device string (cpu, cuda, cuda:1)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


# --precision auto trains a speech encoder this wide or wider in bf16 on a CPU with native bf16:
# wav2vec2-base (768) trains 2.1x faster there, the demo's tiny encoders (32) 1.2x slower, and
# the demo's UA moved by less than its seed-to-seed spread (docs/PERFORMANCE.md, "bf16").
BF16_CPU_MIN_HIDDEN = 512


def training_precision(device: torch.device, precision: str, hidden_size: int) -> str:
    """What training's forward pass runs in, 'bf16' (autocast) or 'fp32'. auto: bf16 where the
    device multiplies bf16 natively (a GPU; a CPU with AVX512-BF16/AMX for a speech encoder of
    hidden size >= BF16_CPU_MIN_HIDDEN), else fp32."""
    if precision != "auto":
        return precision
    if not native_bf16(device):
        return "fp32"
    return "bf16" if device.type != "cpu" or hidden_size >= BF16_CPU_MIN_HIDDEN else "fp32"


def evaluation_precision(precision: str) -> str:
    """What evaluation and prediction run in: fp32 unless --precision bf16 was asked for, so
    that every metric and probability is upstream's (the fixture's, to 1e-4) by default."""
    return "bf16" if precision == "bf16" else "fp32"


@functools.cache  # a property of the hardware, asked on every training micro-batch
def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 in hardware: a CUDA GPU of compute capability 8.0 or
    later (Ampere on), or a CPU with AVX512-BF16 or AMX (oneDNN's bf16 kernels; about 4.5x
    the fp32 matmul rate on the 2-core EPYC of docs/PERFORMANCE.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    return False


def check_precision(device: torch.device, precision: str) -> None:
    """Say so when bf16 was asked for on hardware that only emulates it (slower than fp32)."""
    if precision == "bf16" and not native_bf16(device):
        log.warning("precision bf16 on %s: this device has no native bf16 arithmetic (a CPU needs AVX512-BF16 "
                    "or AMX), so bf16 is emulated and slower than fp32; use --precision fp32", device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for a resolved precision 'bf16' (training_precision, evaluation_precision);
    plain fp32 otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
