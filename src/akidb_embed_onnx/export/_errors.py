"""The export's errors, and the lazy import of the packages only the export needs."""

from __future__ import annotations

import importlib
from typing import Any

from akidb_embed.errors import AkidbEmbedError, ProviderError

__all__ = ["EXTRA_INSTALL", "TORCH_INSTALL", "ExportDependencyError", "ExportError", "require"]

TORCH_INSTALL = (
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
    "&& pip install 'akidb-embed-onnx[export]'"
)
EXTRA_INSTALL = "pip install 'akidb-embed-onnx[export]'"


class ExportError(ProviderError):
    """The export failed (unsupported model, parity below the threshold, bad output folder)."""

    def __init__(self, message: str) -> None:
        super().__init__("onnx", f"export: {message}")


class ExportDependencyError(AkidbEmbedError, ImportError):
    """A package the export needs (PyTorch, transformers, onnx) is not installed."""

    def __init__(self, package: str, install: str) -> None:
        self.package = package
        self.install = install
        super().__init__(
            f"akidb-embed export needs {package}, which is not installed. "
            f"Install it with: {install}"
        )


def require(module: str, package: str, install: str) -> Any:
    """Import *module*, or raise :class:`ExportDependencyError` naming *install*."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportDependencyError(package, install) from exc
