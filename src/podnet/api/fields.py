"""Typed access to manifest fields, with errors that name file, object and field.

    f = Fields(doc, file="web.yaml", obj="Service default/web")
    port = f.dict("spec").list("ports")[0].int("port", required=True)
    # -> InputError "web.yaml: Service default/web: spec.ports[0].port: expected an integer, got 'x'"
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from ..errors import InputError

_MISSING = object()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return f"{value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Fields:
    """A mapping from a manifest, read with type checks."""

    __slots__ = ("data", "path", "file", "obj", "warnings")

    def __init__(self, data: Any, *, file: str | None = None, obj: str | None = None,
                 path: str = "", warnings: list | None = None):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InputError(f"expected a mapping, got {_type_name(data)}",
                             file=file, obj=obj, field=path or None)
        self.data = data
        self.path = path
        self.file = file
        self.obj = obj
        # where tolerated oddities of real-world manifests are reported
        self.warnings = warnings if warnings is not None else []

    # -- errors ---------------------------------------------------------------
    def field(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def warn(self, key: str | int | None, message: str) -> None:
        parts = [p for p in (self.file, self.obj, self.field(key) if key is not None else self.path) if p]
        self.warnings.append(": ".join(parts + [message]))

    def error(self, key: str | int | None, message: str) -> InputError:
        return InputError(message, file=self.file, obj=self.obj,
                          field=self.field(key) if key is not None else (self.path or None))

    # -- scalars --------------------------------------------------------------
    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def str(self, key: str, default: Optional[str] = None, *, required: bool = False,
            choices: tuple[str, ...] | None = None) -> Optional[str]:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "required field is missing")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_type_name(value)}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def int(self, key: str, default: Optional[int] = None, *, required: bool = False,
            minimum: int | None = None, maximum: int | None = None) -> Optional[int]:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "required field is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value}")
        return value

    def bool(self, key: str, default: Optional[bool] = None) -> Optional[bool]:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_type_name(value)}")
        return value

    def int_or_str(self, key: str, default=None):
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.error(key, f"expected an integer or a name, got {_type_name(value)}")
        if isinstance(value, str) and value.isdigit():
            return int(value)
        return value

    def ip(self, key: str, default=None, *, required: bool = False):
        value = self.str(key, required=required)
        if value is None:
            return default
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            raise self.error(key, f"not an IP address: {value!r}") from None

    def cidr(self, key: str, default=None, *, required: bool = False):
        value = self.str(key, required=required)
        if value is None:
            return default
        return parse_cidr(value, self, key)

    # -- containers -----------------------------------------------------------
    def dict(self, key: str) -> "Fields":
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_type_name(value)}")
        return Fields(value or {}, file=self.file, obj=self.obj, path=self.field(key),
                      warnings=self.warnings)

    def list(self, key: str) -> list:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {_type_name(value)}")
        return value

    def dicts(self, key: str) -> list["Fields"]:
        """A list of mappings, each wrapped with its index in the path."""
        out = []
        base = self.field(key)
        for i, item in enumerate(self.list(key)):
            if not isinstance(item, dict):
                raise InputError(f"expected a mapping, got {_type_name(item)}",
                                 file=self.file, obj=self.obj, field=f"{base}[{i}]")
            out.append(Fields(item, file=self.file, obj=self.obj, path=f"{base}[{i}]",
                              warnings=self.warnings))
        return out

    def strs(self, key: str) -> list[str]:
        values = self.list(key)
        base = self.field(key)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise InputError(f"expected a string, got {_type_name(v)}",
                                 file=self.file, obj=self.obj, field=f"{base}[{i}]")
        return list(values)

    def str_map(self, key: str) -> dict[str, str]:
        """labels, annotations, nodeSelector: string -> string (numbers coerced, like kubectl)."""
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_type_name(value)}")
        out = {}
        for k, v in value.items():
            if isinstance(v, (dict, list)):
                raise InputError(f"expected a string, got {_type_name(v)}", file=self.file,
                                 obj=self.obj, field=f"{self.field(key)}.{k}")
            out[str(k)] = "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
        return out


def parse_cidr(value: str, where: Fields | None = None, key: str | None = None):
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        if where is not None:
            raise where.error(key, f"not a CIDR: {value!r}") from None
        raise InputError(f"not a CIDR: {value!r}") from None
