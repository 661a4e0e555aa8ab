"""YAML as the config reads it: `yaml.safe_load`, except that a key given twice in one mapping
is an error (PyYAML keeps the last silently: a second ``cameras:`` block, or a camera with two
``id:`` lines, would drop what came first without a word), an alias inside the node it names is
an error, and a plain ``on:`` key is the string "on", not YAML 1.1's true (`percept build` put
the key true into the Serve config, which JSON then made "true")."""

from __future__ import annotations

from typing import Any

import yaml

from .config_errors import ConfigError

MERGE_TAG = "tag:yaml.org,2002:merge"  # ``<<: *defaults``: its keys may be overridden, as YAML says
BOOL_TAG, STR_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:str"


class ValueRefused(yaml.constructor.ConstructorError):
    """A scalar Python cannot make (``2024-02-30``, an integer of thousands of digits: PyYAML let
    a plain ValueError out, with no line), at its place in the text."""


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` refusing repeated mapping keys (`yaml.constructor.ConstructorError`,
    with the line of the repeat and of the first)."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._composing: set[str] = set()  # anchors whose node is being read now

    def compose_node(self, parent: Any, index: Any) -> Any:
        """A node; an alias inside the node it names (``cameras: &a [*a]``) is an error: it made a
        structure that contains itself, on which reading the config recursed without end."""
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent):
            if anchor in self._composing:
                raise yaml.composer.ComposerError(None, None, f"the alias *{anchor} is inside the node &{anchor} it "
                                                  "names: a loop", event.start_mark)
            return super().compose_node(parent, index)
        if anchor is None:
            return super().compose_node(parent, index)
        self._composing.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._composing.discard(anchor)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as exc:
            raise ValueRefused(None, None, f"{exc} (quote it to keep it as text)", node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                if key_node.tag == BOOL_TAG and key_node.style is None and key_node.value.lower() == "on":
                    key_node.tag = STR_TAG  # a classifier's ``on:`` (YAML 1.1 reads a plain on as true)
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader says so itself
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"duplicate key {key!r} (first given at line {first})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


MAX_VALUES = 100_000  # values a config's aliases may add, expanded (a real one adds hundreds at most)
TEXT_PER_VALUE = 100  # an aliased text counts one value a 100 characters (1000 aliases of 100 kB: 36 s of checks)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` with repeated keys refused, and a document whose aliases expand
    to more than `MAX_VALUES` values beyond those written (a few hundred bytes of aliases of
    aliases: "billion laughs"; an aliased text counting a value each `TEXT_PER_VALUE` characters)
    refused before anything walks it. What is written counts for nothing: a config of many
    cameras and zones is as large as its text."""
    data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    left, seen, stack = MAX_VALUES, set(), [(data, False)]
    while stack:
        node, aliased = stack.pop()
        if isinstance(node, (dict, list, str)):
            # an alias: the same object met again (a text only if long: Python shares short ones)
            aliased = aliased or (id(node) in seen and (not isinstance(node, str) or len(node) > TEXT_PER_VALUE))
            seen.add(id(node))
        if aliased:
            left -= 1 + (len(node) // TEXT_PER_VALUE if isinstance(node, str) else 0)
            if left < 0:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the document's aliases expand to more than {MAX_VALUES} values (aliases of aliases): refused")
        if isinstance(node, dict):
            stack.extend((child, aliased) for child in (*node.keys(), *node.values()))
        elif isinstance(node, list):
            stack.extend((child, aliased) for child in node)
    return data


def config_from_yaml(text: str, source: str) -> Any:
    """`load_yaml`, its errors a `ConfigError` naming the line (``source``: the file)."""
    try:
        return load_yaml(text)
    except ValueRefused as exc:  # (a date that does not exist, an integer of thousands of digits)
        mark = exc.problem_mark
        raise ConfigError([f"YAML value refused at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"],
                          source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if getattr(exc, "context", None) == "expected a single document in the stream":  # (a second ---)
            problem = f"a config is one YAML document, {problem}"
        if mark is None:  # (no place in the text: the aliases' expansion, `load_yaml`)
            raise ConfigError([f"YAML refused: {problem}"], source) from None
        raise ConfigError([f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"],
                          source) from None
    except RecursionError:  # (PyYAML's composer recurses once a level: ~500 levels end it)
        raise ConfigError(["YAML nested too deeply (lists or mappings hundreds of levels deep): refused"],
                          source) from None
