"""Plug-in registries: one per kind (datasets, models, attacks, defenses, ...).

A plug-in is one file with a ``@REGISTRY.register("name")`` line above a class or a factory
function. Its parameters are validated by a pydantic model: either the ``params`` model given at
registration, or one derived from the factory's keyword arguments (annotations and defaults).
Arguments that the framework supplies at build time (``num_classes``, ``input_shape`` ...) are
named in ``context`` and are not user parameters.

>>> R = Registry("widget")
>>> @R.register("box")
... def make_box(size: int = 3) -> int:
...     '''A box of a given size.'''
...     return size * 2
>>> R.create("box", {"size": 4})
8
>>> R.names()
['box']
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

T = TypeVar("T")

__all__ = ["BadParams", "Entry", "Registry", "UnknownName", "all_registries", "did_you_mean"]


class UnknownName(KeyError):
    """A registry was asked for a name it does not have."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        hint = did_you_mean(name, known)
        msg = f"unknown {kind} {name!r}{hint}; known: {', '.join(known) or '(none)'}"
        super().__init__(msg)

    def __str__(self) -> str:
        return str(self.args[0])


class BadParams(ValueError):
    """Parameters of a plug-in failed validation; ``problems`` holds (field, message) pairs."""

    def __init__(self, kind: str, name: str, problems: list[tuple[str, str]]) -> None:
        self.kind, self.name, self.problems = kind, name, problems
        text = "; ".join(f"{f}: {m}" for f, m in problems)
        super().__init__(f"bad parameters for {kind} {name!r}: {text}")


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _StrictParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


@dataclass(frozen=True)
class Entry:
    """One registered plug-in."""

    name: str
    factory: Callable[..., Any]
    params: type[BaseModel]
    context: tuple[str, ...]
    doc: str

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else "(no description)"


def _signature_fields(target: Callable[..., Any], context: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
    """``{param: (annotation, default)}`` of ``target`` and whether it takes ``**kwargs``."""
    sig = inspect.signature(target)
    try:
        hints = inspect.get_annotations(target, eval_str=True)
    except Exception:  # pragma: no cover - unresolvable annotations fall back to Any
        hints = {}
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if pname == "self" or pname in context or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (hints.get(pname, Any), default)
    return fields, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _params_from_signature(
    name: str, factory: Callable[..., Any], context: tuple[str, ...]
) -> type[BaseModel]:
    """The params model of a plug-in from its keyword arguments. A class whose ``__init__`` takes
    ``**kwargs`` passes them on to its parent, so the parents' ``__init__`` parameters are added (the subclass
    wins on a name both declare) instead of being re-declared in every subclass."""
    if not inspect.isclass(factory):
        fields, _ = _signature_fields(factory, context)
        return create_model(f"{name}_params", __base__=_StrictParams, **fields)  # type: ignore[call-overload]
    fields = {}
    for cls in factory.__mro__:
        if "__init__" not in vars(cls) or cls is object:
            continue
        own, more = _signature_fields(vars(cls)["__init__"], context)
        fields = {**own, **fields}
        if not more:
            break
    return create_model(f"{name}_params", __base__=_StrictParams, **fields)  # type: ignore[call-overload]


class Registry(Generic[T]):
    """A named collection of plug-ins of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        _ALL[kind] = self

    def register(
        self,
        name: str,
        *,
        params: type[BaseModel] | None = None,
        context: tuple[str, ...] = (),
        doc: str | None = None,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name].factory is not factory:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            model = params or _params_from_signature(name, factory, context)
            text = doc if doc is not None else (inspect.getdoc(factory) or "")
            self._entries[name] = Entry(name, factory, model, context, text)
            return factory

        return deco

    @contextmanager
    def temporarily(self, name: str, factory: Callable[..., T], **kwargs: Any) -> Iterator[None]:
        """Register ``factory`` as ``name`` only inside the ``with`` block (test-only plug-ins: they never
        stay in the production registry, so registry-wide loops and ``privsim list`` never see them)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self.register(name, **kwargs)(factory)
        try:
            yield
        finally:
            del self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.kind, name, self.names()) from None

    def validate(self, name: str, params: Mapping[str, Any] | None = None) -> BaseModel:
        """Validate ``params`` for plug-in ``name``; raise UnknownName or BadParams."""
        entry = self.get(name)
        try:
            return entry.params.model_validate(dict(params or {}))
        except ValidationError as err:
            problems = []
            allowed = list(entry.params.model_fields)
            for e in err.errors():
                loc = ".".join(str(x) for x in e["loc"])
                msg = e["msg"]
                if e["type"] == "extra_forbidden":
                    key = str(e["loc"][-1])
                    msg = (
                        f"unknown parameter{did_you_mean(key, allowed)}; "
                        f"allowed: {', '.join(allowed) or '(none)'}"
                    )
                elif "input" in e and e["type"] != "missing":
                    msg = f"{msg} (got {e['input']!r})"
                problems.append((loc, msg))
            raise BadParams(self.kind, name, problems) from None

    def create(self, name: str, params: Mapping[str, Any] | None = None, **context: Any) -> T:
        """Build plug-in ``name`` from user ``params`` plus framework-supplied ``context``."""
        entry = self.get(name)
        validated = self.validate(name, params)
        kwargs = {k: getattr(validated, k) for k in type(validated).model_fields}
        extra = {k: v for k, v in context.items() if k in entry.context}
        return entry.factory(**kwargs, **extra)  # type: ignore[no-any-return]


_ALL: dict[str, Registry[Any]] = {}


def all_registries() -> dict[str, Registry[Any]]:
    """Every registry, after importing the packages that register plug-ins."""
    import_plugins()
    return dict(sorted(_ALL.items()))


def import_plugins() -> None:
    """Import every package that registers plug-ins (idempotent, no other side effects)."""
    for mod in (
        "simulator.data",
        "simulator.models",
        "simulator.sketching",
        "simulator.dp",
        "simulator.secagg",
        "attacks",
        "defenses",
    ):
        importlib.import_module(mod)
