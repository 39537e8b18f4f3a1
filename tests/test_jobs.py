"""The pure state machine and BFL payload parsing (DESIGN §6, bfl/API.md §5)."""

import pytest

from service import jobs
from service.jobs import BflUpdate, InvalidPayload, parse_update, transition

SAMPLE = {"sample": "https://delivery.example/x.jpeg", "seed": 1}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"id": "t", "status": "Ready", "result": SAMPLE}, jobs.READY),
        ({"task_id": "t", "status": "SUCCESS", "result": SAMPLE}, jobs.READY),
        ({"id": "t", "status": "Error"}, jobs.ERROR),
        ({"task_id": "t", "status": "FAILED", "error": "x"}, jobs.ERROR),
        ({"id": "t", "status": "Failed"}, jobs.ERROR),
        ({"id": "t", "status": "Request Moderated"}, jobs.REQUEST_MODERATED),
        ({"id": "t", "status": "Content Moderated"}, jobs.CONTENT_MODERATED),
        ({"task_id": "t", "status": "GENERATED CONTENT MODERATED"}, jobs.CONTENT_MODERATED),
        ({"task_id": "t", "status": "processing", "progress": 30}, jobs.PROCESSING),
        ({"id": "t", "status": "Generating"}, jobs.PROCESSING),
        ({"id": "t", "status": "Reasoning"}, jobs.PROCESSING),
        ({"id": "t", "status": "Pending", "progress": 0.2}, jobs.PENDING),
        ({"id": "t", "status": "Task not found"}, jobs.TASK_NOT_FOUND),
    ],
)
def test_both_dialects_parse(body, status):
    assert parse_update(body).status == status


def test_progress_is_a_fraction_whether_sent_as_percent_or_fraction():
    assert parse_update({"task_id": "t", "status": "processing", "progress": 40}).progress == 0.4
    assert parse_update({"id": "t", "status": "Pending", "progress": 0.3}).progress == 0.3
    assert parse_update({"id": "t", "status": "Pending", "progress": 55.0}).progress == 0.55


def test_legacy_error_becomes_details():
    update = parse_update({"task_id": "t", "status": "FAILED", "error": "nsfw"})
    assert update.details == {"error": "nsfw"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "JSON object"),
        ({"status": "Ready"}, "task id"),
        ({"id": "t"}, "status"),
        ({"id": "t", "status": "Done"}, "unknown status"),
        ({"id": "t", "status": "Ready"}, "result.sample"),
        ({"id": "t", "status": "Ready", "result": {"sample": "file:///etc/passwd"}}, "sample"),
        ({"id": "t", "status": "Pending", "progress": True}, "progress"),
        ({"id": "t", "status": "Pending", "result": []}, "'result'"),
    ],
)
def test_unusable_payloads_say_why(body, reason):
    with pytest.raises(InvalidPayload, match=reason):
        parse_update(body)


def test_terminal_states_never_change():
    for status in jobs.TERMINAL:
        for update in (BflUpdate("t", jobs.READY, result=SAMPLE), BflUpdate("t", jobs.PROCESSING)):
            assert transition(status, None, update) is None


def test_ready_announces_itself_at_once():
    """The image link works from the webhook on (it streams the download until stored)."""
    change = transition(jobs.PENDING, None, BflUpdate("t", jobs.READY, result=SAMPLE))
    assert (change.status, change.events) == (jobs.READY, ("job.ready",))


def test_failures_and_moderation_announce_themselves():
    assert transition(jobs.PENDING, None, BflUpdate("t", jobs.ERROR)).events == ("job.failed",)
    for status in (jobs.REQUEST_MODERATED, jobs.CONTENT_MODERATED):
        change = transition(jobs.PENDING, None, BflUpdate("t", status))
        assert change.events == ("job.moderated",)


def test_progress_only_moves_forward():
    change = transition(jobs.PENDING, None, BflUpdate("t", jobs.PROCESSING, progress=0.5))
    assert (change.status, change.progress, change.events) == (
        jobs.PROCESSING,
        0.5,
        ("job.progress",),
    )
    assert transition(jobs.PROCESSING, 0.5, BflUpdate("t", jobs.PROCESSING, progress=0.3)) is None
    assert transition(jobs.PROCESSING, 0.5, BflUpdate("t", jobs.PENDING)) is None


def test_a_webhook_before_the_submit_response_still_announces_the_submit():
    change = transition(jobs.QUEUED, None, BflUpdate("t", jobs.PENDING))
    assert (change.status, change.events) == (jobs.PENDING, ("job.submitted",))
    ready = transition(jobs.QUEUED, None, BflUpdate("t", jobs.READY, result=SAMPLE))
    assert ready.events == ("job.submitted", "job.ready")
    failed = transition(jobs.QUEUED, None, BflUpdate("t", jobs.ERROR))
    assert failed.events == ("job.submitted", "job.failed")


def test_statuses_shown_to_clients():
    assert jobs.bfl_status(jobs.QUEUED) == jobs.PENDING
    assert jobs.bfl_status(jobs.PROCESSING) == jobs.PENDING
    assert jobs.bfl_status(jobs.READY) == jobs.READY
    assert jobs.bfl_status(jobs.ERROR) == jobs.ERROR
