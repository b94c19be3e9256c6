"""Progress reporting: the library never prints; each long stage calls an optional callback.

A callback receives `Progress` events: a stage name, units done out of a total (when known),
and an optional message (a log line). `None` means silence. The CLI turns events into tqdm
bars and log lines on stderr (`cli/common.py:ProgressPrinter`); a notebook can pass its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Progress:
    stage: str  # "profile", "fit", "search", "export", "finetune", "run", ...
    done: int = 0
    total: int | None = None
    unit: str = ""
    message: str = ""  # a line worth showing on its own (a stage starting, a generation's summary)
    status: str = ""  # a short postfix describing the last unit (shown beside the bar)


Callback = Optional[Callable[[Progress], None]]


def report(callback: Callback, stage: str, done: int = 0, total: int | None = None, unit: str = "",
           message: str = "", status: str = "") -> None:  # fmt: skip
    """Send one event to `callback`, if there is one."""
    if callback is not None:
        callback(Progress(stage, done, total, unit, message, status))
