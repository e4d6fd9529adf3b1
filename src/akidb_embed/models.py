"""Model folders shared by the local backends (ONNX Runtime, MLX).

* :func:`resolve_model` finds a model offline-first: a local folder, then the Hugging
  Face cache, and only then (when allowed) a download of the files a backend needs.
* :func:`read_sentence_transformers_config` reads a model the way sentence-transformers
  does (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
  ``config_sentence_transformers.json``).
* :func:`load_tokenizer` loads ``tokenizer.json`` with explicit truncation and padding,
  never the settings the file happens to ship with.
* :func:`pool` turns token states into one vector per text, as sentence-transformers'
  ``Pooling`` module does, in numpy.
* :func:`available_cores` counts the CPU cores this process may actually use.

Nothing heavy is imported here at module level: ``huggingface_hub`` and ``tokenizers``
are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigValueError, ModelNotFoundError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "POOLING_MODES",
    "SENTENCE_TRANSFORMERS_FILES",
    "ResolvedModel",
    "SentenceTransformerSpec",
    "available_cores",
    "fetch_command",
    "hub_cache_dir",
    "is_offline",
    "load_tokenizer",
    "parse_model_id",
    "pool",
    "read_sentence_transformers_config",
    "resolve_model",
]

#: Files that describe a sentence-transformers model and its tokenizer (no weights).
SENTENCE_TRANSFORMERS_FILES: tuple[str, ...] = (
    "modules.json",
    "config.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*/config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

#: Pooling modes, in the order sentence-transformers concatenates them.
POOLING_MODES: tuple[str, ...] = (
    "cls",
    "max",
    "mean",
    "mean_sqrt_len_tokens",
    "weightedmean",
    "lasttoken",
)
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_POOLING_ALIASES = {"last_token": "lasttoken", "last-token": "lasttoken", "cls_token": "cls"}
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
_REPO_ID_RE = re.compile(r"^(?:[\w.-]{1,96}/)?[\w.-]{1,96}$")
_TRUE = {"1", "true", "yes", "on"}


# --- model resolution -------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are.

    Attributes
    ----------
    path:
        Folder holding the files (a local folder or a Hugging Face cache snapshot).
    model:
        The model string as given.
    repo_id:
        Hugging Face repo id, ``None`` for a local folder.
    revision:
        Commit hash of the cache snapshot, ``None`` for a local folder.
    source:
        ``"local"``, ``"cache"`` or ``"download"``.
    """

    path: Path
    model: str
    repo_id: str | None = None
    revision: str | None = None
    source: str = "local"


def is_offline(offline: bool = False) -> bool:
    """True when *offline* is set or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is true.

    The environment is read at call time, not when ``huggingface_hub`` was imported.
    """
    if offline:
        return True
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The Hugging Face hub cache folder.

    *cache_dir* if given, else ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
    ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``,
    read at call time (``huggingface_hub.constants`` freezes them at import).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(xdg).expanduser() / "huggingface" / "hub"


def parse_model_id(model: str, revision: str | None = None) -> tuple[str, str | None]:
    """Split ``org/name@revision`` into ``(repo_id, revision)``.

    Raises
    ------
    ConfigValueError
        Two different revisions are given (in *model* and in *revision*).
    """
    repo_id, sep, pinned = model.partition("@")
    if not sep:
        return model, revision
    if not pinned:
        raise ConfigValueError("model", f"{model!r} ends with '@' but names no revision", "model")
    if revision is not None and revision != pinned:
        raise ConfigValueError(
            "model",
            f"{model!r} pins revision {pinned!r} but the revision option says {revision!r}",
            "model",
        )
    return repo_id, pinned


def fetch_command(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> str:
    """The ``hf download`` command that puts *repo_id* into the cache."""
    parts = ["hf", "download", repo_id]
    if revision:
        parts += ["--revision", revision]
    if cache_dir is not None:
        parts += ["--cache-dir", str(cache_dir)]
    if allow_patterns:
        parts += ["--include", *(f"'{pattern}'" for pattern in allow_patterns)]
    return " ".join(parts)


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", ".\\"))
        or "\\" in model
        or model.count("/") > 1
        or model in (".", "..")
    )


def _missing(folder: Path, required: Sequence[str | Sequence[str]]) -> list[str]:
    """Requirements (each a pattern, or alternatives) that no file in *folder* satisfies."""
    missing = []
    for requirement in required:
        options = (requirement,) if isinstance(requirement, str) else tuple(requirement)
        if not any(_matches(folder, pattern) for pattern in options):
            missing.append(" or ".join(options))
    return missing


def _matches(folder: Path, pattern: str) -> bool:
    if not any(ch in pattern for ch in "*?["):
        return (folder / pattern).is_file()
    return any(p.is_file() for p in folder.glob(pattern))


def resolve_model(
    model: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool = False,
    allow_patterns: Sequence[str] | None = None,
    required: Sequence[str | Sequence[str]] = (),
) -> ResolvedModel:
    """Find *model* on disk, downloading it only when that is allowed and needed.

    Lookup order: *model* as a local folder; the Hugging Face cache (no network);
    a download of only *allow_patterns* through ``huggingface_hub``, unless offline.

    Parameters
    ----------
    model:
        A local folder, or a Hugging Face repo id, optionally pinned (``org/name@rev``).
    revision:
        Branch, tag or commit (same as ``@rev`` in *model*); defaults to ``main``.
    cache_dir:
        Hugging Face hub cache folder; defaults to :func:`hub_cache_dir`.
    offline:
        Never use the network. ``HF_HUB_OFFLINE=1`` has the same effect.
    allow_patterns:
        Files to download (glob patterns, as ``huggingface_hub`` takes them).
        Defaults to :data:`SENTENCE_TRANSFORMERS_FILES`.
    required:
        Files the folder must hold. Each item is a path or glob pattern, or a
        sequence of alternatives of which one must exist. A cache snapshot that
        lacks one counts as not cached.

    Raises
    ------
    ModelNotFoundError
        Not found, or found without a required file; the message lists every place
        searched and the command that would fetch the model.
    ConfigValueError
        *model* pins a revision that contradicts *revision*.
    """
    searched: list[str] = []
    local = Path(model).expanduser()
    if local.is_dir():
        folder = local.resolve()
        missing = _missing(folder, required)
        if missing:
            raise ModelNotFoundError(
                model,
                [f"local folder {folder} (missing: {', '.join(missing)})"],
                "The folder exists but lacks the files above.",
            )
        return ResolvedModel(folder, model, source="local")
    if _looks_like_path(model) or not _REPO_ID_RE.match(model.partition("@")[0]):
        raise ModelNotFoundError(
            model,
            [f"local folder {local.resolve()} (no such folder)"],
            "It is not a folder, and not a Hugging Face repo id of the form 'org/name'.",
        )
    searched.append(f"local folder {local.resolve()} (no such folder)")

    repo_id, revision = parse_model_id(model, revision)
    patterns = list(allow_patterns) if allow_patterns is not None else None
    if patterns is None:
        patterns = list(SENTENCE_TRANSFORMERS_FILES)
    cache = hub_cache_dir(cache_dir)
    command = fetch_command(
        repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns
    )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = cache / ("models--" + repo_id.replace("/", "--"))
    try:
        snapshot = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                local_files_only=True,
                allow_patterns=patterns,
            )
        )
    except LocalEntryNotFoundError as exc:
        # IncompleteSnapshotError is a LocalEntryNotFoundError too: a partial snapshot
        # is as good as none, the download below completes it.
        state = "incomplete snapshot" if "incomplete" in str(exc) else "not cached"
        searched.append(f"Hugging Face cache {where} (revision {revision or 'main'}: {state})")
    else:
        missing = _missing(snapshot, required)
        if not missing:
            return ResolvedModel(snapshot, model, repo_id, snapshot.name, "cache")
        searched.append(f"Hugging Face cache {snapshot} (missing: {', '.join(missing)})")

    if is_offline(offline):
        why = "offline = true" if offline else "HF_HUB_OFFLINE is set"
        searched.append(f"download: not attempted ({why})")
        raise ModelNotFoundError(
            model,
            searched,
            f"Fetch it while online with: {command} (then it is found offline), "
            "or pass a local folder.",
        )

    try:
        snapshot = Path(
            snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=patterns)
        )
    except Exception as exc:  # any hub or network failure becomes one typed error
        reason = " ".join(str(exc).split())
        searched.append(
            f"download from the Hugging Face hub failed ({type(exc).__name__}: {reason})"
        )
        raise ModelNotFoundError(
            model, searched, f"Check the repo id and the network, or fetch it with: {command}"
        ) from exc
    missing = _missing(snapshot, required)
    if missing:
        searched.append(f"downloaded snapshot {snapshot} (missing: {', '.join(missing)})")
        raise ModelNotFoundError(model, searched, "The repository does not ship these files.")
    return ResolvedModel(snapshot, model, repo_id, snapshot.name, "download")


# --- sentence-transformers configuration ---------------------------------------------------


@dataclass(frozen=True)
class SentenceTransformerSpec:
    """How sentence-transformers would run the model in a folder.

    Attributes
    ----------
    pooling_modes:
        Pooling modes, concatenated in this order (usually one).
    max_seq_length:
        Token limit (``sentence_bert_config.json``, else the tokenizer's limit capped at
        ``max_position_embeddings``); ``None`` when nothing says.
    do_lower_case:
        Lower-case texts before tokenizing.
    normalize:
        The pipeline ends with a ``Normalize`` module.
    prompts, default_prompt_name:
        From ``config_sentence_transformers.json``.
    dimension:
        Length of the pooled vector, ``None`` when unknown.
    include_prompt:
        Whether prompt tokens take part in pooling.
    padding_side:
        ``"right"`` or ``"left"`` (``tokenizer_config.json``).
    transformer_dir:
        Sub-folder of the Transformer module (``""`` for the model root).
    modules:
        Module types of ``modules.json`` (short names: ``Transformer``, ``Pooling``...).
    unsupported_modules:
        Modules other than Transformer, Pooling and Normalize (``Dense``...), which a
        backend must refuse rather than silently skip.
    """

    pooling_modes: tuple[str, ...] = ("mean",)
    max_seq_length: int | None = None
    do_lower_case: bool = False
    normalize: bool = False
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dimension: int | None = None
    include_prompt: bool = True
    padding_side: str = "right"
    transformer_dir: str = ""
    similarity_fn_name: str | None = None
    modules: tuple[str, ...] = ()
    unsupported_modules: tuple[str, ...] = ()

    @property
    def pooling(self) -> str:
        """The pooling modes as one string (``"mean"``, ``"cls+mean"``)."""
        return "+".join(self.pooling_modes)


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigValueError("model", f"cannot read {path}: {exc}", str(path)) from exc


def _pooling_modes(cfg: Mapping[str, Any], source: str) -> tuple[str, ...]:
    raw = cfg.get("pooling_mode")
    if raw is None:
        modes = tuple(mode for key, mode in _LEGACY_POOLING_KEYS.items() if cfg.get(key))
        return modes or ("mean",)
    items = [raw] if isinstance(raw, str) else list(raw)
    modes = tuple(_POOLING_ALIASES.get(str(m), str(m)) for m in items)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ConfigValueError(
                "pooling_mode",
                f"unknown pooling mode {mode!r}; known: {', '.join(POOLING_MODES)}",
                source,
            )
    return modes


def read_sentence_transformers_config(path: str | os.PathLike[str]) -> SentenceTransformerSpec:
    """Read the sentence-transformers configuration of the model folder *path*.

    A folder without ``modules.json`` is read as sentence-transformers reads a plain
    Hugging Face model: a Transformer followed by mean pooling, not normalized.
    """
    root = Path(path)
    modules_cfg = _read_json(root / "modules.json")
    modules: list[tuple[str, str]] = []  # (short type, folder)
    if isinstance(modules_cfg, list):
        for entry in modules_cfg:
            full = str(entry.get("type", ""))
            modules.append((full.rsplit(".", 1)[-1], str(entry.get("path", ""))))
    else:
        modules = [("Transformer", ""), ("Pooling", "")]

    transformer_dir = next((p for t, p in modules if t == "Transformer"), "")
    pooling_dir = next((p for t, p in modules if t == "Pooling"), None)
    tdir = root / transformer_dir

    sbert = _read_json(tdir / "sentence_bert_config.json") or {}
    hf_config = _read_json(tdir / "config.json") or {}
    tok_config = _read_json(tdir / "tokenizer_config.json") or {}
    st_config = _read_json(root / "config_sentence_transformers.json") or {}

    max_len = sbert.get("max_seq_length")
    if max_len is None:
        tok_max = tok_config.get("model_max_length")
        positions = hf_config.get("max_position_embeddings")
        candidates = [
            int(v)
            for v in (tok_max, positions)
            if isinstance(v, (int, float)) and 0 < v < 1_000_000
        ]
        max_len = min(candidates) if candidates else None

    pool_cfg: Mapping[str, Any] = {}
    if pooling_dir is not None:
        pool_cfg = _read_json(root / pooling_dir / "config.json") or {}
    modes = _pooling_modes(pool_cfg, str(root / (pooling_dir or "") / "config.json"))
    width = pool_cfg.get("embedding_dimension", pool_cfg.get("word_embedding_dimension"))
    if width is None:
        width = hf_config.get("hidden_size", hf_config.get("d_model"))
    dimension = int(width) * len(modes) if width else None

    prompts = st_config.get("prompts") or {}
    return SentenceTransformerSpec(
        pooling_modes=modes,
        max_seq_length=int(max_len) if max_len is not None else None,
        do_lower_case=bool(sbert.get("do_lower_case", False)),
        normalize=any(t == "Normalize" for t, _ in modules),
        prompts={str(k): str(v) for k, v in prompts.items() if v is not None},
        default_prompt_name=st_config.get("default_prompt_name") or None,
        dimension=dimension,
        include_prompt=bool(pool_cfg.get("include_prompt", True)),
        padding_side=str(tok_config.get("padding_side", "right")).lower(),
        transformer_dir=transformer_dir,
        similarity_fn_name=st_config.get("similarity_fn_name"),
        modules=tuple(t for t, _ in modules),
        unsupported_modules=tuple(t for t, _ in modules if t not in _SUPPORTED_MODULES),
    )


# --- tokenizer ----------------------------------------------------------------------------


def _pad_token(folder: Path, shipped: Mapping[str, Any] | None) -> tuple[int, str]:
    if shipped:
        return int(shipped["pad_id"]), str(shipped["pad_token"])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = _read_json(folder / name) or {}
        token = cfg.get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            return -1, token
    return 0, ""


def load_tokenizer(
    path: str | os.PathLike[str],
    max_length: int,
    *,
    do_lower_case: bool = False,
    padding: bool = True,
    padding_side: str | None = None,
) -> Tokenizer:
    """Load ``tokenizer.json`` from the folder *path*, configured explicitly.

    Whatever truncation and padding the file ships with is replaced: texts are cut at
    *max_length* tokens (special tokens included), and padded to the longest text of
    each ``encode_batch`` call when *padding* (never to a fixed length), with the
    model's pad token. ``tokenizer.padding`` then holds ``pad_id`` and ``direction``
    (a caller that pads by itself reads them, then calls ``no_padding()``);
    ``tokenizer.truncation`` shows the limit.

    Parameters
    ----------
    max_length:
        Token limit, at least 2 (room for the special tokens).
    do_lower_case:
        Lower-case before the model's own normalizer (``sentence_bert_config.json``).
    padding:
        Pad each batch to its longest text; ``False`` leaves encodings unpadded.
    padding_side:
        ``"right"`` or ``"left"``; defaults to ``tokenizer_config.json``'s, else right.
    """
    from tokenizers import Tokenizer, normalizers

    folder = Path(path)
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise ModelNotFoundError(str(folder), [f"{file} (no such file)"], "No tokenizer.json.")
    if max_length < 2:
        raise ConfigValueError("max_length", f"must be >= 2, got {max_length}", str(folder))
    tokenizer = Tokenizer.from_file(str(file))
    shipped = tokenizer.padding
    pad_id, pad_token = _pad_token(folder, shipped)
    if pad_id < 0:
        found = tokenizer.token_to_id(pad_token)
        pad_id = 0 if found is None else found
    if padding_side is None:
        cfg = _read_json(folder / "tokenizer_config.json") or {}
        padding_side = str(cfg.get("padding_side", "right"))
    side = padding_side.lower()
    if side not in ("left", "right"):
        raise ConfigValueError("padding_side", f"must be 'left' or 'right', got {side!r}", "")

    if do_lower_case:
        current = tokenizer.normalizer
        parts = [normalizers.Lowercase()] + ([current] if current is not None else [])
        tokenizer.normalizer = normalizers.Sequence(parts)
    tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
    # Pad to the longest text of each batch (length=None), never to a fixed length.
    tokenizer.enable_padding(direction=side, pad_id=pad_id, pad_token=pad_token or "[PAD]")
    if not padding:
        tokenizer.no_padding()
    return tokenizer


# --- pooling ------------------------------------------------------------------------------


def pool(
    token_embeddings: np.ndarray,
    attention_mask: np.ndarray,
    mode: str | Iterable[str] = "mean",
) -> np.ndarray:
    """Pool ``(batch, seq, dim)`` token states into ``(batch, dim * modes)`` vectors.

    Matches sentence-transformers' ``Pooling`` (padded path): ``mean``, ``cls``,
    ``max``, ``mean_sqrt_len_tokens``, ``weightedmean`` and ``lasttoken``, with left or
    right padding. Several modes are concatenated in the order given.
    """
    modes = [mode] if isinstance(mode, str) else list(mode)
    emb = np.asarray(token_embeddings)
    if emb.dtype != np.float32:
        emb = emb.astype(np.float32)
    mask = np.asarray(attention_mask)
    batch, seq, _ = emb.shape
    maskf = mask.astype(np.float32)
    out: list[np.ndarray] = []
    for raw in modes:
        m = _POOLING_ALIASES.get(raw, raw)
        if m in ("mean", "mean_sqrt_len_tokens"):
            # (b,1,s) @ (b,s,d): one batched GEMM instead of a masked (b,s,d) temporary.
            summed = np.matmul(maskf[:, None, :], emb)[:, 0, :]
            count = np.maximum(maskf.sum(axis=1, keepdims=True), 1e-9)
            out.append(summed / (count if m == "mean" else np.sqrt(count)))
        elif m == "cls":
            first = mask.argmax(axis=1)
            out.append(emb[np.arange(batch), first])
        elif m == "max":
            masked = np.where(mask[:, :, None] > 0, emb, np.float32(-np.inf))
            out.append(masked.max(axis=1))
        elif m == "weightedmean":
            start = mask.argmax(axis=1)
            weights = np.arange(1, seq + 1, dtype=np.float32)[None, :] - start[:, None]
            w = maskf * weights
            summed = np.matmul(w[:, None, :], emb)[:, 0, :]
            out.append(summed / np.maximum(w.sum(axis=1, keepdims=True), 1e-9))
        elif m == "lasttoken":
            flipped = mask[:, ::-1]
            values = flipped.max(axis=1)
            idx = np.where(values == 0, seq - 1, flipped.argmax(axis=1))
            last = seq - idx - 1
            out.append(emb[np.arange(batch), last] * maskf[np.arange(batch), last][:, None])
        else:
            raise ConfigValueError(
                "pooling_mode",
                f"unknown pooling mode {raw!r}; known: {', '.join(POOLING_MODES)}",
                "pool()",
            )
    result = out[0] if len(out) == 1 else np.concatenate(out, axis=1)
    return np.ascontiguousarray(result, dtype=np.float32)


# --- CPU cores ----------------------------------------------------------------------------


def _cgroup_quota() -> float | None:
    """CPU limit from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, ``None`` if none."""
    limits: list[float] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":
            bases = [Path("/sys/fs/cgroup")]
            files = ("cpu.max",)
        elif "cpu" in controllers.split(","):
            bases = [Path("/sys/fs/cgroup") / c for c in ("cpu,cpuacct", "cpu", "cpuacct,cpu")]
            files = ("cpu.cfs_quota_us",)
        else:
            continue
        for base in bases:
            # Walk from the process's own cgroup up to the root: any level may limit it.
            node = base / rel
            while True:
                limit = _read_limit(node, files[0])
                if limit is not None:
                    limits.append(limit)
                if node == base or base not in node.parents:
                    break
                node = node.parent
    return min(limits) if limits else None


def _read_limit(folder: Path, name: str) -> float | None:
    try:
        if name == "cpu.max":
            quota, _, period = (folder / name).read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100000)
        quota_us = int((folder / "cpu.cfs_quota_us").read_text().strip())
        period_us = int((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` counts the machine's cores, which over-subscribes threads in a
    container limited to fewer; this does not.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)
