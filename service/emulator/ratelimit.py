"""get_result's rate-limit headers, as recorded from BFL (API.md §4.1).

BFL answers every poll with `Retry-After: 1`, `X-Ratelimit-Limit: 1200`, the calls left in the
current window and the window's end (epoch float, about 2 s ahead). The emulator reports the same
numbers per caller but never refuses a poll: tests and benchmarks poll as hard as they like.
"""

from collections.abc import Callable

LIMIT = 1200  # polls per window
WINDOW_S = 2.0  # BFL's reset is about 1.5-2.5 s after a call


class RateLimits:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # caller -> (window end, calls)

    def headers(self, caller: str) -> dict[str, str]:
        now = self.clock()
        end, calls = self._windows.get(caller, (0.0, 0))
        if now >= end:
            end, calls = now + WINDOW_S, 0
        calls += 1
        self._windows[caller] = (end, calls)
        return {
            "Retry-After": "1",
            "X-Ratelimit-Limit": str(LIMIT),
            "X-Ratelimit-Remaining": str(max(0, LIMIT - calls)),
            "X-Ratelimit-Reset": repr(end),
        }
