"""Progress bars (rich, on stderr) for the long-running commands."""

from __future__ import annotations


def progress_bar(label: str, disable: bool, status: str = "loss {task.fields[loss]}"):
    """A bar ``label [####] done/total <status> elapsed``; ``status`` formats the task's fields."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(status),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=disable)
