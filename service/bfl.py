"""fluxhook's client for the BFL API. Every call goes through the httpx client passed in.

Errors, translated once here at the edge:

    BFLError
    ├── BFLAuthError            401 / 403: BFL refused fluxhook's API key
    ├── BFLInsufficientCredits  402
    ├── BFLNotFound             404: unknown route, or `Task not found` on every host asked
    ├── BFLRejected             400 / 422 and other 4xx: BFL will not take this request
    ├── BFLRateLimited          429: too many active tasks (`retry_after` in seconds, if sent)
    ├── BFLServerError          5xx, or a body that is not what BFL sends
    ├── BFLUnavailable          the request never reached BFL (connect error): safe to resend
    └── BFLTimeout              no answer in time: BFL may or may not have the request
"""

import logging
import math
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from service import outbound
from service.guard import origin

log = logging.getLogger(__name__)
# Beyond the configured origins, BFL_API_KEY goes only to https hosts of BFL's own domains.
BFL_DOMAINS = ("bfl.ai", "bfl.ml")


class BFLError(Exception):
    def __init__(self, message: str, status_code: int | None = None, detail: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class BFLAuthError(BFLError):
    pass


class BFLInsufficientCredits(BFLError):
    pass


class BFLNotFound(BFLError):
    pass


class BFLRejected(BFLError):
    pass


class BFLRateLimited(BFLError):
    def __init__(self, message: str, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BFLServerError(BFLError):
    pass


class BFLUnavailable(BFLError):
    pass


class BFLTimeout(BFLError):
    pass


@dataclass(frozen=True)
class Submitted:
    id: str
    polling_url: str | None
    cost: float | None
    input_mp: float | None
    output_mp: float | None


class BFLClient:
    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        api_key: str,
        base_url: str,
        poll_hosts: tuple[str, ...] = (),
        timeout_s: float = 30.0,
    ) -> None:
        self._transport = transport
        self._headers = {"x-key": api_key, "accept": "application/json"}
        self.base_url = base_url.rstrip("/")
        self._poll_hosts = poll_hosts
        self._key_origins = frozenset(origin(url) for url in (self.base_url, *poll_hosts))
        self.timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))

    async def submit(
        self, model: str, inputs: dict, webhook_url: str, webhook_secret: str
    ) -> Submitted:
        body = {**inputs, "webhook_url": webhook_url, "webhook_secret": webhook_secret}
        data = await self._call("POST", f"{self.base_url}/v1/{model}", json=body)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise BFLServerError("BFL's submit response has no task id", detail=data)
        return Submitted(
            id=data["id"],
            polling_url=_str_or_none(data.get("polling_url")),
            cost=_float_or_none(data.get("cost")),
            input_mp=_float_or_none(data.get("input_mp")),
            output_mp=_float_or_none(data.get("output_mp")),
        )

    async def get_result(self, task_id: str, polling_url: str | None = None) -> dict:
        """The task's get_result body: from `polling_url` if known, else from the API host,
        then each of BFL_POLL_HOSTS. BFLNotFound only when every host says `Task not found`."""
        for url in self.result_urls(task_id, polling_url):
            try:
                data = await self._call("GET", url)
            except BFLNotFound:
                continue
            if isinstance(data, dict):
                return data
            raise BFLServerError("BFL's get_result body is not an object", detail=data)
        raise BFLNotFound(f"task {task_id} not found on any BFL host", status_code=404)

    def result_urls(self, task_id: str, polling_url: str | None) -> list[str]:
        hosts = (self.base_url, *self._poll_hosts)
        urls = [polling_url] if polling_url and self._follows(polling_url) else []
        urls += [str(httpx.URL(f"{h}/v1/get_result", params={"id": task_id})) for h in hosts]
        return list(dict.fromkeys(urls))

    def _follows(self, polling_url: str) -> bool:
        if self.may_carry_key(polling_url):
            return True
        log.warning(
            "not following polling_url %r: BFL_API_KEY goes only to the configured BFL hosts "
            "and https hosts under %s; asking %s instead",
            polling_url[:200],
            " or ".join(BFL_DOMAINS),
            self.base_url,
        )
        return False

    def may_carry_key(self, url: str) -> bool:
        """Whether BFL_API_KEY may be sent to `url` (DESIGN §4, outbound policy)."""
        try:
            parsed = outbound.parsed_url(url)  # BFL's endpoints recur: parsed once each
            host, port = origin(parsed)
        except Exception:  # InvalidURL, idna's errors, a scheme with no default port
            return False
        if (host, port) in self._key_origins:
            return True
        return parsed.scheme == "https" and any(
            host == domain or host.endswith("." + domain) for domain in BFL_DOMAINS
        )

    async def credits(self) -> float:
        data = await self._call("GET", f"{self.base_url}/v1/credits")
        value = data.get("credits") if isinstance(data, dict) else None
        if not isinstance(value, int | float):
            raise BFLServerError("BFL's credits response has no number", detail=data)
        return float(value)

    async def _call(self, method: str, url: str, json: dict | None = None) -> Any:
        """One request, over within `timeout_s` in all (httpx's timeouts are per read, and
        admission's lease on a submitting job relies on a bound for the whole call)."""
        if not self.may_carry_key(url):
            raise BFLRejected(f"refused to send BFL_API_KEY to {url[:200]!r}")
        try:
            with anyio.fail_after(self.timeout_s):
                response = await outbound.request(
                    self._transport, method, url, json=json, headers=self._headers,
                    timeouts=self._timeout,
                )  # fmt: skip
        except TimeoutError as exc:
            raise BFLTimeout("BFL did not answer in time") from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise BFLUnavailable(f"could not reach BFL: {type(exc).__name__}") from exc
        except httpx.TimeoutException as exc:
            raise BFLTimeout(f"BFL did not answer in time: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise BFLTimeout(f"connection to BFL failed mid-request: {exc!r}") from exc
        return _decode(response)


def _decode(response: httpx.Response) -> Any:
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        if data is None:
            raise BFLServerError("BFL answered with a body that is not JSON", response.status_code)
        return data
    raise _error_for(response, data)


def _error_for(response: httpx.Response, data: Any) -> BFLError:
    status = response.status_code
    detail = data.get("detail", data) if isinstance(data, dict) else response.text[:500]
    message = f"BFL answered {status}: {detail}"
    if status == 404 or (isinstance(data, dict) and data.get("status") == "Task not found"):
        return BFLNotFound(message, status_code=status, detail=detail)
    if status in (401, 403):
        return BFLAuthError(message, status_code=status, detail=detail)
    if status == 402:
        return BFLInsufficientCredits(message, status_code=status, detail=detail)
    if status == 429:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        return BFLRateLimited(message, retry_after=retry_after, status_code=status, detail=detail)
    if status >= 500:
        return BFLServerError(message, status_code=status, detail=detail)
    return BFLRejected(message, status_code=status, detail=detail)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds; None if absent or not a plain non-negative number."""
    if value is None or not value.isascii():
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
