"""Callbacks before the work nobody waits on: the receiver answers BFL's webhook (and so
starts the image download), and the image route serves, only once the callbacks just handed
over are written, or have let go (a callback that must connect first), or HOLD_BACK_LIMIT_S
has passed. The subscriber's transport here holds each callback until the test lets it."""

import anyio
import httpx
import pytest

from service.loops.dispatcher import Dispatcher
from tests.support.stack import running_emulator, running_stack
from tests.support.waiting import wait_for

WRITTEN = "http11.send_request_body.complete"
CONNECTING = "connection.connect_tcp.started"


class HeldTransport(httpx.AsyncBaseTransport):
    """Callbacks stop here: each reports `first` (if any) to its trace, then waits for
    `release`, then reports its request written and answers 204."""

    def __init__(self, first: str | None = None, fails: bool = False) -> None:
        self.first, self.fails = first, fails
        self.requests: list[httpx.Request] = []
        self.release = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        trace = request.extensions["trace"]
        if self.first:
            await trace(self.first, {})
        await self.release.wait()
        if self.fails:
            raise httpx.ConnectError("refused")
        await trace(WRITTEN, {})
        return httpx.Response(204)


async def _a_callback_in_flight(stack, transport: HeldTransport) -> Dispatcher:
    """A job's `job.failed` handed to the dispatcher, its callback held in the transport."""
    body = {"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]}
    assert (await stack.client.post("/v1/subscriptions", json=body)).status_code == 201
    job = await stack.submit(width=256, height=256)

    async def submitted() -> str | None:
        return (await stack.client.get(f"/v1/jobs/{job['id']}")).json()["bfl_id"]

    task_id = await wait_for(submitted)
    # The callback is held, and still BFL's webhook is answered (after HOLD_BACK_LIMIT_S).
    with anyio.fail_after(10):
        response = await stack.post_webhook(job["id"], {"id": task_id, "status": "Error"})
    assert response.json() == {"status": "applied"}

    async def callback_sent() -> bool:
        return bool(transport.requests)

    await wait_for(callback_sent)
    return next(loop for loop in stack.services.loops if isinstance(loop, Dispatcher))


@pytest.mark.parametrize(
    ("first", "fails", "waits"),
    [
        (None, False, True),  # until its request is written
        (CONNECTING, False, False),  # a callback that must connect lets go at once
        (None, True, True),  # one that fails lets go when it fails
    ],
    ids=["written", "connecting", "failing"],
)
async def test_the_other_work_waits_for_a_handed_over_callback(sqlite_url, first, fails, waits):
    transport = HeldTransport(first, fails)
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(
            sqlite_url, emulator, runtime={"delivery_transport": transport}, run_workers=True
        ) as stack,
    ):
        dispatcher = await _a_callback_in_flight(stack, transport)
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def wait_for_the_wire() -> None:
                await dispatcher.handoffs_on_the_wire(limit_s=60)
                done.set()

            tg.start_soon(wait_for_the_wire)
            await anyio.wait_all_tasks_blocked()
            assert done.is_set() is not waits
            transport.release.set()
            with anyio.fail_after(10):
                await done.wait()
