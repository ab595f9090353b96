"""The worker's slots: a fixed set of threads, each running one task at a time.

The threads are daemons, so that a worker exiting after it released its tasks is not
held back by a handler that never returns (its task is already back in the queue).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Job = TypeVar("Job")


class Slots(Generic[Job]):
    """size threads that each take one job at a time and pass it to work."""

    def __init__(self, size: int, work: Callable[[Job], None], name: str) -> None:
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._work = work
        for number in range(size):
            threading.Thread(target=self._serve, name=f"{name}-{number}",
                             daemon=True).start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            self._work(self._jobs.get())
