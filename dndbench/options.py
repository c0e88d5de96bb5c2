"""``python -m dndbench options KIND NAME``: a component's options with their types, defaults
and docs, read from its typed config dataclass.

An option's doc is, in this order: the ``#:`` comment block above its field, a comment at the end
of its line, or the sentence about it (````name``: ...``) in the docstring of the config class
(or of a base class that defines the field).  Options are printed as the command line spells
them: ``describer.k=10``.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass
from typing import Any

#: defaults longer than this are shortened in the listing
MAX_DEFAULT = 72


@dataclass(frozen=True)
class Option:
    """One option of a component config."""

    name: str
    type: str
    default: str
    doc: str


def _comments(source: str) -> dict[int, str]:
    """Line number -> comment text (without ``#`` / ``#:``) of every comment in ``source``."""
    out = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = re.sub(r"^#:?\s?", "", tok.string).strip()
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment (``#:`` block above it, else the comment at its line's end)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    comments = _comments(source)
    lines = source.splitlines()
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#:"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        end = comments.get(node.end_lineno or node.lineno, "")
        text = end or " ".join(above)
        if text:
            out[node.target.id] = text
    return out


_MENTION = re.compile(r"``(\w+)``\s*")


def _until_clause_end(text: str) -> str:
    """``text`` up to its first ``;`` or sentence end outside parentheses."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            if depth == 0:
                return text[:i].strip()
            depth -= 1
        elif depth == 0 and (ch == ";" or (ch == "." and text[i + 1:i + 2] in (" ", ""))):
            return text[:i].strip()
    return text.strip()


def _docstring_notes(cls: type) -> dict[str, str]:
    """Field name -> what the class docstring says about it: ````name``: text`` (up to ``;`` or
    the sentence's end), ````name`` (text)``, or the clause ````name`` begins."""
    doc = " ".join((inspect.getdoc(cls) or "").split())
    out: dict[str, str] = {}
    for match in _MENTION.finditer(doc):
        rest = doc[match.end():]
        paren = ""
        if rest.startswith("("):
            inside = _until_clause_end(rest[1:])
            paren, rest = inside, rest[len(inside) + 2:].lstrip()
        if rest.startswith(":"):
            note = _until_clause_end(rest[1:])
        elif paren:
            note = paren
        else:  # "``label_as`` names the setting ...": the clause it begins
            note = _until_clause_end(rest)
        if note:
            out.setdefault(match.group(1), note)
    return out


def _type_name(field: dataclasses.Field[Any], default: Any) -> str:
    if isinstance(default, enum.Enum):
        return " | ".join(str(m.value) for m in type(default))
    text = field.type if isinstance(field.type, str) else getattr(field.type, "__name__",
                                                                  str(field.type))
    return str(text).replace("typing.", "")


def _default_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_DEFAULT else text[:MAX_DEFAULT - 1] + "…'"


def options(config_class: type) -> list[Option]:
    """Every option of a component config class (``name`` excluded), in field order."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):  # subclasses' docs win
        if dataclasses.is_dataclass(klass):
            docs.update(_docstring_notes(klass))
            docs.update(_field_comments(klass))
    instance = config_class()
    out = []
    for f in dataclasses.fields(config_class):
        if f.name == "name":
            continue
        value = getattr(instance, f.name)
        out.append(Option(f.name, _type_name(f, value), _default_text(value), docs.get(f.name, "")))
    return out


def describe(kind: str, name: str) -> str:
    """The text ``options KIND NAME`` prints."""
    from dndbench.registry import registry_for

    entry = registry_for(kind).entry(name)
    lines = [f"{kind} {name} [{entry.origin}]: {entry.summary}", ""]
    opts = options(entry.config_class)
    if not opts:
        lines.append("  (no options)")
    for opt in opts:
        lines.append(f"  {kind}.{opt.name}={opt.default}    ({opt.type})")
        if opt.doc:
            lines += textwrap.wrap(opt.doc, width=96, initial_indent="      ",
                                   subsequent_indent="      ")
    lines += ["", f"Choose it with {kind}={name}; set an option with {kind}.OPTION=VALUE."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``dndbench options KIND NAME`` (or ``options NAME`` when the name is unique)."""
    from dndbench.catalog import KINDS
    from dndbench.errors import ConfigError
    from dndbench.plugins import load_plugins
    from dndbench.registry import registries

    parser = argparse.ArgumentParser(
        prog="dndbench options",
        description="Show a component's options with their types, defaults and docs.")
    parser.add_argument("kind_or_name", help=f"a kind ({', '.join(KINDS)}) or a component name")
    parser.add_argument("name", nargs="?", help="the component (with a kind)")
    parser.add_argument("--plugins-dir", default=None, help="folder of plugin files to load first")
    args = parser.parse_args(argv)
    load_plugins(args.plugins_dir)
    if args.name is not None:
        print(describe(args.kind_or_name, args.name))
        return 0
    if args.kind_or_name in KINDS:  # a kind alone: its components
        registry = registries()[args.kind_or_name]
        print(f"{args.kind_or_name}s (python -m dndbench options {args.kind_or_name} NAME):")
        for entry in registry.entries():
            print(f"  {entry.name}  {entry.summary}")
        return 0
    kinds = [k for k, r in registries().items() if args.kind_or_name in r]
    if len(kinds) != 1:
        where = f"it names a {' and a '.join(kinds)}" if kinds else "no component has that name"
        raise ConfigError(f"options {args.kind_or_name}: {where}; say which with "
                          f"`options KIND NAME` (kinds: {', '.join(KINDS)})")
    print(describe(kinds[0], args.kind_or_name))
    return 0
