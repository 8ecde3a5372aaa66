"""The documentation's generated reference pages, built from the code so they cannot drift.

    python scripts/gen_reference.py config|cli|store     # print one page's generated part

Three generators, each returning Markdown:

- `config_reference()`: every key of the config schema (precisionlab/config.py, with the model's
  ModelConfig from precisionlab/train/model.py) with its type, default, allowed values and one line
  of help. The help is the field's trailing `# comment` in the source (read with tokenize, so the
  dataclasses need no extra metadata); a group field without one takes its class docstring's first
  sentence. Group dataclasses are walked recursively, so `precision.operands.fwd_x.format` is a key
  of its own; `data` has one schema per `data.source`, each documented.
- `cli_reference()`: every command of the Typer app (`precisionlab.cli.app`) through click's
  introspection: usage, help, and each option with its type, default and help.
- `store_reference()`: the results store's SQL schema (`precisionlab.store.schema.DDL`) and version.

It is also the MkDocs hook named in mkdocs.yml (`hooks:`): `on_page_markdown` replaces a page's
`<!-- generated:NAME -->` marker with NAME's Markdown at build time.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from functools import lru_cache
from typing import Any, Iterator

MARKER = "<!-- generated:{} -->"


# ---- config


@dataclasses.dataclass
class Key:
    """One config key: its dotted path and what the reference prints about it."""

    path: str
    type: str
    default: str
    choices: tuple[str, ...]
    help: str


@lru_cache(maxsize=None)
def _comments(module_file: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): the field's trailing comment} for every class of a source file."""
    source = open(module_file, encoding="utf-8").read()
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    lines = range(item.lineno, (item.end_lineno or item.lineno) + 1)
                    text = next((by_line[n] for n in lines if n in by_line), "")
                    if text:
                        found[(node.name, item.target.id)] = text
    return found


def field_help(cls: type, f: dataclasses.Field) -> str:
    """One line of help for field `f` of dataclass `cls`: its trailing comment, else (for a group
    field) its class docstring's first sentence; '' when there is neither."""
    for klass in cls.__mro__:  # a subclass (SweepConfig) inherits its parent's fields and comments
        if dataclasses.is_dataclass(klass) and f.name in klass.__dict__.get("__annotations__", {}):
            text = _comments(inspect.getsourcefile(klass)).get((klass.__name__, f.name), "")
            if text:
                return text
            break
    group = _hints(cls)[f.name]
    if dataclasses.is_dataclass(group) and group.__doc__ and not group.__doc__.startswith(group.__name__ + "("):
        return " ".join(group.__doc__.strip().split("\n\n")[0].split()).split(". ")[0].rstrip(".")
    return ""


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return f"{_type_name(inner)} | null"
    if typing.get_origin(annotation) in (list, typing.List):
        return f"list[{_type_name(args[0])}]"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(f: dataclasses.Field) -> Any:
    from omegaconf import MISSING

    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def _show(value: Any) -> str:
    from omegaconf import MISSING

    if value is MISSING or value == "???":
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def walk(cls: type, prefix: str = "") -> Iterator[Key]:
    """Every leaf key of dataclass `cls`, depth first in declaration order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        path, annotation = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(annotation):
            yield from walk(annotation, path + ".")
            continue
        yield Key(path, _type_name(annotation), _show(_default(f)), tuple(f.metadata.get("choices", ())),
                  field_help(cls, f))


def groups() -> list[tuple[str, str, list[Key]]]:
    """(title, intro, keys) per section of the config reference: the root's groups in order, the
    top-level scalars together, each data source apart, and the sweep's own group last."""
    from precisionlab.config import DATA_SOURCES, SweepConfig

    sections: list[tuple[str, str, list[Key]]] = []
    top: list[Key] = []
    hints = _hints(SweepConfig)
    for f in dataclasses.fields(SweepConfig):
        annotation = hints[f.name]
        if f.name == "data":
            for source, schema in DATA_SOURCES.items():
                intro = f"The keys of `data` when `data.source={source}` (each source has keys of its own)"
                sections.append((f"data (`data.source={source}`)", intro, list(walk(schema, "data."))))
        elif dataclasses.is_dataclass(annotation):
            sections.append((f.name, field_help(SweepConfig, f), list(walk(annotation, f.name + "."))))
        else:
            top.extend(k for k in walk(SweepConfig) if k.path == f.name)
    sections.insert(0, ("top level", "Keys outside any group.", top))
    return sections


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    out = []
    for title, intro, keys in groups():
        out.append(f"## {title}\n")
        if intro:
            out.append(_cell(intro[0].upper() + intro[1:]) + ".\n" if not intro.endswith(".") else intro + "\n")
        out.append("| key | type | default | allowed | help |")
        out.append("|---|---|---|---|---|")
        for k in keys:
            allowed = ", ".join(f"`{c}`" for c in k.choices)
            out.append(f"| `{k.path}` | {_cell(k.type)} | `{_cell(k.default)}` | {allowed} | {_cell(k.help)} |")
        out.append("")
    return "\n".join(out)


# ---- CLI


# Duck-typed click: recent Typer releases ship their own copy of click, whose classes are not click's.


def _context(command: Any, name: str) -> Any:
    return command.context_class(command, info_name=name)


def _is_group(command: Any) -> bool:
    return hasattr(command, "list_commands")


def _commands(command: Any, name: str) -> Iterator[tuple[str, Any]]:
    yield name, command
    if _is_group(command):
        ctx = _context(command, name)
        for sub in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, sub), f"{name} {sub}")


def cli_commands() -> list[tuple[str, Any]]:
    """(full name, click command) of the app and every command under it."""
    import typer

    from precisionlab.cli import app

    return list(_commands(typer.main.get_command(app), "precisionlab"))


def _option_row(param: Any, ctx: Any) -> str:
    """One table row: the option's spellings with its value's type, and its help with its default,
    as `--help` prints them."""
    names, help_text = param.get_help_record(ctx)
    names = ", ".join(f"`{n.strip()}`" for n in names.split(", "))
    kind = "argument" if param.param_type_name == "argument" else "option"
    return f"| {names} | {kind} | {_cell(' '.join(help_text.split()))} |"


def _help_markdown(text: str) -> str:
    """A command's help as Markdown: its paragraphs, and its example command lines as a code block."""
    out, examples = [], []
    for paragraph in text.split("\n\n"):
        paragraph = " ".join(paragraph.replace("\b", "").split())
        if paragraph.startswith("precisionlab "):
            examples.append(paragraph)
            continue
        if examples:
            out.append("```\n" + "\n".join(examples) + "\n```")
            examples = []
        out.append(paragraph)
    if examples:
        out.append("```\n" + "\n".join(examples) + "\n```")
    return "\n\n".join(out) + "\n"


def cli_reference() -> str:
    commands = [(n, c) for n, c in cli_commands() if n != "precisionlab" and not _is_group(c)]
    out = ["| command | what it does |", "|---|---|"]
    out += [f"| [`{n}`](#{n.replace(' ', '-')}) | {_cell(c.get_short_help_str(limit=200))} |" for n, c in commands]
    out.append("")
    for name, command in cli_commands():
        ctx = _context(command, name)
        title = name if name != "precisionlab" else "precisionlab (the app)"
        out.append(f"## `{title}`\n")
        out.append("```\n" + command.get_usage(ctx) + "\n```\n")
        if command.help:
            out.append(_help_markdown(command.help))
        if command.context_settings.get("allow_extra_args"):
            out.append("Further arguments are Hydra overrides (`key=value`; a sweep takes `key=a,b,c`), "
                       "see the [config reference](config.md).\n")
        params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
        if params:
            out.append("| option | kind | help |")
            out.append("|---|---|---|")
            out.extend(_option_row(p, ctx) for p in params)
            out.append("")
        if _is_group(command):
            subs = command.list_commands(ctx)
            out.append("Commands: " + ", ".join(f"`{name} {s}`" for s in subs) + ".\n")
    return "\n".join(out)


# ---- store


def store_reference() -> str:
    from precisionlab.store import schema

    return (f"Schema version **{schema.SCHEMA_VERSION}**; its tables, in the order their foreign keys need: "
            + ", ".join(f"`{t}`" for t in schema.TABLES) + ".\n\n```sql\n" + schema.DDL.strip() + "\n```\n")


GENERATORS = {"config": config_reference, "cli": cli_reference, "store": store_reference}


# ---- the MkDocs hook


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each `<!-- generated:NAME -->` marker with NAME's reference (MkDocs event hook)."""
    for name, generate in GENERATORS.items():
        marker = MARKER.format(name)
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in GENERATORS:
        print(f"error: name one page: {', '.join(GENERATORS)}", file=sys.stderr)
        sys.exit(2)
    print(GENERATORS[sys.argv[1]]())
