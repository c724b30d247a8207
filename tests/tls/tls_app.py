"""An app for the TLS tests, run by ``taskflow worker -A`` in a subprocess: its broker URL
(with the TLS options) and its password come from the environment only."""

from __future__ import annotations

from taskflow import App

app = App("tlsit")


@app.task(name="tlsit.shout")
def shout(text: str) -> str:
    """Upper-case ``text``."""
    return text.upper()
