"""The httpx flavour authlib uses: ``httpx2`` when installed (authlib ≥ 1.7 prefers it and
deprecates plain ``httpx``), else ``httpx``. The authlib row and ``static-httpx`` both use it."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

__all__ = ["HTTPX_NAME", "httpx"]


def _load() -> ModuleType:
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


httpx: ModuleType = _load()
HTTPX_NAME: str = httpx.__name__

# authlib warns once at import when it falls back to plain httpx; the tables say which is used.
warnings.filterwarnings("ignore", message="The httpx module is deprecated")
