"""Progress of long commands on stderr: a tqdm bar on a terminal, plain lines otherwise.

On a terminal the bar shows done/total, the rate and the time left (tqdm); when stderr is a
file or a pipe (``make demo > log``) a plain line is written one second in (``delay``: a
command that fails at once prints only its one error line) and then every ``interval``
seconds, so a log shows the run is alive. A heartbeat thread keeps both going
while nothing is counted yet (workers starting, the first slow conversions).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

PLAIN_INTERVAL_S = 10.0


@dataclass
class Step:
    """How far a stage without a summary of its own is (snapshot create, report): what is
    done of what total, and what it is doing now. The stage calls its ``progress`` with it."""

    done: int = 0
    total: int | None = None
    what: str = ""


class Progress:
    """Call it with the stage's running summary; ``done()`` at the end."""

    def __init__(
        self,
        label: str,
        count: Callable[[Any], int] = lambda s: int(s.inputs),
        text: Callable[[Any], str] = lambda s: str(s.line()),
        total: Callable[[Any], int | None] = lambda s: None,
        unit: str = "files",
        stream: TextIO | None = None,
        interval: float = PLAIN_INTERVAL_S,
        enabled: bool = True,
        poll_total: Callable[[], int | None] | None = None,
        poll_count: Callable[[], int | None] | None = None,
        delay: float = 1.0,
        unit_scale: bool = False,
    ) -> None:
        self.label = label
        self.count = count
        self.text = text
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.delay = delay
        self.unit_scale = unit_scale  # 1.2M tokens rather than 1234567 tokens
        self.poll_total = poll_total  # asked by the heartbeat too: a total known before anything is counted
        self.poll_count = poll_count  # and a count that moves before the summary does (a slow source's items)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.n = 0
        self.n_total: int | None = None
        self.status = "starting"
        self._last_plain = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar: Any = None
        if not enabled:
            return
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                desc=label,
                total=None,
                unit=unit,
                unit_scale=unit_scale,
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
                mininterval=0.2,
            )
            self._bar.set_postfix_str(self.status)
        self._thread = threading.Thread(target=self._beat, name=f"progress {label}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ updates
    def phase(self, status: str) -> None:
        """What is happening while nothing is counted (``starting workers``, ``converting``)."""
        self.status = status
        self._show(force=True)

    def set_total(self, total: int | None) -> None:
        self.n_total = total
        self._show(force=True)

    def __call__(self, summary: Any) -> None:
        self.n = self.count(summary)
        total = self.total(summary)
        first_total = total is not None and self.n_total is None
        if total is not None:
            self.n_total = total
        self.status = self.text(summary)
        self._show(force=first_total)

    def done(self) -> None:
        self._stop.set()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    # ------------------------------------------------------------ output
    def _show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._bar is not None:
                self._bar.unit = self.unit
                if self._bar.total != self.n_total:
                    self._bar.total = self.n_total
                self._bar.n = self.n
                self._bar.set_postfix_str(self.status, refresh=False)
                if force:
                    self._bar.refresh()
                else:
                    self._bar.update(0)  # redraws at most every mininterval
            elif not self.tty and time.monotonic() - self.t0 >= self.delay:
                if force or time.monotonic() - self._last_plain >= self.interval:
                    self._plain()

    def _plain(self) -> None:
        from tqdm import tqdm

        self._last_plain = time.monotonic()
        elapsed = self._last_plain - self.t0
        if self.n_total:
            fmt = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed} elapsed, {remaining} left, {rate_fmt}]"
        else:
            fmt = "{desc}: {n_fmt} {unit} [{elapsed} elapsed, {rate_fmt}]"
        line = tqdm.format_meter(
            self.n, self.n_total, elapsed, prefix=self.label, unit=self.unit, unit_scale=self.unit_scale, bar_format=fmt
        )
        try:
            self.stream.write(f"{line}  {self.status}\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed log: progress is not worth failing the command for
            self._stop.set()

    def _beat(self) -> None:
        tick = 1.0 if self.tty else min(self.interval, self.delay or 1.0, 1.0)
        while not self._stop.wait(tick):
            force = self.tty
            if self.poll_total is not None and self.n_total is None:
                self.n_total = self.poll_total()
                force = force or self.n_total is not None
            if self.poll_count is not None:
                self.n = max(self.n, self.poll_count() or 0)
            self._show(force=force)
