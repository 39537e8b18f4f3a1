"""SSRF: subscriber addresses are checked at registration and, what counts, at connect time."""

import httpx
import pytest

from service.targets import GuardedBackend, GuardedTransport, check_target_url, forbidden_address
from tests.support.subscriber import running_subscriber


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1",
     "fe80::1", "fd00:ec2::254", "224.0.0.1", "0.0.0.0", "100.64.0.1", "::ffff:127.0.0.1",  # noqa: S104
     "100.100.100.200"],
)  # fmt: skip
def test_private_and_metadata_addresses_are_forbidden(address):
    assert forbidden_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert forbidden_address(address) is None


def test_registration_checks_what_it_can_see():
    assert check_target_url("https://hooks.example.com/x", allow_private=False) is None
    assert check_target_url("http://localhost:9/x", allow_private=False) is None  # at connect
    assert "loopback" in check_target_url("http://127.0.0.1/x", allow_private=False)
    assert "link-local" in check_target_url("http://[fe80::1]/x", allow_private=False)
    assert check_target_url("http://127.0.0.1/x", allow_private=True) is None
    for bad in ("ftp://x.example/", "/relative", "http://", "https://u:p@x.example/", 5, ""):
        assert check_target_url(bad, allow_private=True)
    assert "port" in check_target_url("http://x.example:99999/", allow_private=True)


def _client(resolver=None, allow_private=False) -> httpx.AsyncClient:
    backend = (
        GuardedBackend(resolver, allow_private)
        if resolver
        else GuardedBackend(allow_private=allow_private)
    )
    return httpx.AsyncClient(transport=GuardedTransport(backend, httpx.Limits()))


async def test_a_hostname_that_resolves_to_loopback_is_refused_at_connect():
    async with running_subscriber() as subscriber, _client() as client:
        via_name = subscriber.url.replace("127.0.0.1", "localhost")
        with pytest.raises(httpx.ConnectError, match="loopback"):
            await client.post(via_name, content=b"{}")
        assert subscriber.received == []


async def test_a_name_rebound_to_the_metadata_address_is_refused():
    async def rebinding(host, port):
        return ["169.254.169.254"] if host == "innocent.example" else ["127.0.0.1"]

    async with _client(rebinding) as client:
        with pytest.raises(httpx.ConnectError, match=r"metadata|link-local"):
            await client.post("http://innocent.example/hook", content=b"{}")


async def test_allow_private_targets_lets_loopback_through():
    async with running_subscriber() as subscriber, _client(allow_private=True) as client:
        response = await client.post(subscriber.url, content=b"{}")
        assert response.status_code == 200
