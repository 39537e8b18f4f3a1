"""The delivery retry schedule is a pure function of (attempt, outcome, now)."""

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from service import schedule
from service.bfl import retry_after_seconds as bfl_retry_after
from service.schedule import Attempt, decide_delivery, parse_retry_after

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXPECTED_GAPS_S = [5, 300, 1800, 7200, 18000, 36000, 36000]


def test_failures_follow_the_schedule_within_jitter_then_die():
    rng = random.Random(1)
    for attempt, gap in enumerate(EXPECTED_GAPS_S, start=1):
        decision = decide_delivery(attempt, Attempt(500), NOW, rng)
        assert decision.outcome == schedule.RETRY
        waited = (decision.next_attempt_at - NOW).total_seconds()
        assert 0.8 * gap <= waited <= 1.2 * gap
    assert decide_delivery(8, Attempt(500), NOW, rng).outcome == schedule.DEAD
    assert decide_delivery(8, Attempt(None), NOW, rng).outcome == schedule.DEAD


def test_success_gone_and_timeouts():
    rng = random.Random(1)
    assert decide_delivery(1, Attempt(204), NOW, rng).outcome == schedule.DELIVERED
    assert decide_delivery(3, Attempt(410), NOW, rng).outcome == schedule.GONE
    assert decide_delivery(1, Attempt(None), NOW, rng).outcome == schedule.RETRY
    assert decide_delivery(1, Attempt(302), NOW, rng).outcome == schedule.RETRY


def test_retry_after_is_honoured_on_429_and_503_only():
    rng = random.Random(1)
    for code in (429, 503):
        decision = decide_delivery(1, Attempt(code, retry_after_s=120), NOW, rng)
        assert decision.next_attempt_at == NOW + timedelta(seconds=120)
    other = decide_delivery(1, Attempt(500, retry_after_s=120), NOW, rng)
    assert other.next_attempt_at < NOW + timedelta(seconds=10)
    huge = decide_delivery(1, Attempt(429, retry_after_s=10**9), NOW, rng)
    assert huge.next_attempt_at == NOW + timedelta(seconds=schedule.MAX_RETRY_AFTER_S)


def test_retry_after_header_forms():
    assert schedule.parse_retry_after("30", NOW) == 30
    assert schedule.parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", NOW) == 60
    assert schedule.parse_retry_after("soon", NOW) is None
    assert schedule.parse_retry_after(None, NOW) is None


def test_a_subscription_failing_for_five_days_is_disabled():
    assert not schedule.should_disable(None, NOW)
    assert not schedule.should_disable(NOW - timedelta(days=4, hours=23), NOW)
    assert schedule.should_disable(NOW - timedelta(days=5), NOW)


def test_upstream_backoff_grows_and_caps():
    rng = random.Random(3)
    delays = [schedule.backoff_s(n, base_s=1, cap_s=60, rng=rng) for n in range(1, 10)]
    assert delays[0] <= 1.2 and delays[-1] <= 72 and delays[3] > delays[0]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(value=st.one_of(st.text(max_size=40), st.from_regex(r"[0-9²٣ .e+-]{1,12}", fullmatch=True)))
def test_any_retry_after_is_a_number_of_seconds_or_ignored(value):
    """Whatever a subscriber or BFL sends as Retry-After, it never raises (`²` used to)."""
    for parsed in (parse_retry_after(value, NOW), bfl_retry_after(value)):
        assert parsed is None or parsed >= 0
