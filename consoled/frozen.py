"""Frozen, slotted value classes that cost almost nothing to define.

``@dataclass(frozen=True, slots=True)`` generates and compiles six methods
per class and builds each class twice: about half a millisecond per class
on Python 3.11, and importing ``dataclasses`` costs 5 ms more (``inspect``,
``ast``, ``dis``, ``tokenize``), paid by every ``consoled attach`` before it
can connect.  :class:`Frozen` gives the same behaviour to a class body with
annotated fields (positional or keyword construction, defaults, equality and
hashing by value, a dataclass-like repr, immutability, ``__slots__``,
``__match_args__``) with methods shared by all of them and one ``__init__``
per class, compiled when the class is first instantiated.  Define one as
``@frozen class Name(Frozen): field: type = default``; :func:`replace` makes
a changed copy.  The protocol's messages and what the attach client and the
command line use are made this way.

The standard library's ``dataclasses`` functions (``fields``, ``replace``,
``asdict``) still work: ``__dataclass_fields__`` is built on first use.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

_set = object.__setattr__
_MISSING: Final = object()


class FrozenInstanceError(AttributeError):
    """An attempt to change a field of a frozen value (they are immutable)."""


class _LazyDataclassFields:
    """``__dataclass_fields__``, made the first time a ``dataclasses`` function asks."""

    def __get__(self, obj: object, cls: type[Frozen]) -> dict[str, Any]:
        import dataclasses

        fields: dict[str, dataclasses.Field[Any]] = {}
        for name in cls._fields:
            default = cls._defaults.get(name, dataclasses.MISSING)
            field: dataclasses.Field[Any] = dataclasses.field(default=typing.cast(Any, default))
            field.name = name
            field.type = cls.__annotations__.get(name, "")
            field._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
            fields[name] = field
        type.__setattr__(cls, "__dataclass_fields__", fields)  # cached on the class
        return fields


_T = TypeVar("_T", bound="type[Frozen]")


@typing.dataclass_transform(eq_default=True, frozen_default=True)
def frozen(cls: _T) -> _T:
    """Make a :class:`Frozen` subclass a value class: its annotated fields, slotted.

    A field with a value in the class body has that default.  The class is
    made again with ``__slots__``, as ``dataclass(slots=True)`` does.
    """
    namespace = dict(cls.__dict__)
    namespace.pop("__dict__", None)
    namespace.pop("__weakref__", None)
    inherited: tuple[str, ...] = ()
    defaults: dict[str, object] = {}
    for base in reversed(cls.__bases__):
        inherited += getattr(base, "_fields", ())
        defaults.update(getattr(base, "_defaults", {}))
    own = tuple(
        field
        for field, hint in namespace.get("__annotations__", {}).items()
        if not str(hint).startswith(("ClassVar", "typing.ClassVar"))
    )
    for field in own:
        if field in namespace:
            defaults[field] = namespace.pop(field)
    fields = inherited + own
    namespace["__slots__"] = own
    namespace["_fields"] = fields
    namespace["_defaults"] = defaults
    namespace["__match_args__"] = fields
    made = type(cls.__name__, cls.__bases__, namespace)

    def __init__(self: Frozen, *args: object, **kwargs: object) -> None:
        # Compiled when first called: most programs use a few of the classes.
        init = _make_init(made.__qualname__, fields, defaults)
        type.__setattr__(made, "__init__", init)
        init(self, *args, **kwargs)

    type.__setattr__(made, "__init__", __init__)
    return typing.cast(_T, made)


def _make_init(name: str, fields: tuple[str, ...], defaults: dict[str, object]) -> Any:
    """An ``__init__`` taking the fields in order (those with defaults may be left out)."""
    params, body = [], []
    namespace: dict[str, object] = {"_set": _set}
    for field in fields:
        if field in defaults:
            namespace[f"_d_{field}"] = defaults[field]
            params.append(f"{field}=_d_{field}")
        else:
            params.append(field)
        body.append(f"    _set(self, {field!r}, {field})")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass")
    exec(compile(source, f"<{name}.__init__>", "exec"), namespace)  # our own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{name}.__init__"  # type: ignore[attr-defined]
    return init


class Frozen:
    """Base of the frozen value classes (made with :func:`frozen`)."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, object]] = {}
    __dataclass_fields__: ClassVar[Any] = _LazyDataclassFields()

    def _values(self) -> tuple[object, ...]:
        return tuple([getattr(self, field) for field in self._fields])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__qualname__}({shown})"

    if not TYPE_CHECKING:  # a type checker knows them frozen (dataclass_transform)

        def __setattr__(self, name: str, value: object) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), self._values()


_F = TypeVar("_F", bound=Frozen)


def replace(value: _F, /, **changes: object) -> _F:
    """A copy of ``value`` with ``changes`` to its fields, as ``dataclasses.replace``.

    Raises:
        TypeError: a name in ``changes`` is not one of its fields.
    """
    unknown = changes.keys() - set(value._fields)
    if unknown:
        raise TypeError(f"{type(value).__qualname__} has no field {', '.join(sorted(unknown))}")
    values = {field: changes.get(field, getattr(value, field)) for field in value._fields}
    return type(value)(**values)
