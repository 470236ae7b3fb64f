"""Name -> model class registry, so configs, checkpoints and the CLI refer to models by name."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from lungseg.core.errors import LungsegError
from lungseg.models.blocks import SegmentationModel, count_parameters

M = TypeVar("M", bound=type[SegmentationModel])

_MODELS: dict[str, type[SegmentationModel]] = {}
#: The modules that register the shipped architectures, imported on the first look-up.
ARCHITECTURES = ("unet", "fcn", "deeplabv3")


def _registered() -> dict[str, type[SegmentationModel]]:
    for module in ARCHITECTURES:
        importlib.import_module(f"lungseg.models.{module}")
    return _MODELS


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is and how it is built by default.

    Attributes:
        name: registry name, as given to :func:`create_model`.
        cls: the model class.
        description: first line of the class docstring.
        input_divisor: ``H`` and ``W`` of the input must divide by this.
        defaults: every keyword argument of the constructor with its default value.
    """

    name: str
    cls: type[SegmentationModel]
    description: str
    input_divisor: int
    defaults: dict[str, Any]

    @property
    def n_parameters(self) -> int:
        """Parameter count of the model built with :attr:`defaults` (builds it; ~0.1 s)."""
        return count_parameters(self.cls(**self.defaults))

    def changed(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments in ``kwargs`` whose value differs from :attr:`defaults`.

        Tuples and lists compare equal, as a checkpoint stores a tuple default as a list.
        """

        def plain(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value

        return {k: v for k, v in kwargs.items() if plain(self.defaults.get(k)) != plain(v)}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator that adds a :class:`SegmentationModel` subclass under ``name``.

    Every constructor argument must have a default, so ``create_model(name)`` always works.
    """

    def decorator(cls: M) -> M:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered by {_MODELS[name].__name__}")
        missing = [p for p, v in _signature_defaults(cls).items() if v is _NO_DEFAULT]
        if missing:
            raise ValueError(f"{cls.__name__}: constructor arguments without default: {missing}")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_registered())


def model_info(name: str) -> ModelInfo:
    """Describe registered model ``name``; unknown names raise :class:`LungsegError`."""
    cls = _get(name)
    doc = inspect.getdoc(cls) or ""
    return ModelInfo(
        name=name,
        cls=cls,
        description=doc.splitlines()[0] if doc else "",
        input_divisor=cls.input_divisor,
        defaults=_signature_defaults(cls),
    )


def create_model(name: str, **kwargs: Any) -> SegmentationModel:
    """Build registered model ``name`` with constructor arguments ``kwargs``.

    The resolved arguments (defaults plus ``kwargs``) are kept on the model as ``init_kwargs`` so
    a checkpoint can store ``(model.name, model.init_kwargs)`` and rebuild it exactly.

    Args:
        name: one of :func:`list_models`.
        **kwargs: constructor arguments; unknown ones raise :class:`LungsegError`.

    Returns:
        The model, in training mode, with freshly initialised weights.
    """
    cls = _get(name)
    defaults = _signature_defaults(cls)
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise LungsegError(
            f"unknown argument(s) {', '.join(unknown)} for model {name}; "
            f"valid arguments: {', '.join(sorted(defaults))}"
        )
    init_kwargs = {**defaults, **kwargs}
    model = cls(**init_kwargs)
    model.init_kwargs = init_kwargs
    return model


_NO_DEFAULT = object()


def _get(name: str) -> type[SegmentationModel]:
    try:
        return _registered()[name]
    except KeyError:
        raise LungsegError(
            f"unknown model {name!r}; valid models: {', '.join(list_models())}"
        ) from None


def _signature_defaults(cls: type) -> dict[str, Any]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {
        p.name: _NO_DEFAULT if p.default is inspect.Parameter.empty else p.default
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
