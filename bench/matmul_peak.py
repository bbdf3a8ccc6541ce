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

import torch  # noqa: E402

from utils.device import resolve_device  # noqa: E402
# The measurement is utils/machine.py's, which bench/train_throughput.py runs too; this is its command line.
from utils.machine import DTYPES, describe_matmul_peak, matmul_peak  # noqa: E402


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
    print(describe_matmul_peak(peak))
    for precision, tflops in peak["tflops"].items():
        print(f"peak_tflops_{precision}: {tflops:.4g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(peak, indent=1) + "\n")
    return peak


if __name__ == "__main__":
    main()
