"""The live progress bar of `ait submit --wait`, drawn on stderr from the job's events."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from client.output import stderr


class WaitProgress:
    """Feed it job objects or events (`status`, `progress`, `message`, `queue_reason`)."""

    def __init__(self, job_id: str, *, enabled: bool = True) -> None:
        self.job_id = job_id
        self.status = "queued"
        self._progress = Progress(
            TextColumn("[bold]{task.fields[job]}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=stderr(),
            transient=False,
            disable=not enabled,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> WaitProgress:
        self._progress.start()
        self._task = self._progress.add_task(
            "wait", total=100, job=self.job_id, status=self.status, note=""
        )
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, event: dict[str, Any]) -> None:
        if self._task is None:
            return
        status = event.get("status")
        if isinstance(status, str):
            self.status = status
        changes: dict[str, Any] = {"status": self.status}
        progress = event.get("progress")
        if isinstance(progress, int | float) and not isinstance(progress, bool):
            changes["completed"] = max(0.0, min(100.0, float(progress)))
        if self.status == "completed":
            changes["completed"] = 100.0
        note = event.get("queue_reason") if self.status == "queued" else event.get("message")
        if isinstance(note, str) or self.status != "queued":
            changes["note"] = (note or "")[:80] if isinstance(note, str) else ""
        self._progress.update(self._task, **changes)
