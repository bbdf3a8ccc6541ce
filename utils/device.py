"""Devices, precision and seeds, all from flags (nothing assumes CUDA)."""
import contextlib
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


def uses_bf16(device: torch.device, precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


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
    if uses_bf16(device, precision) and not native_bf16(device):
        log.warning("precision bf16 on %s: this device has no native bf16 arithmetic (a CPU needs AVX512-BF16 "
                    "or AMX), so bf16 is emulated and slower than fp32; use --precision fp32", device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked (auto: on GPU only); plain fp32 otherwise."""
    if uses_bf16(device, precision):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
