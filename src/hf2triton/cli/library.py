"""Defaults and choices the library owns, shown by the CLI without importing the owner early.

The CLI never repeats a library default: an option left unset is simply not passed, so the
library's own default applies. Its value is looked up only to print ``--help`` for that
command (importing the owner is fine then). Building the parser therefore imports nothing
heavy (torch, onnx, onnxruntime, tritonclient), and ``hf2triton --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any


def resolve(owner: str) -> Any:
    """``"package.module:Name"`` or ``"package.module:Class.attribute"`` → the object."""
    module, _, path = owner.partition(":")
    value: Any = importlib.import_module(module)
    for part in path.split("."):
        value = getattr(value, part)
    return value


@dataclasses.dataclass(frozen=True)
class LibraryDefault:
    """The default of field ``field`` of the dataclass ``owner``; ``str()`` shows it."""

    owner: str
    field: str

    def value(self) -> Any:
        spec = {f.name: f for f in dataclasses.fields(resolve(self.owner))}[self.field]
        return spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()

    def __str__(self) -> str:
        value = self.value()
        if isinstance(value, (tuple, list)):
            return " ".join(str(v) for v in value) or "none"
        return str(value)


class LibraryChoices(Sequence[str]):
    """The accepted values of an option, read from the library constant ``owner`` on first use.

    Give the option a ``metavar``: argparse would otherwise list the choices (and import the
    owner) while the parser is built.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner

    @cached_property
    def _values(self) -> tuple[str, ...]:
        return tuple(resolve(self.owner))

    def __getitem__(self, index):  # type: ignore[override]
        return self._values[index]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values


def given(args: argparse.Namespace, *names: str, rename: dict[str, str] | None = None) -> dict[str, Any]:
    """The options among ``names`` the user set (not left at a :class:`LibraryDefault`), as keywords."""
    rename = rename or {}
    values = {}
    for name in names:
        value = getattr(args, name)
        if not isinstance(value, LibraryDefault):
            values[rename.get(name, name)] = value
    return values
