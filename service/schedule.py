"""Pure retry schedules: when to try again, decided from (attempt, outcome, now).

Deliveries follow DESIGN §5: attempts at 0 s, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after
the previous one, each ±20 % jitter; `Retry-After` honoured on 429/503; `410 Gone` disables.
"""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

# Seconds to wait after failed attempt n (1-based) before attempt n + 1.
DELIVERY_DELAYS_S = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
MAX_DELIVERY_ATTEMPTS = len(DELIVERY_DELAYS_S) + 1
JITTER = 0.2
MAX_RETRY_AFTER_S = 10 * 3600  # a Retry-After is honoured up to the longest scheduled wait
DISABLE_AFTER = timedelta(days=5)  # a subscription failing every attempt this long is disabled

DELIVERED = "delivered"
RETRY = "retry"
DEAD = "failed"  # the dead letter: can be redelivered by hand
GONE = "gone"  # 410: the subscriber asked us to stop


@dataclass(frozen=True)
class Attempt:
    """What one POST to a subscriber came to."""

    status_code: int | None  # None: no HTTP answer (timeout, refused, SSRF block)
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Decision:
    outcome: str
    next_attempt_at: datetime | None = None


def jittered(seconds: float, rng: random.Random) -> float:
    return seconds * rng.uniform(1 - JITTER, 1 + JITTER)


def decide_delivery(attempt_number: int, attempt: Attempt, now: datetime, rng) -> Decision:
    """After attempt `attempt_number` (1-based): delivered, retry when, dead, or gone."""
    code = attempt.status_code
    if code is not None and 200 <= code < 300:
        return Decision(DELIVERED)
    if code == 410:
        return Decision(GONE)
    if attempt_number >= MAX_DELIVERY_ATTEMPTS:
        return Decision(DEAD)
    delay = jittered(DELIVERY_DELAYS_S[attempt_number - 1], rng)
    if code in (429, 503) and attempt.retry_after_s is not None:
        delay = min(max(attempt.retry_after_s, 0.0), MAX_RETRY_AFTER_S)
    return Decision(RETRY, now + timedelta(seconds=delay))


def should_disable(failing_since: datetime | None, now: datetime) -> bool:
    return failing_since is not None and now - failing_since >= DISABLE_AFTER


def backoff_s(attempt: int, base_s: float, cap_s: float, rng) -> float:
    """Exponential backoff with jitter for upstream retries: base·2^(attempt-1), capped."""
    return jittered(min(cap_s, base_s * 2 ** max(attempt - 1, 0)), rng)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds, or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not str.isdigit alone: it takes '²' and '٣'
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max((when - now).total_seconds(), 0.0) if when.tzinfo else None
