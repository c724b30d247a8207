"""``taskflow snapshot export|import``: move waiting and dead tasks between environments.

A snapshot is a JSON-lines file (its format is in ``docs/operations.md``). Export writes
to a temporary file beside ``--out`` and renames it when complete, so a failed export
leaves no partial file. Import is a dry run unless ``--apply`` is given; either way the
whole file is checked before anything is written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any

import click

from .common import CliError
from .opscommon import APPLY_HINT, apply_option, ops_command, session
from .render import Step, jsonable

__all__ = ["snapshot"]

STATES = ("ready", "scheduled", "dead")


@click.group("snapshot")
def snapshot() -> None:
    """Export tasks to a file, or import them from one."""


class _CountingWriter:
    """A text file that advances a progress bar by one per task line written."""

    def __init__(self, fp: IO[str], step: Step) -> None:
        self._fp = fp
        self._step = step
        self._header = True  # the first line is the header, not a task

    def write(self, text: str) -> int:
        lines = text.count("\n")
        if lines and self._header:
            lines -= 1
            self._header = False
        if lines:
            self._step.advance(lines)
        return self._fp.write(text)

    def writelines(self, lines: Any) -> None:
        for text in lines:
            self.write(text)

    def flush(self) -> None:
        self._fp.flush()


def _states(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in value.split(",") if s.strip()))
    unknown = [s for s in names if s not in STATES]
    if unknown or not names:
        bad = ", ".join(unknown) or repr(value)
        raise CliError(f"--states: unknown state {bad} (choose from {', '.join(STATES)})")
    return names


@snapshot.command("export")
@ops_command
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--queue", "-Q", "queues", multiple=True, help="Only this queue (repeatable).")
@click.option("--states", default="ready,scheduled,dead", show_default=True, metavar="S1,S2")
@click.option("--redact", is_flag=True, help="Leave the task arguments out of the file.")
def export(  # noqa: PLR0917 -- click passes every option as an argument
    app_spec: str | None,
    as_json: bool,
    out_path: Path,
    queues: tuple[str, ...],
    states: str,
    redact: bool,
) -> None:
    """Write the tasks of the chosen queues and states to a snapshot file."""
    wanted = _states(states)
    with session(app_spec, as_json) as (app, out):
        adm = app.admin
        total: int | None = None
        if out.interactive:
            infos = [q for q in adm.queues() if not queues or q.name in queues]
            total = sum(getattr(q, s) for q in infos for s in wanted)
        directory = out_path.resolve().parent
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=directory)
        try:
            with (
                os.fdopen(fd, "w", encoding="utf-8") as fp,
                out.progress("exporting", total) as bar,
            ):
                count = adm.export(
                    _CountingWriter(fp, bar),  # type: ignore[arg-type]
                    queues=list(queues) or None,
                    states=wanted,
                    redact=redact,
                )
            Path(tmp).replace(out_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if out.json:
            out.emit({"file": str(out_path), "exported": count, "redacted": redact})
        else:
            note = " (arguments left out)" if redact else ""
            out.line(f"exported {count} task(s) to {out_path}{note}")


@snapshot.command("import")
@ops_command
@click.option(
    "--in", "in_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@apply_option
def import_(app_spec: str | None, as_json: bool, in_path: Path, apply: bool) -> None:
    """Load a snapshot file: its tasks are queued (ids already present are skipped)."""
    with session(app_spec, as_json) as (app, out):
        adm = app.admin
        with in_path.open(encoding="utf-8") as fp:
            report = adm.import_report(fp, dry_run=True)  # checks the whole file first
        if apply:
            with in_path.open(encoding="utf-8") as fp, out.progress("importing", None):
                report = adm.import_report(fp)
        if out.json:
            out.emit({"file": str(in_path), **jsonable(report)})
            return
        verb = "imported" if apply else "would import"
        out.line(f"{verb} {report.imported} task(s) from {in_path}, skipped {report.skipped}")
        if report.skipped:
            out.line("(skipped: their ids exist here already)")
        if not apply:
            out.line(APPLY_HINT)
