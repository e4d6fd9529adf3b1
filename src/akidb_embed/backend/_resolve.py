"""Finding a model offline-first: a local folder, the Hugging Face cache, a download.

``huggingface_hub`` is imported only inside :func:`resolve_model`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigValueError, ModelNotFoundError

__all__ = [
    "SENTENCE_TRANSFORMERS_FILES",
    "ResolvedModel",
    "fetch_command",
    "hub_cache_dir",
    "is_offline",
    "parse_model_id",
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
_REPO_ID_RE = re.compile(r"^(?:[\w.-]{1,96}/)?[\w.-]{1,96}$")
_TRUE = {"1", "true", "yes", "on"}


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
