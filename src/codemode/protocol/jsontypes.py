"""The type builders of the wire protocol's definitions (``docs/protocol.md``).

A small set of JSON types (:class:`Obj`, :class:`Str`, :class:`Int`, ...) that each render
themselves as JSON Schema (:meth:`Type.schema`) and check a decoded JSON value
(:meth:`Type.check`, which returns the first mismatch as text, or ``None``).
:mod:`codemode.protocol.messages` describes every method with them; :func:`define` registers a
shared definition (``$defs`` of the published schema).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------- type builders


class Type:
    """A JSON type: renders itself as JSON Schema and checks a decoded JSON value."""

    description: str = ""

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, value: Any, path: str) -> str | None:
        """``None`` when ``value`` fits, else a message naming the first mismatch at ``path``."""
        raise NotImplementedError

    def _with_description(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            schema["description"] = self.description
        return schema


def is_int(value: Any) -> bool:
    """A JSON integer: an int, or a float with no fraction (``1.0``), as JSON Schema counts."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def as_int(value: Any) -> int:
    """A validated JSON integer as an ``int`` (``1.0`` -> ``1``)."""
    return int(value)


def _where(path: str) -> str:
    return path or "params"


@dataclass(frozen=True)
class Str(Type):
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self._with_description({"type": "string"})

    def check(self, value: Any, path: str) -> str | None:
        return None if isinstance(value, str) else f"{_where(path)} must be a string"


@dataclass(frozen=True)
class Int(Type):
    minimum: int | None = None
    description: str = ""

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        return self._with_description(schema)

    def check(self, value: Any, path: str) -> str | None:
        if not is_int(value):
            return f"{_where(path)} must be an integer"
        if self.minimum is not None and value < self.minimum:
            return f"{_where(path)} must be at least {self.minimum}"
        return None


@dataclass(frozen=True)
class Num(Type):
    exclusive_minimum: float | None = None
    maximum: float | None = None
    description: str = ""

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "number"}
        if self.exclusive_minimum is not None:
            schema["exclusiveMinimum"] = self.exclusive_minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return self._with_description(schema)

    def check(self, value: Any, path: str) -> str | None:
        if not _is_number(value):
            return f"{_where(path)} must be a finite number"
        if self.exclusive_minimum is not None and not value > self.exclusive_minimum:
            return f"{_where(path)} must be greater than {self.exclusive_minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return f"{_where(path)} must be at most {self.maximum:g}"
        return None


@dataclass(frozen=True)
class Bool(Type):
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self._with_description({"type": "boolean"})

    def check(self, value: Any, path: str) -> str | None:
        return None if isinstance(value, bool) else f"{_where(path)} must be a boolean"


@dataclass(frozen=True)
class Null(Type):
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self._with_description({"type": "null"})

    def check(self, value: Any, path: str) -> str | None:
        return None if value is None else f"{_where(path)} must be null"


@dataclass(frozen=True)
class AnyJson(Type):
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self._with_description({})

    def check(self, value: Any, path: str) -> str | None:
        return None


@dataclass(frozen=True)
class Const(Type):
    value: Any
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self._with_description({"const": self.value})

    def check(self, value: Any, path: str) -> str | None:
        if _is_number(self.value):
            same = _is_number(value) and value == self.value
        else:
            same = type(value) is type(self.value) and value == self.value
        return None if same else f"{_where(path)} must be {json.dumps(self.value)}"


@dataclass(frozen=True)
class Enum(Type):
    values: tuple[str, ...]
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self._with_description({"type": "string", "enum": list(self.values)})

    def check(self, value: Any, path: str) -> str | None:
        if isinstance(value, str) and value in self.values:
            return None
        return f"{_where(path)} must be one of {', '.join(json.dumps(v) for v in self.values)}"


@dataclass(frozen=True)
class Arr(Type):
    items: Type
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self._with_description({"type": "array", "items": self.items.schema()})

    def check(self, value: Any, path: str) -> str | None:
        if not isinstance(value, list):
            return f"{_where(path)} must be an array"
        for index, item in enumerate(value):
            problem = self.items.check(item, f"{path}[{index}]")
            if problem is not None:
                return problem
        return None


@dataclass(frozen=True)
class Field:
    """A member of an :class:`Obj`."""

    name: str
    type: Type
    required: bool = True


@dataclass(frozen=True)
class Obj(Type):
    """A JSON object. Members not listed are allowed (and ignored) unless ``closed``."""

    fields: tuple[Field, ...] = ()
    closed: bool = False
    description: str = ""

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object"}
        if self.fields:
            schema["properties"] = {f.name: f.type.schema() for f in self.fields}
            required = [f.name for f in self.fields if f.required]
            if required:
                schema["required"] = required
        if self.closed:
            schema["additionalProperties"] = False
        return self._with_description(schema)

    def check(self, value: Any, path: str) -> str | None:
        if not isinstance(value, dict):
            return f"{_where(path)} must be an object"
        for f in self.fields:
            sub = f"{path}.{f.name}" if path else f.name
            if f.name not in value:
                if f.required:
                    return f"{sub} is required"
                continue
            problem = f.type.check(value[f.name], sub)
            if problem is not None:
                return problem
        if self.closed:
            extra = sorted(set(value) - {f.name for f in self.fields})
            if extra:
                return f"{_where(path)} has unknown members: {', '.join(extra)}"
        return None


@dataclass(frozen=True)
class Union(Type):
    """One of several types; an object union is told apart by its ``type`` member when all its
    options have a ``type`` constant (so a mismatch names the right branch)."""

    options: tuple[Type, ...]
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return self._with_description({"anyOf": [o.schema() for o in self.options]})

    def check(self, value: Any, path: str) -> str | None:
        tagged = self._tagged()
        if tagged is not None and isinstance(value, dict):
            tag = value.get("type")
            option = tagged.get(tag) if isinstance(tag, str) else None
            if option is None:
                tags = ", ".join(json.dumps(t) for t in tagged)
                return f"{_where(path)}.type must be one of {tags}"
            return option.check(value, path)
        problems = []
        for option in self.options:
            problem = option.check(value, path)
            if problem is None:
                return None
            problems.append(problem)
        return " or ".join(problems)

    def _tagged(self) -> dict[Any, Type] | None:
        tags: dict[Any, Type] = {}
        for option in self.options:
            target = option.target if isinstance(option, Ref) else option
            if not isinstance(target, Obj):
                return None
            tag = next((f.type for f in target.fields if f.name == "type"), None)
            if not isinstance(tag, Const):
                return None
            tags[tag.value] = option
        return tags


def nullable(inner: Type) -> Union:
    return Union((inner, Null()))


DEFINITIONS: dict[str, Type] = {}


@dataclass(frozen=True)
class Ref(Type):
    """A named, shared definition: ``{"$ref": "#/$defs/<name>"}`` in the schema."""

    name: str

    @property
    def target(self) -> Type:
        return DEFINITIONS[self.name]

    def schema(self) -> dict[str, Any]:
        return {"$ref": f"#/$defs/{self.name}"}

    def check(self, value: Any, path: str) -> str | None:
        return self.target.check(value, path)


def define(name: str, type_: Type) -> Ref:
    """Register a shared definition and return a reference to it."""
    if name in DEFINITIONS:
        raise ValueError(f"duplicate definition {name}")
    DEFINITIONS[name] = type_
    return Ref(name)
