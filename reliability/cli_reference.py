"""The command line reference in README.md, generated from the CLI's own help.

    python -m reliability.cli_reference                    # print it
    python -m reliability.cli_reference --write README.md  # replace README's section
    python -m reliability.cli_reference --check README.md  # exit 1 if README's differs

Every command of `reliability` (depth first, subcommands in name order, hidden ones left
out) becomes a heading, its usage line, its help text and a table of its options, each as
`--help` words them. The README holds it between two marker comments; tests/
test_cli_reference.py fails when the two differ, so the reference cannot drift from the
code.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import click

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"
REGENERATE = "python -m reliability.cli_reference --write README.md"
# Fixed, so the text does not depend on the terminal it was generated in.
WIDTH = 100


def walk(
    command: click.Command, name: str, parent: click.Context | None = None
) -> Iterator[click.Context]:
    """A context for `command` and for each of its visible subcommands, depth first."""
    ctx = click.Context(
        command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH
    )
    yield ctx
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            child = command.get_command(ctx, sub)
            if child is not None and not child.hidden:
                yield from walk(child, sub, ctx)


def render(command: click.Command | None = None, name: str = "reliability") -> str:
    """The reference as Markdown (without the markers), ending with a newline."""
    if command is None:
        from reliability.cli import main

        command = main
    out = [
        f"<!-- Generated from the CLI's help by `{REGENERATE}`; edit the commands' help, "
        "not this. -->",
        "",
        "Every command also takes `-h/--help`.",
        "",
    ]
    for ctx in walk(command, name):
        out.extend(_command(ctx))
    return "\n".join(out).rstrip("\n") + "\n"


def _command(ctx: click.Context) -> list[str]:
    command = ctx.command
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    lines = [f"### `{ctx.command_path}`", "", f"`{usage}`", ""]
    help_text = _help(command)
    if help_text:
        lines.extend([help_text, ""])
    rows = []
    help_option = command.get_help_option(ctx)
    for param in command.get_params(ctx):
        if param is help_option or isinstance(param, click.Argument):
            continue  # arguments are in the usage line
        record = param.get_help_record(ctx)
        if record is not None:
            rows.append(f"| `{_cell(record[0])}` | {_cell(_markdown(record[1]))} |")
    if rows:
        lines.extend(["| option | meaning |", "| --- | --- |", *rows, ""])
    if isinstance(command, click.Group):
        subs = [
            (name, sub)
            for name in command.list_commands(ctx)
            if (sub := command.get_command(ctx, name)) is not None and not sub.hidden
        ]
        lines.extend(
            f"- `{ctx.command_path} {name}`: {_markdown(sub.get_short_help_str(limit=WIDTH))}"
            for name, sub in subs
        )
        lines.append("")
    return lines


def _help(command: click.Command) -> str:
    """The help text as Markdown: paragraphs joined into lines, `\\b` blocks kept verbatim."""
    text = inspect.cleandoc(command.help or "").split("\f", 1)[0]
    paragraphs = []
    for block in text.split("\n\n"):
        if block.startswith("\b\n"):
            paragraphs.append("```text\n" + block[2:].rstrip() + "\n```")
        elif block.strip():
            paragraphs.append(_markdown(" ".join(line.strip() for line in block.splitlines())))
    return "\n\n".join(paragraphs)


def _markdown(text: str) -> str:
    """Help text as Markdown shows it: `<uid>` and `*.py` escaped, code spans left alone."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = parts[i].replace("\\", "\\\\").replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def replace_section(document: str, section: str) -> str:
    """`document` with the text between its markers replaced by `section`.

    ValueError when the markers are missing or out of order.
    """
    start, end = document.find(START), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} section")
    return document[: start + len(START)] + "\n" + section + document[end:]


def section_of(document: str) -> str:
    """The text between the markers (what `replace_section` put there)."""
    start, end = document.find(START), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} section")
    return document[start + len(START) : end].removeprefix("\n")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.cli_reference")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="FILE", help="replace FILE's section")
    action.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's differs")
    args = parser.parse_args(argv)
    generated = render()
    target = args.write or args.check
    if target is None:
        sys.stdout.write(generated)
        return 0
    try:
        document = target.read_text()
        updated = replace_section(document, generated)
    except (OSError, ValueError) as exc:
        print(f"{target}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != document:
            print(f"{target}: the command line reference is out of date: {REGENERATE}")
            return 1
        return 0
    if updated != document:
        target.write_text(updated)
        print(f"{target}: command line reference updated")
    return 0


if __name__ == "__main__":
    sys.exit(run())
