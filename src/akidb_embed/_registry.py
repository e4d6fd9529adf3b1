"""Provider registry: entry points of group ``akidb_embed.providers`` plus in-process
registrations.

Nothing is imported until a provider is asked for: listing the entry points reads
distribution metadata only, once per process (:func:`refresh_providers` reads it
again). A provider factory may declare ``requires`` (module names);
:func:`available_providers` checks them with ``importlib.util.find_spec`` so it can
say *why* a provider is not loadable without importing heavy modules.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import (
    AkidbEmbedError,
    DuplicateProviderError,
    ProviderError,
    ProviderNotInstalledError,
    UnknownProviderError,
)

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from ._config import EmbeddingConfig
    from ._types import EmbeddingProvider

__all__ = [
    "ENTRY_POINT_GROUP",
    "ProviderFactory",
    "ProviderStatus",
    "available_providers",
    "create_provider",
    "get_provider_class",
    "get_provider_factory",
    "providers",
    "refresh_providers",
    "register_provider",
    "unregister_provider",
]

ENTRY_POINT_GROUP = "akidb_embed.providers"

ProviderFactory = Callable[["EmbeddingConfig"], "EmbeddingProvider"]

# Providers that live in their own distributions: how to install them.
_INSTALL_HINTS: dict[str, str] = {
    "onnx": "pip install 'akidb-embed[onnx]'",
    "mlx": 'pip install "akidb-embed[mlx]"',
    "openvino": "pip install 'akidb-embed[openvino]'",
    # Built in, but its HTTP client is an extra.
    "remote": "pip install 'akidb-embed[remote]'",
}

_registered: dict[str, ProviderFactory] = {}
# The entry points of ENTRY_POINT_GROUP, read on first use; None until then.
_discovered: dict[str, list[EntryPoint]] | None = None
_lock = threading.RLock()


@dataclass(frozen=True)
class ProviderStatus:
    """One row of :func:`available_providers`."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    loadable: bool
    reason: str | None = None
    source: str = "entry point"


def _describe(factory: object) -> str:
    module = getattr(factory, "__module__", None) or "?"
    qualname = getattr(factory, "__qualname__", None) or repr(factory)
    return f"{module}:{qualname}"


def _ep_label(ep: EntryPoint) -> str:
    dist = ep.dist.name if ep.dist is not None else "unknown distribution"
    return f"{ep.value} (from {dist})"


def _read_group(group: str) -> dict[str, list[EntryPoint]]:
    """Entry points of *group* by name; a name claimed twice keeps both, in order."""
    # importlib.metadata costs ~13 ms to import: only pay it when a group is read.
    from importlib.metadata import entry_points

    found: dict[str, list[EntryPoint]] = {}
    seen: set[tuple[str, str, str]] = set()
    for ep in entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else ""
        # The same distribution can be visible twice on sys.path (editable + site).
        key = (ep.name, ep.value, dist)
        if key in seen:
            continue
        seen.add(key)
        found.setdefault(ep.name, []).append(ep)
    return found


def _entry_points() -> dict[str, list[EntryPoint]]:
    global _discovered
    with _lock:
        if _discovered is None:
            _discovered = _read_group(ENTRY_POINT_GROUP)
        return _discovered


def refresh_providers() -> None:
    """Read the ``akidb_embed.providers`` entry points again.

    They are read once per process, on first use; call this after installing or
    removing a provider distribution in a running process (and in tests that lay out
    distributions on ``sys.path``). In-process registrations are kept.
    """
    global _discovered
    # New dist-info folders on sys.path are invisible to the path finders' caches.
    importlib.invalidate_caches()
    found = _read_group(ENTRY_POINT_GROUP)
    with _lock:
        _discovered = found


def _install_hint(name: str, ep: EntryPoint | None) -> str:
    if name in _INSTALL_HINTS:
        return _INSTALL_HINTS[name]
    if ep is not None and ep.dist is not None:
        return f"pip install --upgrade '{ep.dist.name}'"
    return f"pip install the distribution that provides {name!r}"


def _missing_requirements(factory: object) -> list[str]:
    requires: Iterable[str] = getattr(factory, "requires", ()) or ()
    missing = []
    for module in requires:
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        except (ImportError, ValueError):
            missing.append(module)
    return missing


def register_provider(name: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Register *factory* under *name* for this process (notebooks, tests).

    *factory* is called as ``factory(config)``; a provider class whose ``__init__``
    takes the config qualifies. A name already registered, or already claimed by an
    installed entry point, raises :class:`DuplicateProviderError` unless *replace*.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"provider name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"provider factory for {name!r} must be callable, got {factory!r}")
    with _lock:
        if not replace:
            if name in _registered:
                raise DuplicateProviderError(name, _describe(_registered[name]), _describe(factory))
            eps = _entry_points().get(name)
            if eps:
                raise DuplicateProviderError(name, _ep_label(eps[0]), _describe(factory))
        _registered[name] = factory


def unregister_provider(name: str) -> None:
    """Remove an in-process registration; unknown names raise ``KeyError``."""
    with _lock:
        del _registered[name]


def _snapshot() -> dict[str, ProviderFactory]:
    with _lock:
        return dict(_registered)


def _restore(snapshot: dict[str, ProviderFactory]) -> None:
    with _lock:
        _registered.clear()
        _registered.update(snapshot)


def _save_state() -> tuple[dict[str, ProviderFactory], dict[str, list[EntryPoint]] | None]:
    """Registrations and discovered entry points, for the pytest plugin's isolation."""
    with _lock:
        return dict(_registered), _discovered


def _restore_state(
    state: tuple[dict[str, ProviderFactory], dict[str, list[EntryPoint]] | None],
) -> None:
    global _discovered
    registered, discovered = state
    with _lock:
        _restore(registered)
        _discovered = discovered


def providers() -> Mapping[str, str]:
    """A read-only snapshot of the known provider names, without importing any of them.

    Each name maps to where it comes from: ``"module:attr (from distribution)"`` for an
    entry point (several, joined by ``"; "``, when distributions collide) or
    ``"module:qualname (registered)"`` for :func:`register_provider`. Use
    :func:`available_providers` to learn which of them load.
    """
    known = {name: "; ".join(_ep_label(ep) for ep in eps) for name, eps in _entry_points().items()}
    known.update({name: f"{_describe(f)} (registered)" for name, f in _snapshot().items()})
    return MappingProxyType(dict(sorted(known.items())))


def get_provider_factory(name: str) -> ProviderFactory:
    """Return the factory registered under *name*, importing its module if needed.

    The factory is called as ``factory(config)``: usually a provider class, but any
    callable qualifies; :func:`create_provider` calls it for you.

    Raises
    ------
    UnknownProviderError
        Nothing is registered under *name* (the message lists what is).
    ProviderNotInstalledError
        The provider is known but its module or dependencies are missing.
    DuplicateProviderError
        Two installed distributions claim *name*.
    ProviderError
        The plugin's module fails to import for another reason.
    """
    with _lock:
        if name in _registered:
            return _registered[name]
    eps = _entry_points()
    candidates = eps.get(name, [])
    if not candidates:
        if name in _INSTALL_HINTS:
            raise ProviderNotInstalledError(name, _INSTALL_HINTS[name], "not installed")
        raise UnknownProviderError(name, sorted(set(eps) | set(_snapshot())))
    if len(candidates) > 1:
        raise DuplicateProviderError(name, _ep_label(candidates[0]), _ep_label(candidates[1]))
    ep = candidates[0]
    try:
        factory = ep.load()
    except ImportError as exc:
        raise ProviderNotInstalledError(name, _install_hint(name, ep), str(exc)) from exc
    except Exception as exc:  # a broken plugin must say which plugin broke
        raise ProviderError(name, f"entry point {_ep_label(ep)} failed to load: {exc!r}") from exc
    missing = _missing_requirements(factory)
    if missing:
        raise ProviderNotInstalledError(
            name, _install_hint(name, ep), f"missing module(s): {', '.join(missing)}"
        )
    return factory  # type: ignore[no-any-return]


def get_provider_class(name: str) -> ProviderFactory:
    """Deprecated alias of :func:`get_provider_factory`; emits :class:`DeprecationWarning`.

    The name said "class", but a provider is built by any callable taking the config:
    call :func:`get_provider_factory` instead. This alias will be removed in a future
    release.
    """
    warnings.warn(
        "get_provider_class() is deprecated; use get_provider_factory()",
        DeprecationWarning,
        stacklevel=2,
    )
    return get_provider_factory(name)


def available_providers() -> dict[str, ProviderStatus]:
    """Every discovered provider: name -> distribution, version, loadable or why not.

    A plugin that fails to import, lacks a dependency or collides with another name is
    reported here with ``loadable=False`` and never hides the others.
    """
    result: dict[str, ProviderStatus] = {}
    for name, eps in sorted(_entry_points().items()):
        ep = eps[0]
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if len(eps) > 1:
            reason = str(DuplicateProviderError(name, _ep_label(eps[0]), _ep_label(eps[1])))
            result[name] = ProviderStatus(name, ep.value, dist, version, False, reason)
            continue
        try:
            get_provider_factory(name)
        except AkidbEmbedError as exc:
            result[name] = ProviderStatus(name, ep.value, dist, version, False, str(exc))
        else:
            result[name] = ProviderStatus(name, ep.value, dist, version, True)
    for name, factory in sorted(_snapshot().items()):
        missing = _missing_requirements(factory)
        result[name] = ProviderStatus(
            name,
            _describe(factory),
            None,
            None,
            not missing,
            f"missing module(s): {', '.join(missing)}" if missing else None,
            source="registered",
        )
    return result


def create_provider(config: EmbeddingConfig) -> EmbeddingProvider:
    """Build the provider *config* selects, calling its factory with *config*."""
    factory = get_provider_factory(config.provider)
    try:
        provider: Any = factory(config)
    except AkidbEmbedError:
        raise
    except ImportError as exc:
        raise ProviderNotInstalledError(
            config.provider, _install_hint(config.provider, None), str(exc)
        ) from exc
    except Exception as exc:  # name the provider whose start-up failed
        raise ProviderError(config.provider, f"failed to start: {exc}") from exc
    if not callable(getattr(provider, "embed_batch", None)):
        raise ProviderError(
            config.provider,
            f"factory returned {type(provider).__name__}, which has no embed_batch()",
        )
    return provider  # type: ignore[no-any-return]
