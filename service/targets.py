"""Where fluxhook may send a request: one URL policy and one address policy (DESIGN §4, §5).

`target_url()` is the one policy for every callback URL a tenant gives (a subscription's `url`,
a submit's `webhook_url`): parsed by httpx, the parser that later sends to it, and normalised
once, so whatever is accepted can be sent. Refused, each with its reason: what httpx cannot
parse, schemes other than http(s), credentials, bad ports, hosts that are not plain DNS
names, and numeric hosts other than a canonical dotted quad (`2130706433`, `0x7f000001`,
`0177.0.0.1` and `1.2.3.04` mean different addresses to different parsers).

`forbidden_address()` says why an address may not be reached: loopback, private, link-local,
CGNAT, multicast, reserved, metadata, site-local, and IPv6 forms that embed an IPv4 address
(mapped, 6to4, NAT64) when the embedded one is forbidden; Teredo tunnels always. The
connect-time guard (`service.guard`) applies it to every address a hostname resolves to.
"""

import ipaddress
import re

import httpx

MAX_URL_LENGTH = 2083
# Cloud metadata endpoints that are not already private or link-local.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254", "192.0.0.192")
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 is the last 32 bits
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a network's own translator
TEREDO = ipaddress.ip_network("2001::/32")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")  # `_`: DNS has names that use it
_UNSENDABLE = re.compile(r"[\x00-\x20\x7f\\]")  # white space, controls, and `\` (read as `/`)


class TargetInvalid(ValueError):
    """A URL fluxhook will not call; the message says why, for a 422."""


def target_url(url: object, allow_private: bool) -> str:
    """`url` normalised, or TargetInvalid. Hostnames are vetted again at connect time."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise TargetInvalid(f"url must be a string of 1 to {MAX_URL_LENGTH} characters")
    if _UNSENDABLE.search(url):
        raise TargetInvalid("url must not contain white space, control characters or '\\'")
    parsed = _parse(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise TargetInvalid("url must be an absolute http(s) URL")
    if parsed.userinfo:
        raise TargetInvalid("url must not carry credentials")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise TargetInvalid("url has an invalid port")
    literal = _literal_address(parsed.raw_host.decode("ascii"))
    if literal is not None and not allow_private and (reason := forbidden_address(literal)):
        raise TargetInvalid(f"url points at {reason}")
    return str(parsed)


def check_target_url(url: object, allow_private: bool) -> str | None:
    """Why `url` cannot be a callback URL, or None if it can."""
    try:
        target_url(url, allow_private)
    except TargetInvalid as exc:
        return str(exc)
    return None


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decodes the name: a malformed IDNA A-label raises here
    except Exception as exc:  # InvalidURL, and idna's own errors for some names
        raise TargetInvalid(f"url cannot be parsed: {exc}") from None
    return parsed


def _literal_address(host: str) -> str | None:
    """The address a literal host names, None for a DNS name, TargetInvalid otherwise."""
    if ":" in host:
        return str(ipaddress.IPv6Address(host))  # httpx has checked the brackets' content
    labels = host.lower().rstrip(".").split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            address = None
        if address is None or str(address) != host:
            raise TargetInvalid(
                "url host is numeric but not a dotted-quad IPv4 address (like 203.0.113.7)"
            )
        return host
    if len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise TargetInvalid("url host is not a valid DNS name")
    return None


def forbidden_address(address: str) -> str | None:
    """Why fluxhook may not connect to `address`, or None if it may."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in TEREDO:
            return "a Teredo tunnel address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = forbidden_address(str(embedded))
            return f"{reason} (embedded in an IPv6 address)" if reason else None
    checks = (
        (ip in METADATA_ADDRESSES, "a cloud metadata address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.version == 6 and (ip.is_site_local or ip in NAT64_LOCAL), "a site-local address"),
        (ip.is_reserved or ip.is_unspecified, "a reserved address"),
        (ip.version == 4 and ip in SHARED_ADDRESS_SPACE, "a shared (CGNAT) address"),
        (not ip.is_global, "a non-public address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4 or well-known NAT64 address reaches."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
