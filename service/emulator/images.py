"""Result images: rendered with Pillow off the event loop, cached, and served via signed URLs.

An image is a deterministic function of (seed, prompt, size, format): the same seed and prompt
give the same bytes. Delivery URLs imitate BFL's Azure blob SAS links: `se` (expiry, ISO 8601
UTC) and `sig` (HMAC-SHA256 over task id, extension and expiry, base64).
"""

import base64
import collections
import hashlib
import hmac
import io
import random
from datetime import UTC, datetime
from urllib.parse import urlencode

import anyio
from PIL import Image

FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
CACHE_SIZE = 32  # images; a 4 MP JPEG is ~1 MB


def render(seed: int, prompt: str, size: tuple[int, int], fmt: str) -> bytes:
    """Smooth colour fields: a 6x6 grid of colours drawn from (seed, prompt), upscaled."""
    rng = random.Random(hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest())
    grid = Image.new("RGB", (6, 6))
    grid.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(36)])
    image = grid.resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format=FORMATS[fmt], quality=90)
    return out.getvalue()


def etag(content: bytes) -> str:
    return '"0x' + hashlib.sha256(content).hexdigest()[:15].upper() + '"'


class ImageCache:
    """Renders each distinct image once, in a worker thread, and keeps the latest few."""

    def __init__(self) -> None:
        self._images: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._locks: dict[tuple, anyio.Lock] = {}

    async def get(self, seed: int, prompt: str, size: tuple[int, int], fmt: str) -> bytes:
        key = (seed, prompt, size, fmt)
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            if key not in self._images:
                self._images[key] = await anyio.to_thread.run_sync(render, *key)
                while len(self._images) > CACHE_SIZE:
                    self._images.popitem(last=False)
            self._images.move_to_end(key)
            self._locks.pop(key, None)
            return self._images[key]


class UrlSigner:
    """Signs and checks delivery URLs; `precise` adds milliseconds to `se` for scaled time."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def url(self, base: str, task_id: str, ext: str, expires: float, *, precise: bool) -> str:
        se = format_expiry(expires, precise=precise)
        query = urlencode({"se": se, "sp": "r", "sig": self._sign(task_id, ext, se)})
        return f"{base}/delivery/{task_id}/sample.{ext}?{query}"

    def check(self, task_id: str, ext: str, se: str, sig: str, now: float) -> str | None:
        """None if the URL is good, else the Azure-style reason it is refused."""
        expected = self._sign(task_id, ext, se)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            return "Signature did not match."
        try:
            expiry = datetime.fromisoformat(se).timestamp()
        except ValueError:
            return "Signature fields not well formed."
        if expiry <= now:
            return (
                f"Signed expiry time [{_http_date(expiry)}] must be after signed start time "
                f"[{_http_date(now)}]"
            )
        return None

    def _sign(self, task_id: str, ext: str, se: str) -> str:
        digest = hmac.new(self._secret, f"{task_id}\n{ext}\n{se}".encode(), hashlib.sha256)
        return base64.b64encode(digest.digest()).decode()


def format_expiry(epoch: float, *, precise: bool) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    if precise:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def azure_error(code: str, message: str, detail: str | None = None) -> str:
    extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}</Error>"
    )
