"""``akidb-embed embed-corpus``: entry point ``embed-corpus`` of group ``akidb_embed.commands``.

Importing this module is cheap (no pyarrow, no ray): the command's work is imported when
it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``embed-corpus`` command."""
    from ..cli import add_config_arguments

    p = subparsers.add_parser(
        "embed-corpus",
        help="embed a corpus into a resumable Parquet dataset",
        description=(
            "Embed every text of INPUT (a .txt file with one text a line, a .jsonl or "
            ".parquet file, a folder of them, or a glob) into OUT, a folder of Parquet "
            "shards (id, text, other fields, sha256, embedding) with a manifest. Run it "
            "again after a crash or a kill: finished shards are kept, the rest is "
            "embedded, and the result equals an uninterrupted run. A changed input or "
            "another model is refused, never mixed in."
        ),
    )
    p.add_argument("input", metavar="INPUT", help="file, folder or glob of .txt/.jsonl/.parquet")
    p.add_argument("--out", required=True, metavar="OUT", help="output folder")
    p.add_argument(
        "--engine",
        default="local",
        help="local (this process, default) or ray (pip install 'akidb-embed[ray]')",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray started here)",
    )
    p.add_argument("--id-field", metavar="ID", help="field or column of ids (default: id if any)")
    p.add_argument("--text-field", metavar="TEXT", default="text", help="field or column of texts")
    p.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="a null, non-string or empty text stops the run (raise), or is left out "
        "and listed in OUT/_rejects/ (skip)",
    )
    p.add_argument(
        "--shard-size", type=int, default=10_000, metavar="N", help="rows per shard (10000)"
    )
    ray = p.add_argument_group("ray engine")
    ray.add_argument("--concurrency", type=int, metavar="N", help="embedding actors (default 1)")
    ray.add_argument("--num-cpus", type=float, metavar="N", help="CPUs per actor (= its threads)")
    ray.add_argument("--num-gpus", type=float, metavar="N", help="GPUs per actor")
    ray.add_argument(
        "--ray-batch-size", type=int, metavar="N", help="rows per actor call (default 256)"
    )
    p.add_argument("--threads", type=int, metavar="N", help="local engine: provider threads")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_embed_corpus)


def _cmd_embed_corpus(args: argparse.Namespace) -> int:
    from ..cli import UsageError, _load_config
    from . import embed_corpus

    options: dict[str, Any] = {}
    ray_flags = {
        "address": args.ray_address,
        "concurrency": args.concurrency,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "batch_size": args.ray_batch_size,
    }
    if args.engine == "local":
        given = [k for k, v in ray_flags.items() if v is not None]
        if given:
            flag = "--ray-address" if given[0] == "address" else f"--{given[0].replace('_', '-')}"
            raise UsageError(f"{flag} is an option of --engine ray")
        if args.threads is not None:
            options["threads"] = args.threads
    else:
        if args.threads is not None:
            raise UsageError("--threads is an option of --engine local (ray: --num-cpus)")
        options = {k: v for k, v in ray_flags.items() if v is not None}
    report = embed_corpus(
        args.input,
        args.out,
        config=_load_config(args),
        engine=args.engine,
        text_field=args.text_field,
        id_field=args.id_field,
        shard_size=args.shard_size,
        on_error=args.on_error,
        progress=not args.quiet,
        **options,
    )
    if not args.quiet:
        resumed = f", {report.resumed} kept from an earlier run" if report.resumed else ""
        rejected = f"; {report.rejected} rejected (see {report.out}/_rejects/)"
        print(
            f"embedded {report.rows} texts into {report.out} in {report.seconds:.1f} s: "
            f"{report.shards} shards{resumed}{rejected if report.rejected else ''}",
            file=sys.stderr,
        )
    return 0
