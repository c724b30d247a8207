"""The README's install works with type checkers: mypy in a user's own project, which knows
nothing of this checkout (no MYPYPATH, no PYTHONPATH), finds the installed ``taskflow``."""

from __future__ import annotations

import os
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from tests.typed.helpers import run_strict_mypy

ROOT = Path(__file__).resolve().parents[2]

USER_CODE = textwrap.dedent(
    """
    from taskflow import App

    app = App("userproject")


    @app.task(queue="emails")
    def send_email(to: str, subject: str) -> str:
        return f"sent {subject!r} to {to}"


    handle = send_email.delay("a@example.com", "hello")
    text: str = handle.get(timeout=5)
    send_email.delay("a@example.com", 42)
    """
).lstrip()


def user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MYPYPATH"}}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.mark.timeout(300)
def test_mypy_in_a_user_project_finds_the_installed_package(tmp_path: Path) -> None:
    project = tmp_path / "userproject"
    project.mkdir()
    assert not project.resolve().is_relative_to(ROOT)
    # The interpreter that runs the tests is the one the README's command installed into.
    assert metadata.distribution("taskflow-queue").name == "taskflow-queue"
    (project / "jobs.py").write_text(USER_CODE)
    proc = run_strict_mypy("jobs.py", project, tmp_path / "cache", user_env())
    output = proc.stdout + proc.stderr
    assert "Cannot find implementation or library stub" not in output, output
    assert "import-untyped" not in output, output
    wrong_call = USER_CODE.splitlines().index('send_email.delay("a@example.com", 42)') + 1
    assert output.splitlines() == [
        f'jobs.py:{wrong_call}: error: Argument 2 to "delay" of "Task" has incompatible '
        'type "int"; expected "str"  [arg-type]'
    ], output
