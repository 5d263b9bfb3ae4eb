"""YAML parsing that a hostile configuration file cannot turn into a denial of service.

`parse_yaml(text, name)` is ``yaml.safe_load`` with limits, and with the mistakes that
``safe_load`` lets pass turned into errors. Every refusal is a `ConfigError` with one line,
``name:line:column: message`` where the position is known:

- the text may be at most `MAX_BYTES` long;
- aliases are counted at their expanded size: a document whose tree, with every alias expanded,
  has more than `MAX_NODES` nodes is refused while it is composed (a "billion laughs" alias bomb
  is refused after reading it once, before anything walks the expanded tree);
- an alias inside the node it refers to (a recursive structure) is refused;
- nesting deeper than `MAX_DEPTH` collections is refused (instead of a ``RecursionError``);
- a key that appears twice in one mapping is refused with the second key's position (keys
  merged in with ``<<: *anchor`` may still be overridden, as YAML specifies);
- an empty document (an empty file, or only comments) is refused.

The limits are far above any real configuration (a thousand routes are about 20,000 nodes).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from gateway.errors import ConfigError

#: Largest configuration text accepted, in bytes (UTF-8).
MAX_BYTES = 4 * 1024 * 1024
#: Most nodes (scalars, lists, mappings) in the document with every alias expanded.
MAX_NODES = 100_000
#: Deepest nesting of lists and mappings.
MAX_DEPTH = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.MarkedYAMLError):
    """A limit or rule of this module was broken at `problem_mark`."""


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _Parser(CParser):  # type: ignore[misc]
        """libyaml's scanner and parser: events about five times faster than PyYAML's."""

else:  # pragma: no cover - PyYAML built without libyaml

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


class BoundedSafeLoader(Composer, _Parser, SafeConstructor, Resolver):
    """``yaml.SafeLoader``'s behaviour over libyaml's parser (when PyYAML has it), with
    PyYAML's composer so that expanded nodes and depth are counted while composing, and with
    duplicate keys refused while constructing (see the module docstring)."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)  # type: ignore[call-arg]
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._nodes = 0
        self._depth = 0
        #: Expanded size of each finished node, by id (nodes stay alive in the composed graph).
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            node: Node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # the anchored node is still being composed: it contains itself
                raise _Refused(
                    None,
                    None,
                    f"alias *{event.anchor} refers to a node containing it"
                    " (recursive structures are not allowed)",
                    event.start_mark,
                )
            self._count(size, event.start_mark)
            return node
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        before = self._nodes
        self._count(1, event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise _Refused(
                None,
                None,
                f"the document expands to more than {MAX_NODES:,} nodes"
                " (aliases count at their expanded size)",
                mark,
            )

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the constructor reports it below
                    continue
                if first is not None:
                    line = first.line + 1
                    raise _Refused(
                        None,
                        None,
                        f"duplicate key {key!r} (first on line {line})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, name: str = "<config>") -> Any:
    """The single YAML document in `text`, parsed within this module's limits.

    Raises `ConfigError` with one line naming `name` (and ``line:column`` where known)."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError([f"{name}: larger than {MAX_BYTES // (1024 * 1024)} MiB"])
    loader = BoundedSafeLoader(text)
    try:
        tree = loader.get_single_data()
    except _Refused as e:
        raise ConfigError([f"{_where(name, e)}: {e.problem}"]) from None
    except (ComposerError, ConstructorError) as e:
        raise ConfigError([f"{_where(name, e)}: YAML error: {e.problem}"]) from None
    except yaml.MarkedYAMLError as e:
        raise ConfigError([f"{_where(name, e)}: YAML syntax error: {e.problem}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{name}: YAML error: {e}"]) from None
    except RecursionError:
        raise ConfigError([f"{name}: nested too deeply"]) from None
    except ValueError as e:  # for example an integer with more digits than Python converts
        raise ConfigError([f"{name}: YAML error: {e}"]) from None
    finally:
        loader.dispose()
    if tree is None:
        raise ConfigError([f"{name}: the file is empty (expected a mapping, at least 'sources:')"])
    return tree


def _where(name: str, e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    return f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
