"""The one command line: every command resolves, errors become one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from src import cli
from src.registry import RegistryError


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_resolves_to_a_callable(command: str) -> None:
    assert callable(cli.resolve(command))


def test_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "src.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    for command in cli.COMMANDS:
        assert command in result.stdout


def test_bad_config_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROFILE", "no-such-profile")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("clothing-classifier serve: Unknown profile 'no-such-profile'")


def test_bad_setting_names_the_field(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERVE_PORT", "not-a-port")
    assert cli.main(["serve"]) == 2
    assert "serve.port" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "src.cli", "no-such-command"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_a_missing_dependency_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def needs_prefect(_argv: list[str] | None) -> int:
        import prefect_not_installed_here  # noqa: F401

        return 0

    monkeypatch.setattr(cli, "resolve", lambda _command: needs_prefect)
    assert cli.main(["train"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "needs 'prefect_not_installed_here'" in err
    assert "pip install 'clothing-classifier[train]'" in err


def test_a_missing_module_of_the_project_is_not_blamed_on_the_install() -> None:
    line = cli.failure_line("serve", ModuleNotFoundError("gone", name="src.serving.gone"))
    assert "failed: ModuleNotFoundError" in line and "extra" not in line


def test_a_refusal_is_its_own_message_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuses(_argv: list[str] | None) -> int:
        raise RegistryError("Version 3 has validation_status='failed'; it cannot be promoted.")

    monkeypatch.setattr(cli, "resolve", lambda _command: refuses)
    assert cli.main(["registry"]) == 1
    assert capsys.readouterr().err.strip() == (
        "clothing-classifier registry: Version 3 has validation_status='failed'; it cannot be "
        "promoted."
    )
