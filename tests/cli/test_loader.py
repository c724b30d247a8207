"""``-A module[:attr]``: which App is found, and the one-line reason when none is."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskflow.cli.loader import AppLoadError, check_module, load_app, split_spec


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` for test modules, forgotten again after the test."""
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(directory: Path, name: str, source: str) -> None:
    path = directory.joinpath(*name.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


APP = "from taskflow import App\n"


def test_the_app_attribute_is_taken_by_default(modules: Path) -> None:
    write(modules, "tf_default", APP + "app = App('one')\nother = App('two')\n")

    assert load_app("tf_default").name == "one"


def test_a_named_attribute_is_taken(modules: Path) -> None:
    write(modules, "tf_named", APP + "app = App('one')\nother = App('two')\n")

    assert load_app("tf_named:other").name == "two"


def test_a_dotted_attribute_is_followed(modules: Path) -> None:
    write(modules, "tf_dotted", APP + "class Holder:\n    app = App('held')\n")

    assert load_app("tf_dotted:Holder.app").name == "held"


def test_the_only_app_of_a_module_is_taken_when_it_has_no_app_attribute(modules: Path) -> None:
    write(modules, "tf_only", APP + "application = App('only')\nalias = application\n")

    assert load_app("tf_only").name == "only"


def test_a_module_in_a_package_is_found(modules: Path) -> None:
    write(modules, "tf_pkg.__init__", "")
    write(modules, "tf_pkg.tasks", APP + "app = App('nested')\n")

    assert load_app("tf_pkg.tasks:app").name == "nested"


def test_several_apps_and_no_app_attribute_name_the_candidates(modules: Path) -> None:
    write(modules, "tf_several", APP + "a = App('a')\nb = App('b')\n")

    with pytest.raises(AppLoadError, match=r"several Apps \(a, b\); name one as tf_several:NAME"):
        load_app("tf_several")


def test_a_module_without_any_app_says_so(modules: Path) -> None:
    write(modules, "tf_none", "x = 1\n")

    with pytest.raises(AppLoadError, match="module 'tf_none' has no attribute 'app' and no App"):
        load_app("tf_none")


def test_a_missing_attribute_is_named(modules: Path) -> None:
    write(modules, "tf_attr", APP + "app = App('x')\n")

    with pytest.raises(AppLoadError, match="^module 'tf_attr' has no attribute 'nope'$"):
        load_app("tf_attr:nope")


def test_an_attribute_that_is_not_an_app_is_refused(modules: Path) -> None:
    write(modules, "tf_notapp", "app = 42\n")

    with pytest.raises(
        AppLoadError, match=r"'tf_notapp:app' is not a taskflow App \(it is a int\)"
    ):
        load_app("tf_notapp")


def test_a_missing_module_is_not_found(modules: Path) -> None:
    with pytest.raises(AppLoadError) as err:
        load_app("tf_missing_module")

    assert str(err.value) == (
        "cannot import module 'tf_missing_module': No module named 'tf_missing_module'"
    )


def test_a_missing_parent_package_is_not_found(modules: Path) -> None:
    with pytest.raises(AppLoadError, match="cannot import module 'tf_nopkg.tasks': No module"):
        load_app("tf_nopkg.tasks")


def test_a_module_whose_own_import_fails_is_reported_as_failing(modules: Path) -> None:
    write(modules, "tf_needs", "import os\nimport tf_not_installed_anywhere\n")

    with pytest.raises(AppLoadError) as err:
        load_app("tf_needs")

    assert str(err.value) == (
        f"module 'tf_needs' failed to import at {modules / 'tf_needs.py'}:2: "
        "ModuleNotFoundError: No module named 'tf_not_installed_anywhere'"
    )


def test_a_module_that_raises_while_importing_is_reported_with_the_error(modules: Path) -> None:
    write(modules, "tf_raises", "x = 1\n\nraise RuntimeError('boom\\nsecond line')\n")

    with pytest.raises(AppLoadError) as err:
        load_app("tf_raises")

    assert str(err.value) == (
        f"module 'tf_raises' failed to import at {modules / 'tf_raises.py'}:3: RuntimeError: boom"
    )


def test_the_failing_statement_is_the_last_one_in_the_users_code(modules: Path) -> None:
    # The error is raised deep inside taskflow and the standard library; the user needs
    # the line of their own code that called them, in whichever of their modules it is.
    write(modules, "tf_helpers", "import json\n\ndef settings():\n    return json.loads('{')\n")
    write(
        modules,
        "tf_deep",
        APP + "from tf_helpers import settings\napp = App('deep')\nsettings()\n",
    )
    write(modules, "tf_config", APP + "app = App('bad', broker='nosuch://x')\n")

    with pytest.raises(AppLoadError) as deep:
        load_app("tf_deep")
    with pytest.raises(AppLoadError) as config:
        load_app("tf_config")

    assert str(deep.value).startswith(
        f"module 'tf_deep' failed to import at {modules / 'tf_helpers.py'}:4: JSONDecodeError: "
    )
    assert str(config.value).startswith(
        f"module 'tf_config' failed to import at {modules / 'tf_config.py'}:2: ConfigError: "
    )


def test_a_syntax_error_names_its_file_and_line(modules: Path) -> None:
    write(modules, "tf_syntax", "x = 1\ndef broken(:\n")

    with pytest.raises(AppLoadError) as err:
        load_app("tf_syntax")

    assert str(err.value) == (
        f"module 'tf_syntax' failed to import at {modules / 'tf_syntax.py'}:2: "
        "SyntaxError: invalid syntax"
    )


def test_a_module_that_exits_while_importing_is_reported_as_failing(modules: Path) -> None:
    write(modules, "tf_exits", "import sys\nsys.exit(3)\n")

    with pytest.raises(AppLoadError) as err:
        load_app("tf_exits")

    assert str(err.value) == (
        f"module 'tf_exits' failed to import at {modules / 'tf_exits.py'}:2: SystemExit: 3"
    )


def test_the_current_directory_is_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "tf_in_cwd", APP + "app = App('cwd')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert load_app("tf_in_cwd").name == "cwd"
    finally:
        sys.modules.pop("tf_in_cwd", None)


@pytest.mark.parametrize("spec", ["", ":app", "mod:", "a..b", ".mod"])
def test_a_malformed_spec_is_refused(spec: str) -> None:
    with pytest.raises(AppLoadError, match="invalid app spec"):
        split_spec(spec)


def test_a_spec_splits_into_module_and_attribute() -> None:
    assert split_spec("pkg.mod:obj.app") == ("pkg.mod", "obj.app")
    assert split_spec("pkg.mod") == ("pkg.mod", None)


def test_checking_a_module_finds_it_without_running_it(modules: Path) -> None:
    write(modules, "tf_checked", "raise RuntimeError('must not run')\n")

    check_module("tf_checked:app")

    assert "tf_checked" not in sys.modules


def test_checking_a_missing_module_fails_like_loading_it(modules: Path) -> None:
    with pytest.raises(AppLoadError, match="^cannot import module 'tf_absent': No module named"):
        check_module("tf_absent")
    with pytest.raises(AppLoadError, match="^cannot import module 'tf_absent.sub': No module"):
        check_module("tf_absent.sub")
