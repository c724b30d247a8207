"""Find the user's ``App`` from a ``module[:attr]`` spec, as ``-A`` and ``TASKFLOW_APP`` give it.

Every failure is an :class:`AppLoadError` with a one-line message that says which of the
three things went wrong: the module does not exist, the module raised while importing, or
the attribute is missing or is not an ``App``. The command line prints that line and exits
with status 2; nobody needs a traceback to fix a typo. A module that raised names the file
and line of the user's statement that failed (the last frame in the user's own code, not
in taskflow, the standard library or installed packages) and the exception.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from ..app import App

__all__ = ["DEFAULT_ATTRIBUTE", "AppLoadError", "check_module", "load_app", "split_spec"]

DEFAULT_ATTRIBUTE = "app"


class AppLoadError(Exception):
    """The ``-A`` spec does not lead to an ``App``; the message is one line for the user."""


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"pkg.mod:attr"`` -> ``("pkg.mod", "attr")``; ``"pkg.mod"`` -> ``("pkg.mod", None)``."""
    module, sep, attr = spec.strip().partition(":")
    if not module or (sep and not attr) or any(not part for part in module.split(".")):
        raise AppLoadError(f"invalid app spec {spec!r}: expected module or module:attribute")
    return module, attr if sep else None


def load_app(spec: str) -> App:
    """Import the module of ``spec`` (current directory first on ``sys.path``) and return
    its ``App``: the named attribute, else ``app``, else the module's only ``App``."""
    module_name, attr = split_spec(spec)
    module = _import(module_name)
    if attr is not None:
        return _as_app(_resolve(module, module_name, attr), spec)
    if hasattr(module, DEFAULT_ATTRIBUTE):
        return _as_app(getattr(module, DEFAULT_ATTRIBUTE), f"{module_name}:{DEFAULT_ATTRIBUTE}")
    return _only_app(module, module_name)


def check_module(spec: str) -> None:
    """Fail like :func:`load_app` when the module cannot be found, without running it.

    The ``-P`` supervisor uses this so that a typo fails once, in the parent, while the
    module's import-time side effects happen only in the worker processes. (A parent
    package of a dotted name is imported to look inside it.)
    """
    module_name, _ = split_spec(spec)
    _ensure_cwd_on_path()
    try:
        found = importlib.util.find_spec(module_name)
    except ModuleNotFoundError as exc:
        raise AppLoadError(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:
        raise _failed(module_name, exc) from None
    if found is None:
        raise AppLoadError(f"cannot import module {module_name!r}: No module named {module_name!r}")


def _ensure_cwd_on_path() -> None:
    # Like ``python -m`` and celery: the directory the command runs in is importable.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _import(module_name: str) -> ModuleType:
    _ensure_cwd_on_path()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_the_spec(module_name, exc.name):
            raise AppLoadError(f"cannot import module {module_name!r}: {exc}") from None
        raise _failed(module_name, exc) from None
    except (Exception, SystemExit) as exc:
        # SystemExit too: a module that exits while being imported is a broken module.
        raise _failed(module_name, exc) from None


def _is_the_spec(module_name: str, missing: str | None) -> bool:
    # "No module named 'x'" is about the spec only when 'x' is the module or one of its
    # parents; a module that exists but imports something missing failed to import.
    if missing is None:
        return False
    return module_name == missing or module_name.startswith(missing + ".")


def _failed(module_name: str, exc: BaseException) -> AppLoadError:
    # str() of a SyntaxError repeats its place, which the message gives once.
    text = (exc.msg or "") if isinstance(exc, SyntaxError) else str(exc)
    detail = text.splitlines()[0] if text else ""
    kind = type(exc).__name__
    where = _failing_statement(module_name, exc)
    at = f" at {where}" if where else ""
    return AppLoadError(
        f"module {module_name!r} failed to import{at}: {kind}: {detail}"
        if detail
        else f"module {module_name!r} failed to import{at}: {kind}"
    )


def _failing_statement(module_name: str, exc: BaseException) -> str | None:
    """``file:line`` of the statement in the user's code that raised ``exc``, if any.

    The last traceback frame outside taskflow, the standard library and installed
    packages; failing that (an app installed as a package), the last frame in the
    module's own file. A syntax error has no frame: its own position is taken.
    """
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{_shown(exc.filename)}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.lineno is not None]
    mine = [f for f in frames if not _is_library(f.filename)]
    if not mine:
        own = _module_file(module_name)
        mine = [f for f in frames if own is not None and _same_file(f.filename, own)]
    if not mine:
        return None
    return f"{_shown(mine[-1].filename)}:{mine[-1].lineno}"


@functools.cache
def _library_roots() -> tuple[Path, ...]:
    import sysconfig  # only to explain a failed import

    paths = sysconfig.get_paths()
    roots = {Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.add(Path(__file__).resolve().parents[1])  # taskflow itself
    return tuple(roots)


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return True
    path = Path(filename).resolve()
    return any(path.is_relative_to(root) for root in _library_roots())


def _module_file(module_name: str) -> str | None:
    module = sys.modules.get(module_name)
    found = getattr(module, "__file__", None)
    if isinstance(found, str):
        return found
    try:
        spec = importlib.util.find_spec(module_name)
    except Exception:
        return None
    return spec.origin if spec is not None else None


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _shown(filename: str) -> str:
    """The path relative to the current directory when it is inside it, else absolute."""
    path = Path(filename).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _resolve(module: ModuleType, module_name: str, attr: str) -> object:
    target: object = module
    for part in attr.split("."):
        if not part or not hasattr(target, part):
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    return target


def _as_app(value: object, spec: str) -> App:
    if not isinstance(value, App):
        raise AppLoadError(f"{spec!r} is not a taskflow App (it is a {type(value).__name__})")
    return value


def _only_app(module: ModuleType, module_name: str) -> App:
    found = {name: value for name, value in vars(module).items() if isinstance(value, App)}
    apps = {id(value): value for value in found.values()}
    if len(apps) == 1:
        return next(iter(apps.values()))
    if not apps:
        raise AppLoadError(
            f"module {module_name!r} has no attribute {DEFAULT_ATTRIBUTE!r} and no App"
        )
    names = ", ".join(sorted(found))
    raise AppLoadError(
        f"module {module_name!r} has several Apps ({names}); name one as {module_name}:NAME"
    )
