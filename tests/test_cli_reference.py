"""README.md's command line reference is the CLI's own help: CI fails when they differ."""

from __future__ import annotations

import difflib
from pathlib import Path

import click
import pytest

from reliability import cli_reference
from reliability.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_reference_is_what_the_cli_says():
    documented = cli_reference.section_of(README.read_text())
    generated = cli_reference.render()
    if documented != generated:
        diff = "".join(
            list(
                difflib.unified_diff(
                    documented.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    "README.md",
                    "the CLI's help",
                )
            )[:60]
        )
        pytest.fail(
            "README.md's command line reference differs from the CLI; regenerate it with\n"
            f"    {cli_reference.REGENERATE}\n\n{diff}"
        )


def test_every_command_has_its_section_usage_and_options():
    text = cli_reference.render()
    paths = [ctx.command_path for ctx in cli_reference.walk(main, "reliability")]
    assert paths[0] == "reliability"
    assert {"reliability status", "reliability incidents list", "reliability db upgrade"} <= set(
        paths
    )
    for path in paths:
        assert f"### `{path}`\n\n`{path} " in text
    status = text.split("### `reliability status`")[1]
    assert "| `--watch [SECONDS]` |" in status
    assert "| `-c, --config FILE` |" in status
    assert "Exit status: 0 when all is fine" in status


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = cli_reference.render()
    monkeypatch.setenv("COLUMNS", "250")
    assert cli_reference.render() == narrow


def test_help_text_is_escaped_for_markdown_outside_code_spans():
    @click.group()
    def tool() -> None:
        """Tool."""

    @tool.command()
    @click.option("--out", help="Writes <uid>.json | one per *.py file.")
    def build(out: str) -> None:
        """Build `dashboards/*.py` into <uid>.json.

        \b
        keep   <this>   as it is
        """

    text = cli_reference.render(tool, "tool")
    assert "Build `dashboards/*.py` into &lt;uid>.json." in text
    assert "```text\nkeep   <this>   as it is\n```" in text
    assert "| `--out TEXT` | Writes &lt;uid>.json \\| one per \\*.py file. |" in text


def test_write_replaces_only_the_marked_section_and_check_tells_how_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# tool\n\nintro\n\n{cli_reference.START}\nstale\n{cli_reference.END}\n\n## after\n"
    )
    assert cli_reference.run(["--check", str(readme)]) == 1
    assert cli_reference.REGENERATE in capsys.readouterr().out
    assert cli_reference.run(["--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# tool\n\nintro\n\n" + cli_reference.START + "\n")
    assert text.endswith(cli_reference.END + "\n\n## after\n")
    assert cli_reference.section_of(text) == cli_reference.render()
    assert cli_reference.run(["--check", str(readme)]) == 0

    readme.write_text("# no markers\n")
    assert cli_reference.run(["--write", str(readme)]) == 2
    assert readme.read_text() == "# no markers\n"
