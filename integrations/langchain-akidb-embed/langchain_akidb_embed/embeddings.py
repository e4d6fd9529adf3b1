"""``AkidbEmbeddings``: LangChain's ``Embeddings`` over an akidb-embed ``EmbeddingManager``."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, InstanceOf, PrivateAttr

from akidb_embed import EmbeddingConfig, EmbeddingManager, ModelInfo
from akidb_embed.errors import ConfigError
from akidb_embed.index import manager_fingerprint

__all__ = ["AkidbEmbeddings"]

#: The ``EmbeddingConfig`` keys this class takes as fields (``[embedding]`` in akidb.toml).
CONFIG_KEYS = tuple(EmbeddingConfig.fields())


class AkidbEmbeddings(BaseModel, Embeddings):
    """akidb-embed embedding models (ONNX Runtime, MLX, python-bridge, remote, plugins).

    Setup:
        ``pip install langchain-akidb-embed "akidb-embed[onnx]"``. Without arguments the
        provider and model come from akidb-embed's configuration: the ``[embedding]``
        table of ``akidb.toml`` (or ``$AKIDB_CONFIG``) and the ``AKIDB_EMBEDDING_*``
        environment variables, as in ``EmbeddingManager.from_config``.

    Instantiate:
        .. code-block:: python

            from langchain_akidb_embed import AkidbEmbeddings

            embeddings = AkidbEmbeddings(provider="onnx", model="path/or/org/name")
            embeddings = AkidbEmbeddings()                  # akidb.toml / AKIDB_EMBEDDING_*
            embeddings = AkidbEmbeddings(config=config)     # an akidb_embed.EmbeddingConfig
            embeddings = AkidbEmbeddings(manager=manager)   # share an EmbeddingManager

    Embed:
        .. code-block:: python

            vectors = embeddings.embed_documents(["The cat sat on the mat.", "Stocks fell."])
            query = embeddings.embed_query("where is the cat?")  # the model's query prompt, if any
            query = await embeddings.aembed_query("where is the cat?")

    The ``a*`` methods run on the manager's own worker threads (its real async API), so
    they never block the event loop. Errors are akidb-embed's typed errors
    (``akidb_embed.errors``), raised as they are. After construction each configuration
    field holds the resolved value; :attr:`fingerprint` identifies the vectors for a store.

    A manager this object builds is closed by :meth:`close` (or ``with``); one passed in
    stays its owner's to close.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    manager: InstanceOf[EmbeddingManager] | None = Field(default=None, exclude=True, repr=False)
    """An existing manager to use; configuration fields may not be given with it."""
    config: InstanceOf[EmbeddingConfig] | None = Field(default=None, exclude=True, repr=False)
    """A resolved configuration; the fields given alongside override it."""
    config_file: str | None = None
    """The TOML file to read ``[embedding]`` from (default: ``$AKIDB_CONFIG``, ``./akidb.toml``)."""

    provider: str | None = None
    """Provider name (``onnx``, ``mlx``, ``python-bridge``, ``remote``, ``mock``, ...)."""
    model: str | None = None
    """Model id (``org/name[@revision]``) or local folder."""
    python_path: str | None = None
    batch_size: int | None = None
    """Texts per provider call."""
    max_length: int | None = None
    normalize: bool | None = None
    truncation: str | None = None
    """``"truncate"`` (counted) or ``"error"`` (raises ``TruncationError``)."""
    cache_dir: str | None = None
    offline: bool | None = None
    cache_size: int | None = None
    options: dict[str, Any] | None = None
    """Provider-specific keys (``[embedding.options]``)."""

    _manager: EmbeddingManager = PrivateAttr()
    _owns_manager: bool = PrivateAttr(default=False)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Built here, not in a pydantic validator: pydantic would wrap our ValueErrors
        # (ConfigError, ...) into a ValidationError, and callers should get them as they are.
        given = {key: getattr(self, key) for key in CONFIG_KEYS if getattr(self, key) is not None}
        if self.manager is not None:
            if given or self.config is not None or self.config_file is not None:
                raise ConfigError(
                    "pass either manager=... or configuration (config, config_file, "
                    f"{', '.join(sorted(given)) or 'fields'}), not both"
                )
            self._manager, self._owns_manager = self.manager, False
        else:
            if self.config is not None:
                config = self.config.replace(**given) if given else self.config
            else:
                config = EmbeddingConfig.load(self.config_file, **given)
            self._manager, self._owns_manager = EmbeddingManager.from_config(config), True
        resolved = self._manager.config
        for key in CONFIG_KEYS:
            value = getattr(resolved, key)
            self.__dict__[key] = dict(value) if key == "options" else value

    # -- what is being served --------------------------------------------------------------

    @property
    def embedding_manager(self) -> EmbeddingManager:
        """The :class:`~akidb_embed.EmbeddingManager` doing the work."""
        return self._manager

    @property
    def info(self) -> ModelInfo:
        """The provider's :class:`~akidb_embed.ModelInfo` (model, dimension, prompts, ...)."""
        return self._manager.info

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        return self._manager.dimension

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What must match for two vectors to be comparable (provider, model, revision,
        dtype, pooling, normalization, token limit, dimension), as akidb-embed's own
        index records it."""
        return manager_fingerprint(self._manager)

    # -- Embeddings ----------------------------------------------------------------------

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (with the model's ``document`` prompt, if it has one)."""
        return self._manager.embed_documents(texts).tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        """Embed a query (with the model's ``query`` prompt, if it has one)."""
        return self._manager.embed_query(text).tolist()  # type: ignore[no-any-return]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents` on the manager's worker threads."""
        return (await self._manager.aembed_documents(texts)).tolist()  # type: ignore[no-any-return]

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` on the manager's worker threads."""
        return (await self._manager.aembed_query(text)).tolist()  # type: ignore[no-any-return]

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the manager if this object built it; harmless twice."""
        if self._owns_manager:
            self._manager.close()

    def __enter__(self) -> AkidbEmbeddings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
