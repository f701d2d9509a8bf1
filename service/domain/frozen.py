"""A faster constructor for the frozen, slotted dataclasses made once or more per command.

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__``
(its own ``__setattr__`` refuses); that costs about twice what setting the slots through
their descriptors does, and the core makes several such objects per command. `quick_init`
replaces ``__init__`` with one of the same signature (positional or keyword, same defaults,
``__post_init__`` called last) that sets the slots directly. Instances stay as frozen as
before: assignment still raises.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def quick_init(cls: type[T]) -> type[T]:
    """Give a frozen, slotted dataclass the faster ``__init__`` (see the module's text).

    Only plain fields are supported (no ``init=False``, keyword-only, ``InitVar`` or default
    factories): any other class is refused, so a later change cannot silently lose one.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    every = getattr(cls, "__dataclass_fields__")  # noqa: B009 (InitVars are only listed here)
    if len(every) != len(fields) or any(
        not f.init or f.kw_only is True or f.default_factory is not _MISSING for f in fields
    ):
        raise TypeError(f"{cls.__name__} has fields quick_init does not support")
    scope: dict[str, Any] = {}
    args, body = [], []
    for f in fields:
        setter = f"_set_{f.name}"
        slot = next(k.__dict__[f.name] for k in cls.__mro__ if f.name in k.__dict__)
        scope[setter] = slot.__set__
        if f.default is _MISSING:
            args.append(f.name)
        else:
            scope[f"_default_{f.name}"] = f.default
            args.append(f"{f.name}=_default_{f.name}")
        body.append(f"    {setter}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(args)}):\n" + "\n".join(body or ["    pass"])
    exec(source, scope)  # noqa: S102 (text built from the class's own field names only)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = getattr(cls.__init__, "__doc__", None)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
