"""The transformer's user-facing types, and loading the user's class from a file or a module."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSONObject = dict[str, Any]
HOOKS = ("preprocess", "postprocess", "postprocess_chunk")


class ClientError(Exception):
    """Raised by a hook to reject the client's request: the client gets `status` (4xx) and `message`."""

    def __init__(self, message: str, *, status: int = 400, code: str | None = None) -> None:
        if not 400 <= status <= 499:
            raise ValueError(f"ClientError status must be a 4xx, got {status}")
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Transformer:
    """Pass-through hooks: override the ones you need (only overridden hooks are called by the gateway)."""

    async def load(self) -> None:
        return None

    async def preprocess(self, request: JSONObject, headers: dict[str, str]) -> JSONObject:
        return request

    async def postprocess(self, response: JSONObject, headers: dict[str, str]) -> JSONObject:
        return response

    async def postprocess_chunk(self, chunk: JSONObject, headers: dict[str, str]) -> JSONObject | None:
        return chunk


class HandlerError(Exception):
    """The handler named on the command line cannot be used; the message says why."""


@dataclass(frozen=True)
class LoadedHandler:
    instance: Any
    hooks: tuple[str, ...]  # the hooks it implements, in HOOKS order

    def has(self, hook: str) -> bool:
        return hook in self.hooks


def load_handler(handler: str, config: Mapping[str, Any] | None = None) -> LoadedHandler:
    """`FILE.py:Class` or `package.module:Class`, constructed with `config` as keyword arguments."""
    where, _, class_name = handler.rpartition(":")
    if not where or not class_name:
        raise HandlerError(f"{handler}: expected FILE.py:ClassName or package.module:ClassName")
    module = _import(where)
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        found = "not a class" if cls is not None else "not found"
        raise HandlerError(f"{handler}: {class_name} is {found} in {where}")
    try:
        instance = cls(**dict(config or {}))
    except Exception as exc:
        raise HandlerError(f"{handler}: constructing {class_name}({_keys(config)}) failed: {exc}") from exc
    hooks = []
    for name in HOOKS:
        method = getattr(cls, name, None)
        if method is None or method is getattr(Transformer, name):
            continue
        if not inspect.iscoroutinefunction(method):
            raise HandlerError(f"{handler}: {class_name}.{name} must be 'async def'")
        hooks.append(name)
    load = getattr(cls, "load", None)
    if load is not None and not inspect.iscoroutinefunction(load):
        raise HandlerError(f"{handler}: {class_name}.load must be 'async def'")
    if not hooks:
        raise HandlerError(f"{handler}: {class_name} defines none of {', '.join(HOOKS)}")
    return LoadedHandler(instance, tuple(hooks))


def _import(where: str) -> Any:
    if where.endswith(".py"):
        path = Path(where).resolve()
        if not path.is_file():
            raise HandlerError(f"{where}: no such file")
        name = f"llmserve_transformer_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise HandlerError(f"{where}: cannot be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise HandlerError(f"{where}: importing it failed: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(where)
    except Exception as exc:
        raise HandlerError(f"{where}: importing it failed: {type(exc).__name__}: {exc}") from exc


def _keys(config: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{key}=..." for key in (config or {}))
