"""How the operator commands print: rich tables for people, JSON for programs.

Every command writes through one :class:`Output`: with ``--json`` it prints one JSON
document (or one JSON line per item of a stream); otherwise an aligned table that fits the
terminal (80 columns when stdout is not a terminal). Progress bars and in-place redraws are
shown only on a terminal, never when the output is piped or in JSON mode.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .._masking import shown
from ..clock import utc

__all__ = ["Output", "Step", "ago", "jsonable", "when"]


CUT_WIDTH = 28
"""The widest a shortened column gets (the whole value is in ``--json``)."""
TEXT_WIDTH = 12
"""The narrowest a column of names (:data:`NAMES`) gets."""
NAMES = ("TASK", "QUEUE", "QUEUES")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses as objects, datetimes in ISO 8601 (UTC),
    sets as sorted lists, enums by value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def when(value: datetime | float | None) -> str:
    """A time for a table cell: ``YYYY-MM-DD HH:MM:SS`` in UTC, or ``-``."""
    if value is None:
        return "-"
    moment = value if isinstance(value, datetime) else utc(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: object) -> RenderableType:
    if value is None:
        return "-"
    # Cells show what tasks and producers wrote (an error's text quotes a task's
    # arguments): control characters are escaped, or they would write to the terminal.
    return value if isinstance(value, Text) else shown(str(value))


def ago(value: datetime | float | None, now: float | None = None) -> str:
    """How long ago (``42s``, ``5m``, ``3h``, ``2d``), or ``in 5m`` for a future time."""
    if value is None:
        return "-"
    moment = value.timestamp() if isinstance(value, datetime) else value
    delta = (time.time() if now is None else now) - moment
    span = abs(delta)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if span >= size:
            text = f"{int(span // size)}{unit}"
            break
    else:
        text = f"{int(span)}s"
    return text if delta >= 0 else f"in {text}"


@dataclasses.dataclass
class Step:
    """A handle on one running progress bar (a no-op when none is shown)."""

    advance: Callable[[int], None]


class Output:
    """Where one command prints: ``json`` mode or rich tables on ``console``."""

    def __init__(self, json_mode: bool, console: Console | None = None) -> None:
        self.json = json_mode
        self.console = console or Console(file=sys.stdout, highlight=False, soft_wrap=False)

    @property
    def interactive(self) -> bool:
        """True when people read the output live: a terminal, not JSON."""
        return self.console.is_terminal and not self.json

    # -- JSON ------------------------------------------------------------------------
    def emit(self, data: Any) -> None:
        """Print ``data`` as one JSON document on one line."""
        line = orjson.dumps(jsonable(data), option=orjson.OPT_NON_STR_KEYS).decode()
        click.echo(line)
        sys.stdout.flush()

    def show(self, data: Any, view: RenderableType) -> None:
        """``data`` as JSON in JSON mode, else ``view`` (a plain line when a string)."""
        if self.json:
            self.emit(data)
        elif isinstance(view, str):
            self.line(view)
        else:
            self.print(view)

    # -- text ------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """Print one plain line (no markup)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def print(self, renderable: RenderableType) -> None:
        """Print a table or other rich renderable (piped: without trailing blanks)."""
        if self.console.is_terminal:
            self.console.print(renderable)
            return
        with self.console.capture() as captured:
            self.console.print(renderable)
        click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))

    @staticmethod
    def table(
        columns: Sequence[str],
        rows: Iterable[Sequence[object]],
        *,
        numeric: Sequence[str] = (),
        cut: Sequence[str] = (),
        whole: Sequence[str] = ("ID",),
    ) -> Table:
        """An aligned table: ``numeric`` columns right-aligned, ``whole`` ones never
        broken (ids must stay copyable), ``cut`` ones shortened with an ellipsis, the
        others folded onto more lines when the terminal is narrow."""
        table = Table(box=None, padding=(0, 2, 0, 0), header_style="bold", pad_edge=False)
        for name in columns:
            right = name in numeric
            table.add_column(
                name,
                justify="right" if right else "left",
                no_wrap=right or name in whole or name in cut,
                overflow="ellipsis" if name in cut else "fold",
                min_width=max(len(name), TEXT_WIDTH) if name in NAMES else len(name),
                max_width=CUT_WIDTH if name in cut else None,
            )
        for row in rows:
            table.add_row(*(_cell(cell) for cell in row))
        return table

    @staticmethod
    def fields(pairs: Iterable[tuple[str, object]]) -> Table:
        """``name  value`` lines, aligned; pairs whose value is ``None`` are left out."""
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        for name, value in pairs:
            if value is not None:
                grid.add_row(name, _cell(value))
        return grid

    # -- long work -------------------------------------------------------------------
    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Step]:
        """A progress bar on a terminal (nothing otherwise); advance it by the work done."""
        if not self.interactive:
            yield Step(lambda n: None)
            return
        count: ProgressColumn = MofNCompleteColumn() if total is not None else TimeElapsedColumn()
        columns = [TextColumn("{task.description}"), BarColumn(), count]
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield Step(lambda n: bar.advance(task, n))

    def watch(
        self, render: Callable[[], tuple[Any, RenderableType]], every: float, count: int | None
    ) -> None:
        """Show ``render()`` every ``every`` seconds until Ctrl-C (or ``count`` times).

        ``render`` returns the data (printed as one JSON line per round in JSON mode) and
        the table (redrawn in place on a terminal, printed once per round otherwise).
        Ctrl-C propagates (the command decides that it ends the watch).
        """
        rounds = 0
        if self.interactive:
            with Live(render()[1], console=self.console, auto_refresh=False) as live:
                rounds = 1
                while count is None or rounds < count:
                    time.sleep(every)
                    live.update(render()[1], refresh=True)
                    rounds += 1
            return
        while count is None or rounds < count:
            if rounds:
                time.sleep(every)
            data, view = render()
            if self.json:
                self.emit(data)
            else:
                self.print(view)
            rounds += 1
