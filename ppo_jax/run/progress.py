"""Progress bars (rich, on stderr) for the long-running commands of both packages."""

from __future__ import annotations

from typing import Any


def progress_bar(label: str = "{task.description}", disable: bool = False, status: str | None = None,
                 console: Any = None):
    """A bar ``label [####] done/total <status> elapsed``; ``label`` and ``status`` format the
    task's description and fields (the default label is each task's description); on a new
    stderr console unless ``console`` is given."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn()]
    if status is not None:
        columns.append(TextColumn(status))
    return Progress(*columns, TimeElapsedColumn(), console=console or Console(stderr=True), disable=disable)
