"""Route ``match:`` conditions, compiled once.

Semantics (DESIGN.md, "Interface details"):

- several keys are ANDed;
- a scalar value means equality (``true`` matches only a boolean, ``1`` only a number);
- a list value means "any of" (its items may be scalars or operator mappings);
- a mapping value holds operators on the one field, ANDed: ``gte``/``gt``/``lte``/``lt`` (a
  number, or a string compared as a string, which suits ISO 8601 times), ``glob`` (whole value,
  `fnmatch` rules, case-sensitive), ``regex`` (`re.search`: anchor with ``^``/``$`` when
  needed), ``exists`` (``true``: present and not null);
- a key is a field name, or a dotted path into nested objects (``item.contentType``). A key
  that exists literally (dots and all) wins over the path.

Fields are looked up in the event's provider fields plus its enrichment so far.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "gte": operator.ge,
    "gt": operator.gt,
    "lte": operator.le,
    "lt": operator.lt,
}
OPERATORS = (*COMPARISONS, "glob", "regex", "exists")

_MISSING = object()


class MatchSpecError(ValueError):
    """A ``match`` mapping that cannot be compiled; `problems` are ``(key, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))


def lookup(view: Mapping[str, Any], path: str) -> Any:
    """The value at `path` in `view` (a literal key first, then a dotted path), or `_MISSING`."""
    if path in view:
        return view[path]
    current: Any = view
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _equal(actual: Any, wanted: Any) -> bool:
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return isinstance(actual, bool) and isinstance(wanted, bool) and actual == wanted
    return bool(actual == wanted)


def _show(v: Any) -> str:
    return "missing" if v is _MISSING else repr(v)


# A test takes the field's value (or _MISSING) and returns None when it holds, else why not.
Test = Callable[[Any], str | None]


def _compile_operator(op: str, arg: Any) -> Test:
    if op in COMPARISONS:
        compare = COMPARISONS[op]
        if not (_is_number(arg) or isinstance(arg, str)):
            raise ValueError(f"{op} takes a number (or a string), found {arg!r}")

        def test(v: Any) -> str | None:
            comparable = (_is_number(v) and _is_number(arg)) or (
                isinstance(v, str) and isinstance(arg, str)
            )
            if comparable and compare(v, arg):
                return None
            return f"is {_show(v)}, wanted {op} {arg!r}"

        return test
    if op == "glob":
        if not isinstance(arg, str):
            raise ValueError(f"glob takes a string pattern, found {arg!r}")

        def test(v: Any) -> str | None:
            text = v if isinstance(v, str) else None
            if _is_number(v):
                text = str(v)
            if text is not None and fnmatch.fnmatchcase(text, arg):
                return None
            return f"is {_show(v)}, wanted glob {arg!r}"

        return test
    if op == "regex":
        if not isinstance(arg, str):
            raise ValueError(f"regex takes a string, found {arg!r}")
        try:
            pattern = re.compile(arg)
        except re.error as e:
            raise ValueError(f"invalid regex {arg!r}: {e}") from None

        def test(v: Any) -> str | None:
            text = v if isinstance(v, str) else (str(v) if _is_number(v) else None)
            if text is not None and pattern.search(text):
                return None
            return f"is {_show(v)}, wanted regex {arg!r}"

        return test
    if op == "exists":
        if not isinstance(arg, bool):
            raise ValueError(f"exists takes true or false, found {arg!r}")

        def test(v: Any) -> str | None:
            present = v is not _MISSING and v is not None
            if present == arg:
                return None
            return f"is {_show(v)}, wanted exists: {str(arg).lower()}"

        return test
    raise AssertionError(op)


def _compile_value(spec: Any) -> Test:
    if isinstance(spec, Mapping):
        if not spec:
            raise ValueError("an empty mapping is not a condition")
        unknown = [k for k in spec if k not in OPERATORS]
        if unknown:
            import difflib

            close = difflib.get_close_matches(str(unknown[0]), OPERATORS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"unknown operator {unknown[0]!r}{hint}; operators are {', '.join(OPERATORS)}"
                " (use a dotted key like item.contentType for nested fields)"
            )
        tests = [_compile_operator(op, arg) for op, arg in spec.items()]

        def all_hold(v: Any) -> str | None:
            for t in tests:
                why = t(v)
                if why is not None:
                    return why
            return None

        return all_hold
    if isinstance(spec, list):
        if not spec:
            raise ValueError("an empty list matches nothing")
        tests = [_compile_value(item) for item in spec]

        def any_holds(v: Any) -> str | None:
            if any(t(v) is None for t in tests):
                return None
            return f"is {_show(v)}, wanted any of {spec!r}"

        return any_holds

    def equals(v: Any) -> str | None:
        if v is not _MISSING and _equal(v, spec):
            return None
        return f"is {_show(v)}, wanted {spec!r}"

    return equals


@dataclass
class Matcher:
    """A compiled ``match`` mapping. `check(view)` returns None when every key holds, else
    the first reason it does not (``"status is 'sent', wanted 'delivered'"``)."""

    spec: dict[str, Any]
    tests: list[tuple[str, Test]]

    def check(self, view: Mapping[str, Any]) -> str | None:
        for key, test in self.tests:
            why = test(lookup(view, key))
            if why is not None:
                return f"{key} {why}"
        return None

    def __bool__(self) -> bool:
        return bool(self.tests)


def compile_match(spec: Mapping[str, Any] | None) -> Matcher:
    """Compile a ``match`` mapping; raise `MatchSpecError` listing every bad key."""
    tests: list[tuple[str, Test]] = []
    problems: list[tuple[str, str]] = []
    for key, value in (spec or {}).items():
        try:
            tests.append((str(key), _compile_value(value)))
        except ValueError as e:
            problems.append((str(key), str(e)))
    if problems:
        raise MatchSpecError(problems)
    return Matcher(dict(spec or {}), tests)
