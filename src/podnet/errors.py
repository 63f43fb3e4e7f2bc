"""Errors a user can act on.

Every problem with the inputs is reported as one line naming the file, the
object and the field, e.g.::

    lab/web.yaml: Service default/web: spec.ports[0].port: expected an integer, got 'eighty'

The CLI prints ``str(error)`` and exits non-zero; no traceback unless --debug.
"""

from __future__ import annotations


class PodnetError(Exception):
    """Base class for errors shown to the user as one line."""


class InputError(PodnetError):
    """Bad input: names the file, the object and the field."""

    def __init__(self, message: str, *, file: str | None = None,
                 obj: str | None = None, field: str | None = None):
        self.message = message
        self.file = file
        self.obj = obj
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.obj, self.field) if p]
        return ": ".join(parts + [self.message])

    def at(self, *, file: str | None = None, obj: str | None = None,
           field_prefix: str | None = None) -> "InputError":
        """Fill in context that the raiser did not know (outermost wins only if unset)."""
        if file and not self.file:
            self.file = file
        if obj and not self.obj:
            self.obj = obj
        if field_prefix:
            self.field = f"{field_prefix}.{self.field}" if self.field else field_prefix
        self.args = (str(self),)
        return self


class AllocationError(InputError):
    """A controller could not allocate (exhausted range, duplicate address...)."""


class NotRootError(PodnetError):
    pass
