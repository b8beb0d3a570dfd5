"""A module that fails to import stops the program instead of silently dropping a feature."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keychest import cli


def test_a_sub_command_whose_module_is_missing_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "typo", ("keychest.cli.no_such_module", "typo"))
    result = CliRunner().invoke(cli.main, ["typo"])
    assert isinstance(result.exception, ModuleNotFoundError)
    assert result.exception.name == "keychest.cli.no_such_module"


def test_the_help_lists_every_sub_command() -> None:
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(cli.COMMANDS)
