"""``akidb-embed mlx-quantize``: write an MLX-quantized copy of a model folder."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``mlx-quantize`` command to the ``akidb-embed`` parser."""
    p = subparsers.add_parser(
        "mlx-quantize",
        help="quantize a model folder with MLX (mlx-community checkpoint layout)",
        description="Quantize a full-precision safetensors model folder with MLX and save "
        "it as mlx-community does (config.json 'quantization' table, scales and biases).",
    )
    p.add_argument("source", help="model folder (config.json + model.safetensors)")
    p.add_argument("out", help="folder to create")
    p.add_argument("--bits", type=int, default=4, help="bits per weight (default 4)")
    p.add_argument("--group-size", type=int, default=64, dest="group_size")
    p.add_argument("--mode", default="affine", help="affine (default), mxfp4, mxfp8, nvfp4")
    p.add_argument(
        "--dtype",
        default="float16",
        choices=["float32", "float16", "bfloat16"],
        help="precision of scales, biases and unquantized tensors (default float16)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from ._convert import quantize_checkpoint

    out = quantize_checkpoint(
        args.source,
        args.out,
        bits=args.bits,
        group_size=args.group_size,
        mode=args.mode,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    print(f"wrote {out} ({args.bits}-bit, group size {args.group_size}, {args.mode})")
    return 0
