"""What the package and the README promise a newcomer is true: metadata, extras, the
README's sample, the files it points to, and every backend it claims is built."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from taskflow.urls import SCHEMES

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        table: dict[str, Any] = tomllib.load(fh)["project"]
    return table


def test_metadata_names_authors_versions_and_typing() -> None:
    meta = project()
    assert meta["authors"] == [{"name": "taskflow authors"}]
    assert meta["requires-python"] == ">=3.11"
    classifiers = set(meta["classifiers"])
    for wanted in (
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
        "Framework :: AsyncIO",
        "Topic :: System :: Distributed Computing",
    ):
        assert wanted in classifiers, wanted
    assert meta["keywords"]
    assert (ROOT / "taskflow" / "py.typed").is_file()
    # An SPDX expression: setuptools refuses the older table form, and license
    # classifiers beside it, from 2027-02-18.
    assert meta["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in classifiers)


def test_every_scheme_is_built_has_its_extra_and_is_in_the_readme() -> None:
    extras = project()["optional-dependencies"]
    row = next(line for line in README.splitlines() if line.startswith("| Backends |"))
    for name, scheme in SCHEMES.items():
        assert f"`{name}://" in row, name
        if scheme.extra is not None:
            assert scheme.extra in extras, name
            (everything,) = extras["all"]
            assert scheme.extra in re.split(r"[\[\],]", everything), name
        # The broker class behind the scheme exists (nothing claimed that is not built).
        module, _, cls = scheme.broker.partition(":")
        assert hasattr(importlib.import_module(module), cls), scheme.broker


def test_the_readme_sample_runs_as_printed() -> None:
    sample = re.search(r"```python\n(.*?)```", README, re.DOTALL)
    assert sample is not None
    proc = subprocess.run(
        [sys.executable, "-c", sample[1]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "sent 'hello' to a@example.com\n"


def test_every_path_the_readme_names_exists() -> None:
    named = set(re.findall(r"\b((?:docs|scripts|examples|bench|\.ci)/[\w./-]*\w)", README))
    assert {"scripts/test", "scripts/services.sh", "examples/quickstart.py"} <= named
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, missing


def test_the_readme_commands_are_what_the_scripts_run() -> None:
    assert "\n    bash scripts/test\n" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test" in ci
    assert "bash scripts/services.sh" in ci
    assert "../shared" not in ci
    assert "../shared" not in (ROOT / "scripts" / "test").read_text()
    for command in (".venv/bin/ruff check .", ".venv/bin/ruff format --check ."):
        assert command in README and command in ci, command
