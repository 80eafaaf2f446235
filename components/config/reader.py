"""Reading raw config strings key by key: every problem collected, each naming its key.

Values arrive from Pulumi as strings (objects and lists as JSON); a parser turns one into the
type the settings hold, or raises ``Invalid`` with what is wrong and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

PROJECT = "k3s-registry"


class ConfigError(ValueError):
    """One or more stack configuration values are wrong; the message lists each of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        listing = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"invalid stack configuration:\n{listing}")



T = TypeVar("T")


class Reader:
    """Parses raw config strings key by key, collecting problems instead of stopping at one."""

    def __init__(self, raw: Mapping[str, str | None]):
        self._raw = raw
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{PROJECT}:{key}: {message}")

    def value(self, key: str, parse: Callable[[str, Any], T], default: T, *, json_value: bool) -> T:
        text = self._raw.get(key)
        if text is None:
            return default
        try:
            raw_value = json.loads(text) if json_value else text
        except json.JSONDecodeError:
            self.problem(
                key, f"is not valid JSON ({text!r}); set it with `pulumi config set --path` or as YAML in the stack file"
            )
            return default
        try:
            return parse(key, raw_value)
        except Invalid as invalid:
            self.problem(key, str(invalid))
            return default

    def required(self, key: str, parse: Callable[[str, Any], T], *, hint: str) -> T | None:
        if self._raw.get(key) in (None, ""):
            self.problem(key, f"is required; {hint}")
            return None
        return self.value(key, parse, None, json_value=False)


class Invalid(Exception):
    pass


def fail(message: str) -> NoReturn:
    raise Invalid(message)

