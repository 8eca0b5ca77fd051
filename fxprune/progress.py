"""A progress bar for long loops: tqdm on stderr when it is installed, else a log line every ~10 %."""
from __future__ import annotations

import logging
import sys
from typing import Optional

__all__ = ["Progress"]

log = logging.getLogger("fxprune")


class Progress:
    """A tqdm bar on stderr when tqdm is installed; else a log line every ~10 % (every 10 batches when the
    number is unknown). ``update()`` counts one ``unit`` (a batch, a tensor).

    Example:
        >>> bar = Progress(3, enabled=False, desc="demo")
        >>> for _ in range(3):
        ...     bar.update()
        >>> bar.done
        3
    """

    def __init__(self, total: Optional[int], enabled: bool, desc: str, unit: str = "batch"):
        self.total, self.enabled, self.desc, self.unit, self.done, self.bar = total, enabled, desc, unit, 0, None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, desc=desc, file=sys.stderr, unit=unit, leave=False)

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            step = max(1, self.total // 10) if self.total else 10
            if self.done % step == 0 or self.done == self.total:
                log.info("%s: %d%s %ss", self.desc, self.done, f"/{self.total}" if self.total else "",
                         self.unit)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
