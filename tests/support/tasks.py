"""The one stand-in for the broker: records every task the app sends by name (services/dispatch.py).

The test app gets one in `Runtime.tasks` (tests/conftest.py), so generation jobs from the API, emails,
billing events and meter events owed after a commit, and the sweepers' re-sends all land here.
"""
from __future__ import annotations

from typing import Any

from sfx_backend.services.dispatch import GENERATE_TASK


class RecordingTasks:
    """A TaskSender that remembers (name, args, countdown) in order; `fail` makes every send raise."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], float | None]] = []
        self.fail = False

    def send(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((name, list(args), countdown))

    def named(self, name: str) -> list[list[Any]]:
        """The argument lists of every `name` task sent."""
        return [args for task, args, _ in self.sent if task == name]

    def args(self, name: str) -> list[Any]:
        """The first argument of every `name` task sent."""
        return [args[0] for args in self.named(name)]

    def take(self, name: str) -> list[Any]:
        """Like `args`, and forgets those tasks (as a worker taking them off the queue)."""
        found = self.args(name)
        self.sent = [s for s in self.sent if s[0] != name]
        return found

    def jobs(self) -> JobQueueView:
        """The generation jobs alone, as (job id, countdown)."""
        return JobQueueView(self)


class JobQueueView:
    """The generation tasks of a RecordingTasks: `sent` is [(job id, countdown)], `fail` is the broker's."""

    def __init__(self, tasks: RecordingTasks) -> None:
        self.tasks = tasks

    @property
    def sent(self) -> list[tuple[str, float | None]]:
        return [(args[0], countdown) for name, args, countdown in self.tasks.sent if name == GENERATE_TASK]

    @property
    def fail(self) -> bool:
        return self.tasks.fail

    @fail.setter
    def fail(self, value: bool) -> None:
        self.tasks.fail = value
