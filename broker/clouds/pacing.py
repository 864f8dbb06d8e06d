"""One proof per second at most: a proof's time is whole seconds (X-Amz-Date, a token's
iat), so two made in the same second could be the same proof, and the broker would
refuse the second as a replay."""

from __future__ import annotations

from typing import Callable, Optional


class OncePerSecond:
    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None]):
        self._clock = clock
        self._sleep = sleep
        self._last_second: Optional[int] = None

    def wait(self) -> None:
        """Wait, if needed, so that this proof's second differs from the previous one's."""
        now = self._clock()
        if self._last_second is not None and int(now) <= self._last_second:
            self._sleep(self._last_second + 1 - now + 0.01)
            now = self._clock()
        self._last_second = int(now)
