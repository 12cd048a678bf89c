"""Name -> model class registry, so configs can pick an architecture by ``model.name``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from petseg.errors import PetsegError

from .base import size_error_message

_REGISTRY: dict[str, type[nn.Module]] = {}

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make ``cls`` buildable as ``build_model(name, **kwargs)``.

    Registering two different classes under one name is a programming error (ValueError), not a
    user error; re-registering the same class (e.g. after a module reload) is allowed.
    """

    def decorator(cls: ModelClass) -> ModelClass:
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified(existing) != _qualified(cls):
            raise ValueError(f"model name {name!r} is already registered to {_qualified(existing)}")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> type[nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PetsegError(f"unknown model {name!r}; valid: {', '.join(available_models())}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the model registered as ``name`` with constructor keyword arguments ``kwargs``.

    Config mistakes become PetsegError with a one-line message: an unknown name lists the
    registered names, an unknown key lists the accepted ones (from the constructor signature),
    and a value the constructor rejects (ValueError) is reported with the model name.
    """
    cls = _lookup(name)
    params = inspect.signature(cls).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [
        p.name
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    if not accepts_any:
        unknown = [key for key in kwargs if key not in accepted]
        if unknown:
            raise PetsegError(
                f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"for model {name!r}; accepted: {', '.join(accepted)}"
            )
    missing = [
        p.name
        for p in params.values()
        if p.name in accepted and p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise PetsegError(f"missing argument(s) {', '.join(map(repr, missing))} for model {name!r}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise PetsegError(f"invalid arguments for model {name!r}: {exc}") from exc


def check_input_size(name: str, height: int, width: int) -> None:
    """Raise PetsegError if model ``name`` cannot take ``height x width`` images.

    Lets config validation reject an image size before any data is loaded; the message is the
    same one the model's forward pass would raise as ValueError.
    """
    cls = _lookup(name)
    message = size_error_message(name, height, width, getattr(cls, "size_multiple", 1))
    if message:
        raise PetsegError(message)
