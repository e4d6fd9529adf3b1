"""Import cost of ``akidb_embed`` over numpy, and which heavy modules it pulls (none).

    python benchmarks/bench_import.py [--runs 15]

Each run is a fresh interpreter; the table shows the median wall time of
``import numpy`` alone and of ``import numpy, akidb_embed``, and their difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

HEAVY = ("onnxruntime", "tokenizers", "mlx", "torch", "huggingface_hub", "transformers")
PROBE = """
import sys, time, json
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
{extra}
t2 = time.perf_counter()
print(json.dumps({{"numpy": t1 - t0, "extra": t2 - t1, "modules": sorted(sys.modules)}}))
"""


def sample(extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(extra=extra)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    numpy_ms, ours_ms = [], []
    modules: list[str] = []
    for _ in range(args.runs):
        s = sample("import akidb_embed")
        numpy_ms.append(s["numpy"] * 1000)
        ours_ms.append(s["extra"] * 1000)
        modules = s["modules"]
    heavy = sorted({m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY})
    print(f"{'measure':<38} {'median ms':>10}")
    print(f"{'import numpy':<38} {statistics.median(numpy_ms):>10.1f}")
    print(f"{'import akidb_embed (after numpy)':<38} {statistics.median(ours_ms):>10.1f}")
    print(
        f"{'ratio akidb_embed / numpy':<38} "
        f"{statistics.median(ours_ms) / statistics.median(numpy_ms):>10.2f}"
    )
    print(
        f"heavy modules imported: {', '.join(heavy) or 'none'}  ({args.runs} runs, "
        f"python {sys.version.split()[0]})"
    )


if __name__ == "__main__":
    main()
