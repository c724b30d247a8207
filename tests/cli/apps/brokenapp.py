"""An app module that fails while importing: it needs a package that is not installed."""

from __future__ import annotations

import taskflow_cli_test_missing_dependency  # type: ignore[import-not-found]  # noqa: F401

from taskflow import App

app = App("broken")
