"""``AkidbEmbedding``: LlamaIndex's ``BaseEmbedding`` over an akidb-embed ``EmbeddingManager``."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from akidb_embed import EmbeddingConfig, EmbeddingManager, ModelInfo
from akidb_embed.errors import ConfigError, ConfigTypeError
from akidb_embed.index import manager_fingerprint

__all__ = ["AkidbEmbedding"]

#: ``EmbeddingConfig`` keys that are fields under their own name; ``model`` is
#: LlamaIndex's ``model_name`` and ``batch_size`` its ``embed_batch_size``.
CONFIG_KEYS = tuple(k for k in EmbeddingConfig.fields() if k not in ("model", "batch_size"))


class AkidbEmbedding(BaseEmbedding):
    """akidb-embed embedding models (ONNX Runtime, MLX, python-bridge, remote, plugins).

    ``pip install llama-index-embeddings-akidb-embed "akidb-embed[onnx]"``

    .. code-block:: python

        from llama_index.embeddings.akidb_embed import AkidbEmbedding

        embed_model = AkidbEmbedding(provider="onnx", model_name="path/or/org/name")
        embed_model = AkidbEmbedding()                 # akidb.toml / AKIDB_EMBEDDING_*
        embed_model = AkidbEmbedding(config=config)    # an akidb_embed.EmbeddingConfig
        embed_model = AkidbEmbedding(manager=manager)  # share an EmbeddingManager

    Without arguments the provider and model come from akidb-embed's configuration (the
    ``[embedding]`` table of ``akidb.toml`` and the ``AKIDB_EMBEDDING_*`` variables), as in
    ``EmbeddingManager.from_config``; ``model_name`` is its ``model`` and
    ``embed_batch_size`` its ``batch_size`` (texts per provider call, default the
    configuration's). After construction every field holds the resolved value, and
    :attr:`dimension` the vector length.

    Queries get the model's ``query`` prompt and texts its ``document`` prompt, where the
    model defines them. The async methods run on the manager's own worker threads.
    Errors are akidb-embed's typed errors (``akidb_embed.errors``), raised unchanged.
    A manager this object builds is closed by :meth:`close`; one passed in stays open.
    """

    model_config = ConfigDict(
        protected_namespaces=("pydantic_model_",), arbitrary_types_allowed=True, extra="forbid"
    )

    model_name: str | None = Field(  # type: ignore[assignment]
        default=None, description="akidb-embed's model: repo id or local folder."
    )
    embed_batch_size: int | None = Field(  # type: ignore[assignment]
        default=None, gt=0, le=2048, description="Texts per provider call (akidb's batch_size)."
    )
    # An arbitrary type: pydantic checks it with isinstance.
    manager: EmbeddingManager | None = Field(default=None, exclude=True, repr=False)
    # Any: pydantic would rebuild a dataclass field from its fields; checked below.
    config: Any = Field(default=None, exclude=True, repr=False)
    config_file: str | None = Field(default=None, description="TOML file with [embedding].")
    provider: str | None = Field(default=None, description="akidb-embed provider name.")
    python_path: str | None = None
    max_length: int | None = None
    normalize: bool | None = None
    truncation: str | None = None
    cache_dir: str | None = None
    offline: bool | None = None
    cache_size: int | None = None
    options: dict[str, Any] | None = None

    _manager: EmbeddingManager = PrivateAttr()
    _owns_manager: bool = PrivateAttr(default=False)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        if self.config is not None and not isinstance(self.config, EmbeddingConfig):
            raise ConfigTypeError("config", "an EmbeddingConfig", self.config, "argument")
        # Built here, not in a pydantic validator, which would wrap our ValueErrors
        # (ConfigError, ...) into a ValidationError.
        given = {key: getattr(self, key) for key in CONFIG_KEYS if getattr(self, key) is not None}
        if self.model_name is not None:
            given["model"] = self.model_name
        if self.embed_batch_size is not None:
            given["batch_size"] = self.embed_batch_size
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
        # The model the provider reports serving (a repo id resolves to its snapshot).
        self.__dict__["model_name"] = self._manager.info.model
        self.__dict__["embed_batch_size"] = resolved.batch_size

    @classmethod
    def class_name(cls) -> str:
        return "AkidbEmbedding"

    def to_payload(self) -> dict[str, Any]:
        """LlamaIndex's observability payload, plus the provider and the dimension."""
        return {**super().to_payload(), "provider": self.provider, "dimension": self.dimension}

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
        """What must match for two vectors to be comparable, as akidb-embed's index records it."""
        return manager_fingerprint(self._manager)

    # -- BaseEmbedding -------------------------------------------------------------------

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._manager.embed_query(query).tolist()  # type: ignore[no-any-return]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._manager.aembed_query(query)).tolist()  # type: ignore[no-any-return]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aget_text_embeddings([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._manager.embed_documents(texts).tolist()  # type: ignore[no-any-return]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return (await self._manager.aembed_documents(texts)).tolist()  # type: ignore[no-any-return]

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the manager if this object built it; harmless twice."""
        if self._owns_manager:
            self._manager.close()

    def __enter__(self) -> AkidbEmbedding:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
