"""Records: the shape of a dataclass, without compiling code at import.

Why not `@dataclass`: it writes each class's `__init__`, `__repr__`, `__eq__` (frozen:
`__setattr__`, `__delattr__`, `__hash__`) as source text and compiles it when its
module is imported: 0.7 ms per class, 1.5 ms frozen, on the benchmark machine. The
classes an AWS issuance imports cost a Lambda cold start about 40 ms that way
(docs/performance.md, "Cold start"). A Record gets the same behaviour from the shared
methods below, and nothing is compiled.

    class Wrap(Record, frozen=True):
        token: str = field(repr=False)      # a secret: never in a repr
        accessor: str
        tags: dict = field(default_factory=dict)

As with dataclasses: the fields are the class's annotations, in order (a field without
a default may not follow one with a default); `field(default=, default_factory=,
repr=, compare=)`; `__post_init__` runs after `__init__`; records are equal when they
are of the same class and their compared fields are equal; frozen records refuse
assignment (FrozenInstanceError, an AttributeError) and hash by their compared fields,
mutable ones don't hash; `order=True` adds <, <=, >, >= by the compared fields.
A record can't extend another record (refused at class creation; none needs to).
"""

_MISSING = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a frozen record."""


class field:  # noqa: N801 (named and called like dataclasses.field)
    __slots__ = ("name", "default", "default_factory", "repr", "compare")

    def __init__(self, *, default=_MISSING, default_factory=_MISSING, repr=True, compare=True):  # noqa: A002
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = None
        self.default, self.default_factory = default, default_factory
        self.repr, self.compare = repr, compare


def _fields_of(cls):
    """The class's fields (its own annotations, in order), checked as dataclasses checks them."""
    out = []
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, _MISSING)
        spec = value if isinstance(value, field) else field(default=value)
        spec.name = name
        if isinstance(value, field):  # the class attribute is the default, as with dataclasses
            if spec.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        if isinstance(spec.default, (list, dict, set)):
            raise ValueError(f"{cls.__qualname__}.{name}: mutable default {type(spec.default).__name__}; "
                             f"use field(default_factory=...)")
        required = spec.default is _MISSING and spec.default_factory is _MISSING
        if required and out and not out[-1][1]:
            raise TypeError(f"{cls.__qualname__}: field {name!r} without a default follows one with a default")
        out.append((spec, required))
    return tuple(spec for spec, _ in out)


class Record:
    __record_fields__ = ()

    def __init_subclass__(cls, frozen=False, order=False, **kwargs):
        super().__init_subclass__(**kwargs)
        if any(base is not Record and issubclass(base, Record) for base in cls.__bases__):
            # its fields would be its own annotations only: refused, not silently wrong
            raise TypeError(f"{cls.__qualname__}: a record can't extend another record")
        cls.__record_fields__ = _fields_of(cls)
        cls.__record_compared__ = tuple(f.name for f in cls.__record_fields__ if f.compare)
        cls.__record_frozen__ = frozen
        if frozen:
            cls.__setattr__ = _refuse_assignment
            cls.__delattr__ = _refuse_assignment
            cls.__hash__ = _hash
        elif "__hash__" not in cls.__dict__:
            cls.__hash__ = None  # mutable and compared by value: unhashable, as a dataclass
        if order:
            cls.__lt__, cls.__le__ = _ordering(lambda a, b: a < b), _ordering(lambda a, b: a <= b)
            cls.__gt__, cls.__ge__ = _ordering(lambda a, b: a > b), _ordering(lambda a, b: a >= b)

    def __init__(self, *args, **kwargs):
        fields = self.__record_fields__
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__qualname__}() takes {len(fields)} positional arguments "
                            f"but {len(args)} were given")
        assign = object.__setattr__  # frozen records refuse setattr; their own __init__ may
        for i, f in enumerate(fields):
            if i < len(args):
                if f.name in kwargs:
                    raise TypeError(f"{type(self).__qualname__}() got multiple values for argument {f.name!r}")
                value = args[i]
            elif f.name in kwargs:
                value = kwargs.pop(f.name)
            elif f.default is not _MISSING:
                value = f.default
            elif f.default_factory is not _MISSING:
                value = f.default_factory()
            else:
                raise TypeError(f"{type(self).__qualname__}() missing required argument: {f.name!r}")
            assign(self, f.name, value)
        if kwargs:
            raise TypeError(f"{type(self).__qualname__}() got an unexpected keyword argument {next(iter(kwargs))!r}")
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    def __repr__(self):
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.__record_fields__ if f.repr)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _compared(self) == _compared(other)


def _compared(record):
    return tuple(getattr(record, name) for name in record.__record_compared__)


def _hash(self):
    return hash(_compared(self))


def _refuse_assignment(self, name, *value):
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _ordering(compare):
    def method(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return compare(_compared(self), _compared(other))
    return method


def field_names(record_or_class):
    """The fields' names, in order (dataclasses.fields, names only)."""
    return tuple(f.name for f in record_or_class.__record_fields__)
