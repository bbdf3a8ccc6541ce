"""The machine a measurement ran on: its description and load, its measured matrix-multiply peak
(the fastest of a few torch.mm of square blocks, which the benches quote achieved FLOP/s
against), and each measurement's own peak memory (RSS on a CPU, allocated memory on a GPU)."""
import contextlib
import ctypes
import gc
import os
import platform
import resource
import time

import torch

from utils.device import native_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- the machine
def load() -> float:
    """Other processes' demand on the CPU: timings on a shared machine are only as good as this."""
    return round(os.getloadavg()[0], 2)


def describe_machine(device: torch.device) -> dict:
    """CPU, cores, threads, library versions and the load average now (plus the GPU's name)."""
    import transformers  # only for its version: a bench that describes its machine has loaded it anyway

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or "unknown")
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "device": str(device), "load_average_1min_at_start": load()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work, so that a timer stopped after it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the matmul peak
def default_size(device: torch.device) -> int:
    """Blocks large enough to reach the peak: 2048 on a CPU (17 GFLOP per product, a fraction
    of a second), 8192 on a GPU (1.1 TFLOP, about a millisecond on an H100)."""
    return 8192 if device.type == "cuda" else 2048


def matmul_tflops(device: torch.device, precision: str, size: int, repeats: int = 5,
                  min_seconds: float = 0.05) -> float:
    """TFLOP/s of the fastest of `repeats` timings of size x size x size products (2 n^3 FLOPs
    each), after a warm-up; each timing chains enough products to last about `min_seconds`, so
    that a GPU's launch latency does not count."""
    dtype = DTYPES[precision]
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: kernel selection, thread pool start
    synchronize(device)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    synchronize(device)
    chained = max(1, min(1000, int(min_seconds / max(time.perf_counter() - start, 1e-6))))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(chained):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / chained)
    return 2 * size**3 / best / 1e12


def matmul_peak(device: torch.device, size: int | None = None, precisions=None, repeats: int = 5) -> dict:
    """{precision: TFLOP/s} for fp32 and, where the device multiplies it natively (or when asked),
    bf16; with the block size, threads and device. fp32 is multiplied as torch is set to
    (torch.get_float32_matmul_precision(): "highest" by default, true fp32; "high" lets a GPU use
    TF32)."""
    size = size or default_size(device)
    precisions = precisions or (["fp32", "bf16"] if native_bf16(device) else ["fp32"])
    peak = {"device": str(device), "size": size, "threads": torch.get_num_threads(), "repeats": repeats,
            "tflops": {p: matmul_tflops(device, p, size, repeats) for p in precisions}}
    if device.type == "cuda":
        peak["gpu"] = torch.cuda.get_device_name(device)
    peak["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return peak


def describe_matmul_peak(peak: dict) -> str:
    """matmul_peak's figures as one line."""
    rates = ", ".join(f"{p} {t:.3g} TFLOP/s" for p, t in peak["tflops"].items())
    where = peak.get("gpu", f"{peak['threads']} thread(s)")
    return (f"measured matmul peak (torch.mm {peak['size']}x{peak['size']}, fastest of {peak['repeats']}, {where}): "
            f"{rates}")


# ---------------------------------------------------------------- peak memory of one measurement
def release_memory(device: torch.device) -> None:
    """Hand the previous measurement's freed memory back to the OS, so that the next one's peak
    RSS is its own (glibc keeps freed heap otherwise, and the process's RSS only grows)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each measurement gets its own peak.
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")


def peak_memory_mb(device: torch.device) -> float:
    """The peak since reset_peak_memory: GPU memory allocated, or this process's resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process lifetime peak
