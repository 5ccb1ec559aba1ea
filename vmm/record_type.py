"""Plain record classes for the modules on `vmm run`'s path, in place of `dataclasses`.

Importing `dataclasses` loads `inspect` (and with it `ast`, `dis`, `tokenize`, `copy`): about
10 ms of a ~60 ms `vmm run`, for a handful of classes that only need an `__init__`, an `__eq__`
and a `__repr__`. A subclass of `Record` declares its fields as annotations, in order, with
their defaults as class attributes (`factory(list)` for one made per instance), as with
`@dataclass`; `class X(Record, frozen=True)` refuses assignment and hashes by value. Modules
off the run path (the grader, the trace reader) may keep using dataclasses.
"""

from __future__ import annotations


class factory:
    """A field default made anew for each instance: `items: list = factory(list)`."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def _refuse_assignment(self, key, *value):
    raise AttributeError(f"cannot assign to field {key!r} of a frozen {type(self).__name__}")


class Record:
    _fields: tuple[str, ...] = ()
    _defaults: dict = {}
    _frozen = False

    def __init_subclass__(cls, frozen: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        fields, defaults = list(cls._fields), dict(cls._defaults)
        for name in cls.__dict__.get("__annotations__", {}):
            if name.startswith("_"):
                continue
            if name not in fields:
                fields.append(name)
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                if isinstance(defaults[name], factory):
                    delattr(cls, name)
            elif defaults and name not in defaults:
                raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one "
                                f"with a default")
        cls._fields, cls._defaults, cls._frozen = tuple(fields), defaults, frozen or cls._frozen
        if cls._frozen:
            cls.__hash__ = lambda self: hash((type(self), self._values()))
            cls.__setattr__ = cls.__delattr__ = _refuse_assignment

    def __init__(self, *args, **kwargs):
        fields = self._fields
        name = type(self).__name__
        if len(args) > len(fields):
            raise TypeError(f"{name}() takes {len(fields)} arguments, {len(args)} given")
        given = dict(zip(fields, args))
        for key, value in kwargs.items():
            if key not in fields or key in given:
                raise TypeError(f"{name}() got an unexpected or repeated argument {key!r}")
            given[key] = value
        values = self.__dict__
        for field in fields:
            if field in given:
                values[field] = given[field]
            elif field in self._defaults:
                default = self._defaults[field]
                values[field] = default.make() if isinstance(default, factory) else default
            else:
                raise TypeError(f"{name}() missing required argument {field!r}")

    def _values(self) -> tuple:
        return tuple(getattr(self, field) for field in self._fields)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None               # as a mutable dataclass: unhashable unless frozen

    def __repr__(self) -> str:
        fields = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__name__}({fields})"
