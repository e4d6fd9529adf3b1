"""``akidb-embed export``: the subcommand this distribution adds to the CLI.

Importing this module is cheap; torch and onnx are imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``export MODEL --out DIR [--optimize] [--quantize int8]`` to *subparsers*."""
    parser = subparsers.add_parser(
        "export",
        help="export a safetensors Hugging Face model to an ONNX folder for the onnx provider",
        description=(
            "Export a sentence-transformers / Hugging Face model (safetensors) to a folder the "
            "onnx provider loads directly: onnx/model.onnx, the tokenizer and the "
            "sentence-transformers configs. Prints a parity report against the fp32 PyTorch "
            "model. Needs PyTorch: pip install torch==2.13.0 "
            "--index-url https://download.pytorch.org/whl/cpu && "
            "pip install 'akidb-embed-onnx[export]'."
        ),
    )
    parser.add_argument("model", help="local folder or Hugging Face repo id (org/name[@revision])")
    parser.add_argument("--out", required=True, help="destination folder")
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="fuse attention, LayerNorm and bias + GELU (onnxruntime's transformer optimizer)",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="dynamic int8 quantization (per-channel weights, smoothed activations; "
        "implies --optimize)",
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit of the repo")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face hub cache folder")
    parser.add_argument("--offline", action="store_true", help="never use the network")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        help="fail below this parity (default 0.9999 for fp32, 0.98 for int8)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .export import export_model

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = export_model(
        args.model,
        args.out,
        optimize=args.optimize,
        quantize=args.quantize,
        revision=args.revision,
        cache_dir=args.cache_dir,
        offline=args.offline,
        overwrite=args.force,
        opset=args.opset,
        min_cosine=args.min_cosine,
        log=log,
    )
    print(out)
    return 0
