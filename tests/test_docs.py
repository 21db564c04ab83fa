"""The docs that are made from code stay current, and every setting has its help text."""

from __future__ import annotations

from pathlib import Path

from jupyter_sessions.app import SessionsApp
from jupyter_sessions.cli import config_docs, main

ROOT = Path(__file__).parent.parent


def test_every_setting_has_help() -> None:
    for name, trait in SessionsApp.class_own_traits(config=True).items():
        assert trait.help and len(trait.help) > 20, name


def test_configuration_doc_is_current() -> None:
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert current == config_docs(), "run: jupyter-sessions config-docs > docs/configuration.md"


def test_cli_prints_the_image_tag(capsys) -> None:
    assert main(["image-tag"]) == 0
    assert capsys.readouterr().out.startswith("jupyter-sessions/kernel:")


def test_agents_from_the_command_line_are_parsed_and_checked() -> None:
    import pytest
    from traitlets import TraitError

    app = SessionsApp()
    app.agents = '[{"id": "local", "kind": "local"}]'
    assert app.agents == [{"id": "local", "kind": "local"}]
    for bad in ("bogus", '[{"kind": "kubernetes"}]', '[{"kind": "docker"}]', "[1]"):
        with pytest.raises(TraitError):
            app.agents = bad
