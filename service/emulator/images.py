"""Result images: rendered with Pillow off the event loop, cached, and served via signed URLs.

An image is a deterministic function of (seed, prompt, size, format): the same seed and prompt
give the same bytes. Its byte size is BFL's, so a delivery takes as long to download as a real
one: a 1024x768 FLUX JPEG is 100-400 KB and a PNG 1-2 MB, where a smooth render alone would be
~48 KB and ~320 KB. Fine grain supplies the missing detail (see `GRAIN`).

Delivery URLs imitate BFL's Azure blob SAS links: `se` (expiry, ISO 8601 UTC) and `sig`
(HMAC-SHA256 over task id, extension and expiry, base64). `delivery.py` paces their download.
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
CACHE_BYTES = 64 * 1024 * 1024  # 64 MiB: ~300 1 MP JPEGs (~210 KB) or ~45 1 MP PNGs (~1.4 MB)
JPEG_QUALITY = 90  # BFL-like; also WebP's quality. PNG keeps Pillow's default compression (6)
# Share of grain in each pixel (Image.blend alpha): uniform luma noise of 0-255 at 0.07 moves a
# pixel by up to ~18 of 255 levels. Tuned on 1024x768: JPEG ~207 KB, PNG ~1.37 MB, WebP ~190 KB
# (tests/emulator/test_delivery.py pins JPEG to 150-300 KB and PNG to 1-2 MB). Sizes scale with
# the pixel count. Luma-only grain: JPEG subsamples chroma, so colour noise would cost PNG a
# lot more than JPEG and no single alpha would land both in BFL's ranges.
GRAIN = 0.07


def render(seed: int, prompt: str, size: tuple[int, int], fmt: str) -> bytes:
    """Smooth colour fields from (seed, prompt), with seeded grain blended in, encoded as `fmt`."""
    rng = random.Random(hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest())
    image = Image.blend(_colour_fields(rng, size), _grain(rng, size), GRAIN)
    out = io.BytesIO()
    image.save(out, format=FORMATS[fmt], quality=JPEG_QUALITY)
    return out.getvalue()


def _colour_fields(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A 6x6 grid of colours drawn from `rng`, upscaled: the picture's large shapes."""
    grid = Image.new("RGB", (6, 6))
    grid.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(36)])
    return grid.resize(size, Image.Resampling.BICUBIC)


def _grain(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Uniform grey noise, one byte per pixel from `rng` (fast: ~2 ms per megapixel)."""
    width, height = size
    return Image.frombytes("L", size, rng.randbytes(width * height)).convert("RGB")


def etag(content: bytes) -> str:
    return '"0x' + hashlib.sha256(content).hexdigest()[:15].upper() + '"'


class ImageCache:
    """Renders each distinct image once, in a worker thread, and keeps the latest CACHE_BYTES."""

    def __init__(self) -> None:
        self._images: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._locks: dict[tuple, anyio.Lock] = {}
        self._bytes = 0  # total size of the cached images

    async def get(self, seed: int, prompt: str, size: tuple[int, int], fmt: str) -> bytes:
        key = (seed, prompt, size, fmt)
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            if key not in self._images:
                self._images[key] = await anyio.to_thread.run_sync(render, *key)
                self._bytes += len(self._images[key])
                while self._bytes > CACHE_BYTES and len(self._images) > 1:
                    self._bytes -= len(self._images.popitem(last=False)[1])
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
