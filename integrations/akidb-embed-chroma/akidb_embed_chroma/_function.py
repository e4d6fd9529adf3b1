"""``AkidbEmbeddingFunction``: Chroma's embedding-function protocol over an ``EmbeddingManager``."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from akidb_embed import EmbeddingConfig, EmbeddingManager, ModelInfo
from akidb_embed.errors import ConfigError, FingerprintMismatchError, InvalidRequestError
from akidb_embed.index import manager_fingerprint

__all__ = ["FINGERPRINT_KEY", "NAME", "AkidbEmbeddingFunction", "recorded_fingerprint"]

#: The name Chroma records for this embedding function (``name()``).
NAME = "akidb_embed"
#: The collection metadata key holding the fingerprint (JSON) of the vectors it stores.
FINGERPRINT_KEY = "akidb_embed:fingerprint"
# Option names never written into a collection's configuration: the rebuilt function reads
# them from the environment again (the remote provider's $AKIDB_REMOTE_API_KEY).
_SECRET_WORDS = ("key", "token", "secret", "password", "auth")


@register_embedding_function
class AkidbEmbeddingFunction(EmbeddingFunction[Documents]):
    """A Chroma embedding function backed by any akidb-embed provider.

    ``pip install akidb-embed-chroma "akidb-embed[onnx]"``

    .. code-block:: python

        import chromadb
        from akidb_embed_chroma import AkidbEmbeddingFunction

        ef = AkidbEmbeddingFunction(provider="onnx", model="path/or/org/name")
        client = chromadb.PersistentClient(path="chroma")
        docs = ef.get_or_create_collection(client, "docs")   # records / checks the fingerprint
        docs.add(ids=["1", "2"], documents=["The cat sat on the mat.", "Stocks fell."])
        docs.query(query_texts=["where is the cat?"], n_results=1)

    Build it around an :class:`~akidb_embed.EmbeddingManager`, from an
    :class:`~akidb_embed.EmbeddingConfig` (keyword arguments override it), or from keyword
    arguments and akidb-embed's configuration (``akidb.toml``, ``AKIDB_EMBEDDING_*``) as
    ``EmbeddingManager.from_config`` does. Documents get the model's ``document`` prompt,
    queries (``embed_query``, used by ``collection.query``) its ``query`` prompt, where the
    model defines them. Errors are akidb-embed's typed errors, raised unchanged.

    Chroma persists :meth:`get_config` (the configuration and the vectors' fingerprint) with
    every collection created with this function, and rebuilds the function from it when a
    collection is opened without one (import ``akidb_embed_chroma`` first, which registers
    it under the name ``akidb_embed``). Chroma itself compares only the function's *name* on
    reopening; :meth:`get_collection`, :meth:`get_or_create_collection` and
    :meth:`check_collection` compare the fingerprint too and raise
    :class:`~akidb_embed.errors.FingerprintMismatchError` when the vectors would come from
    another model, pooling, normalization or dimension.
    """

    # Functions rebuilt from a stored configuration, by configuration: Chroma rebuilds one
    # each time it reads a collection's configuration, and a model is too heavy for that.
    _rebuilt: ClassVar[dict[str, AkidbEmbeddingFunction]] = {}
    _rebuilt_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        manager: EmbeddingManager | None = None,
        *,
        config: EmbeddingConfig | None = None,
        config_file: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> None:
        if manager is not None:
            if config is not None or config_file is not None or overrides:
                raise ConfigError("pass either a manager or configuration, not both")
            self._manager, self._owns_manager = manager, False
        else:
            if config is not None:
                config = config.replace(**overrides) if overrides else config
            else:
                config = EmbeddingConfig.load(config_file, **overrides)
            self._manager, self._owns_manager = EmbeddingManager.from_config(config), True
        self._fingerprint = manager_fingerprint(self._manager)
        # Set when Chroma rebuilt this function from a collection's configuration and the
        # model it loaded is not the one the collection's vectors came from.
        self._refusal: FingerprintMismatchError | None = None

    # -- what is being served --------------------------------------------------------------

    @property
    def embedding_manager(self) -> EmbeddingManager:
        """The :class:`~akidb_embed.EmbeddingManager` doing the work."""
        return self._manager

    @property
    def info(self) -> ModelInfo:
        """The provider's :class:`~akidb_embed.ModelInfo`."""
        return self._manager.info

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        return self._manager.dimension

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What must match for two vectors to be comparable, as akidb-embed's index records it."""
        return dict(self._fingerprint)

    # -- the embedding-function protocol --------------------------------------------------

    def __call__(self, input: Documents) -> Embeddings:
        """Embed documents; one float32 vector per text."""
        return list(self._manager.embed_documents(self._texts(input)))

    def embed_query(self, input: Documents) -> Embeddings:
        """Embed queries (``collection.query(query_texts=...)``) with the query prompt."""
        return list(self._manager.embed_queries(self._texts(input)))

    @staticmethod
    def name() -> str:
        return NAME

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        # Inner product ranks like cosine only on unit vectors.
        return ["cosine", "l2", "ip"] if self._fingerprint["normalized"] else ["cosine", "l2"]

    def max_tokens(self) -> int | None:
        """The model's token limit, ``None`` when it has none."""
        return self._manager.info.max_tokens

    def get_config(self) -> dict[str, Any]:
        """What Chroma stores with a collection: the configuration that rebuilds this function
        (secrets left out) and the fingerprint of the vectors it makes."""
        config = self._manager.config.to_dict()
        config["options"] = {
            key: value
            for key, value in config["options"].items()
            if not any(word in key.lower() for word in _SECRET_WORDS)
        }
        return {"config": config, "fingerprint": dict(self._fingerprint)}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> AkidbEmbeddingFunction:
        """Rebuild the function a collection was created with (Chroma calls this).

        If the model it loads now is not the one the stored fingerprint names, the function
        refuses to embed: its calls raise :class:`FingerprintMismatchError` (raised there,
        not here, so that Chroma does not turn it into a plain ``ValueError``).
        """
        AkidbEmbeddingFunction.validate_config(config)
        key = json.dumps(config, sort_keys=True)
        with AkidbEmbeddingFunction._rebuilt_lock:
            function = AkidbEmbeddingFunction._rebuilt.get(key)
            if function is None or function.embedding_manager.closed:
                function = AkidbEmbeddingFunction(
                    config=EmbeddingConfig().replace(**config["config"])
                )
                function._refusal = _mismatch(
                    config["fingerprint"], function.fingerprint, "embed into this collection"
                )
                AkidbEmbeddingFunction._rebuilt[key] = function
        return function

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not isinstance(config, Mapping) or not all(
            isinstance(config.get(k), Mapping) for k in ("config", "fingerprint")
        ):
            raise ConfigError(
                f"an {NAME} embedding-function config is a mapping with 'config' and "
                f"'fingerprint' mappings, got {config!r:.200}"
            )

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        """Refuse to swap a collection's function for one that makes other vectors."""
        error = _mismatch(
            old_config.get("fingerprint"), new_config.get("fingerprint"), "change the function"
        )
        if error is not None:
            raise error

    # -- collections -----------------------------------------------------------------------

    def create_collection(
        self, client: Any, name: str, *, metadata: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """``client.create_collection`` with this function, the fingerprint in the metadata."""
        return client.create_collection(
            name, metadata=self._with_fingerprint(metadata), embedding_function=self, **kwargs
        )

    def get_or_create_collection(
        self, client: Any, name: str, *, metadata: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """``client.get_or_create_collection`` with this function; an existing collection's
        fingerprint is checked (:class:`FingerprintMismatchError`)."""
        collection = client.get_or_create_collection(
            name, metadata=self._with_fingerprint(metadata), embedding_function=self, **kwargs
        )
        self.check_collection(collection)
        return collection

    def get_collection(self, client: Any, name: str, **kwargs: Any) -> Any:
        """``client.get_collection`` with this function, its fingerprint checked."""
        collection = client.get_collection(name, embedding_function=self, **kwargs)
        self.check_collection(collection)
        return collection

    def check_collection(self, collection: Any) -> None:
        """Raise :class:`FingerprintMismatchError` when *collection* holds vectors of another
        embedding (recorded in its metadata, or in the configuration Chroma persisted for
        it); a collection that records none passes."""
        error = _mismatch(
            recorded_fingerprint(collection),
            self._fingerprint,
            f"use collection {collection.name!r} with this embedding function",
        )
        if error is not None:
            raise error

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the manager if this function built it; harmless twice."""
        if self._owns_manager:
            self._manager.close()

    def __enter__(self) -> AkidbEmbeddingFunction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AkidbEmbeddingFunction({self._manager!r})"

    # -- helpers ---------------------------------------------------------------------------

    def _texts(self, input: Documents) -> list[str]:
        if self._refusal is not None:
            raise self._refusal
        if isinstance(input, list) and not input:
            # Chroma's protocol has no empty result: its own check would raise a bare ValueError.
            raise InvalidRequestError("Chroma embeds at least one text; got an empty list")
        return input  # the manager checks that it is a list of str

    def _with_fingerprint(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        return {**(metadata or {}), FINGERPRINT_KEY: json.dumps(self._fingerprint, sort_keys=True)}


def recorded_fingerprint(collection: Any) -> dict[str, Any] | None:
    """The fingerprint of the vectors *collection* holds: from its metadata
    (:data:`FINGERPRINT_KEY`), else from the configuration Chroma persisted for an
    ``akidb_embed`` function; ``None`` when neither records one."""
    raw = (collection.metadata or {}).get(FINGERPRINT_KEY)
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    stored = (collection.configuration_json or {}).get("embedding_function") or {}
    if stored.get("name") == NAME and isinstance(stored.get("config"), Mapping):
        fingerprint = stored["config"].get("fingerprint")
        if isinstance(fingerprint, Mapping):
            return dict(fingerprint)
    return None


def _describe(fingerprint: Mapping[str, Any]) -> str:
    head = f"{fingerprint.get('provider')}:{fingerprint.get('model')}"
    if fingerprint.get("revision"):
        head += f"@{fingerprint['revision']}"
    rest = ", ".join(
        f"{k}={fingerprint[k]!r}"
        for k in sorted(fingerprint)
        if k not in ("provider", "model", "revision")
    )
    return f"{head} ({rest})"


def _mismatch(
    recorded: Mapping[str, Any] | None, ours: Mapping[str, Any] | None, action: str
) -> FingerprintMismatchError | None:
    """The error naming both fingerprints when they differ, ``None`` when they agree or one
    is unknown."""
    if recorded is None or ours is None or dict(recorded) == dict(ours):
        return None
    keys = sorted(set(recorded) | set(ours))
    diff = "; ".join(
        f"{k}: {recorded.get(k)!r} vs {ours.get(k)!r}"
        for k in keys
        if recorded.get(k) != ours.get(k)
    )
    return FingerprintMismatchError(
        f"cannot {action}: the collection holds vectors from {_describe(recorded)}, but this "
        f"embedding function makes vectors from {_describe(ours)} (differs in {diff}). "
        "Vectors of different embeddings are not comparable: use the collection's model, or "
        "embed the documents again into a new collection."
    )
