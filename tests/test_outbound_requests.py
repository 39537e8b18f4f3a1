"""`service.outbound`: requests on a transport, as the client would send them, minus what
fluxhook never uses (cookies, redirects)."""

import httpx
import pytest

from service import outbound


def _recording(answer):
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer(request)

    return httpx.MockTransport(handle), requests


async def test_a_request_carries_its_headers_body_and_timeouts_and_returns_the_whole_body():
    transport, sent = _recording(lambda _: httpx.Response(200, json={"id": "t"}))
    timeouts = httpx.Timeout(30.0, connect=10.0)
    response = await outbound.request(
        transport, "POST", "http://bfl.test/v1/flux-dev", timeouts=timeouts,
        headers={"x-key": "k"}, json={"prompt": "a wren"},
    )  # fmt: skip
    assert response.json() == {"id": "t"}
    assert response.request is sent[0]
    (request,) = sent
    assert request.headers["x-key"] == "k"
    assert request.headers["user-agent"] == outbound.USER_AGENT
    assert request.headers["host"] == "bfl.test"
    assert request.read() == b'{"prompt":"a wren"}'
    assert request.extensions["timeout"] == timeouts.as_dict()


async def test_a_given_user_agent_and_a_plain_number_of_seconds():
    transport, sent = _recording(lambda _: httpx.Response(204))
    await outbound.request(
        transport, "POST", "http://hooks.test/x", timeouts=5.0,
        headers={"user-agent": "fluxhook-webhooks/1"}, content=b"{}",
    )  # fmt: skip
    assert sent[0].headers.get_list("user-agent") == ["fluxhook-webhooks/1"]
    assert sent[0].extensions["timeout"] == httpx.Timeout(5.0).as_dict()


async def test_a_redirect_is_an_answer_not_followed():
    moved = {"location": "http://elsewhere.test/"}
    transport, sent = _recording(lambda _: httpx.Response(302, headers=moved))
    response = await outbound.request(transport, "POST", "http://hooks.test/x", timeouts=5.0)
    assert response.status_code == 302
    assert len(sent) == 1


async def test_no_cookie_is_kept_between_requests():
    transport, sent = _recording(lambda _: httpx.Response(200, headers={"set-cookie": "s=1"}))
    for _ in range(2):
        await outbound.request(transport, "GET", "http://bfl.test/v1/credits", timeouts=5.0)
    assert "cookie" not in sent[1].headers


async def test_a_stream_reads_the_body_as_it_arrives_and_is_closed_on_exit():
    closed = []

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self):
            for chunk in (b"ab", b"cd"):
                yield chunk

        async def aclose(self) -> None:
            closed.append(True)

    transport, _ = _recording(lambda _: httpx.Response(200, stream=Body()))
    async with outbound.stream(transport, "GET", "http://img.test/a.jpg", timeouts=5.0) as r:
        assert [chunk async for chunk in r.aiter_bytes()] == [b"ab", b"cd"]
    assert closed == [True]


async def test_transport_errors_are_httpx_errors():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(httpx.ConnectError):
        await outbound.request(httpx.MockTransport(refuse), "GET", "http://x.test/", timeouts=1.0)
