"""SSRF: subscriber addresses are checked at registration and, what counts, at connect time."""

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.guard import GuardedBackend, GuardedTransport
from service.targets import TargetInvalid, check_target_url, forbidden_address, target_url
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


# Each was accepted as a subscription URL before the one policy (issue 11, findings 1 and 5).
AMBIGUOUS_OR_UNSENDABLE = [
    "http://999.1.1.1/hook",
    "http://0177.0.0.1/",
    "http://127.000.000.001/",
    "http://1.2.3.04/",
    "http://☃.net/",
    "http://xn--n3h.net/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://127.1/",
    "http:///a",
    "http://example.com\\@evil.example/",
    "http://exa mple.com/",
    "http://ex%41mple.com/",
    "http://x.example:0/",
    "http://x.example:99999/",
    "https://user:pass@x.example/",
    "ftp://x.example/",
    "javascript:alert(1)",
]


@pytest.mark.parametrize("url", AMBIGUOUS_OR_UNSENDABLE)
def test_the_url_policy_refuses_what_cannot_be_sent_unambiguously(url):
    with pytest.raises(TargetInvalid):
        target_url(url, allow_private=True)


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("HTTPS://Hooks.Example.COM/x?a=1", "https://hooks.example.com/x?a=1"),
        ("http://ä.example/", "http://xn--4ca.example/"),
        ("http://[2606:2800:220:1::1]:8443/h", "http://[2606:2800:220:1::1]:8443/h"),
        ("http://93.184.216.34/h", "http://93.184.216.34/h"),
        ("http://my_host.example/h", "http://my_host.example/h"),
    ],
)
def test_the_url_policy_normalises_once(given, normalised):
    assert target_url(given, allow_private=False) == normalised


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("2002:0a00:0001::1", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of the metadata address
        ("64:ff9b:1::a00:1", "site-local"),  # a network's own NAT64 prefix
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("fec0::1", "site-local"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
        ("::ffff:169.254.169.254", "link-local"),
    ],
)
def test_ipv6_forms_that_embed_a_forbidden_address_are_forbidden(address, reason):
    assert reason in forbidden_address(address)


@pytest.mark.parametrize("address", ["2002:808:808::1", "64:ff9b::808:808"])
def test_ipv6_forms_that_embed_a_public_address_are_allowed(address):
    assert forbidden_address(address) is None


_HOSTS = st.one_of(
    st.text(max_size=24),
    st.from_regex(r"[0-9a-fx.]{1,24}", fullmatch=True),
    st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
    st.from_regex(r"[a-z0-9_-]{1,12}(\.[a-z0-9-]{1,12}){0,3}", fullmatch=True),
    st.sampled_from(["☃.net", "xn--n3h.net", "ä.de", "localhost", "", "@", "a@b"]),
)
_URLS = st.one_of(
    st.text(max_size=60),
    st.builds(
        "{}://{}{}{}".format,
        st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
        _HOSTS,
        st.one_of(st.just(""), st.integers(-1, 70000).map(lambda p: f":{p}"), st.text(max_size=6)),
        st.one_of(st.just("/hook"), st.text(max_size=20)),
    ),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(url=_URLS, allow_private=st.booleans())
def test_every_accepted_url_can_be_sent(url, allow_private):
    """Whatever the policy accepts, httpx sends (here to a transport that answers 204)."""
    try:
        normalised = target_url(url, allow_private)
    except TargetInvalid:
        return
    assert target_url(normalised, allow_private) == normalised, "normalised once and for all"
    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    with httpx.Client(transport=transport) as client:
        assert client.post(normalised, content=b"{}").status_code == 204
