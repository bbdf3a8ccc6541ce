"""This machine's measured matrix-multiply peak: the fastest of a few torch.mm of square blocks
in fp32 and in bf16, at the thread count the bench trains with. The throughput bench quotes
each training row's achieved FLOP/s as a fraction of it (MFU against the hardware at hand
rather than a datasheet).

    python bench/matmul_peak.py                    # CPU, 2048 x 2048 blocks
    python bench/matmul_peak.py --device cuda      # GPU, 8192 x 8192 blocks"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from utils.device import native_bf16, resolve_device  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def default_size(device: torch.device) -> int:
    """Blocks large enough to reach the peak: 2048 on a CPU (17 GFLOP per product, a fraction
    of a second), 8192 on a GPU (1.1 TFLOP, about a millisecond on an H100)."""
    return 8192 if device.type == "cuda" else 2048


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def describe(peak: dict) -> str:
    rates = ", ".join(f"{p} {t:.3g} TFLOP/s" for p, t in peak["tflops"].items())
    where = peak.get("gpu", f"{peak['threads']} thread(s)")
    return (f"measured matmul peak (torch.mm {peak['size']}x{peak['size']}, fastest of {peak['repeats']}, {where}): "
            f"{rates}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--size", type=int, help="block size (default 2048 on CPU, 8192 on GPU)")
    p.add_argument("--threads", type=int, help="torch threads on CPU (default: torch's own)")
    p.add_argument("--precisions", nargs="+", choices=list(DTYPES),
                   help="default: fp32, and bf16 where the device multiplies it natively")
    p.add_argument("--json", type=Path, help="also write the figures to this json file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak(resolve_device(args.device), args.size, args.precisions)
    print(describe(peak))
    for precision, tflops in peak["tflops"].items():
        print(f"peak_tflops_{precision}: {tflops:.4g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(peak, indent=1) + "\n")
    return peak


if __name__ == "__main__":
    main()
