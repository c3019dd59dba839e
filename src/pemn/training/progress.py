"""Progress display inside an epoch or an evaluation: a tqdm bar on a terminal, else a plain line every minute."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["PLAIN_PROGRESS_EVERY", "UNITS", "Progress", "fmt_time", "plural"]


def plural(n: object, noun: str) -> str:
    """``1 epoch``, ``2 epochs``, ``1,000 images`` (a count that is not an int, such as ``?``, as it is)."""
    count = f"{n:,}" if isinstance(n, int) and not isinstance(n, bool) else str(n)
    return f"{count} {noun}{'' if n == 1 else 's'}"

#: Seconds between plain progress lines inside an epoch (when there is no tqdm bar).
PLAIN_PROGRESS_EVERY = 60.0


def fmt_time(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = round(max(seconds, 0.0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


#: What a progress display counts: its word in plain lines and its tqdm unit.
UNITS = {"image": "img", "character": "char"}


class Progress:
    """A tqdm bar (on a terminal, when tqdm is installed) or a plain line every minute, counting ``unit`` (a key
    of :data:`UNITS`: images, or a language model's characters)."""

    def __init__(self, enabled: bool, total: int, desc: str, log: Callable[[str], None], *,
                 every: float | None = None, unit: str = "image") -> None:
        self.bar = None
        self.enabled = enabled
        self.log = log
        self.desc = desc
        self.total = total
        self.unit = unit
        self.every = PLAIN_PROGRESS_EVERY if every is None else every
        self.done = 0
        self.start = self.last = time.perf_counter()
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit=UNITS[unit], unit_scale=True, leave=False,
                                dynamic_ncols=True)

    def update(self, count: int, loss: float | None = None) -> None:
        """``count`` more units are done (``loss``: the running training loss, if any)."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.enabled:
            now = time.perf_counter()
            if now - self.last >= self.every:
                self.last = now
                rate = self.done / max(now - self.start, 1e-9)
                eta = (self.total - self.done) / max(rate, 1e-9)
                self.log(f"  {self.desc}: {self.done:,}/{plural(self.total, self.unit)}" +
                         (f"  loss {loss:.4f}" if loss is not None else "") +
                         f"  {rate:,.0f} {UNITS[self.unit]}/s  ETA {fmt_time(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

