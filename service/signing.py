"""Pure signing: webhook tokens, per-job secrets, image URLs, Standard Webhooks signatures.

SECRET_KEY is a rotation list: the first key signs, every key verifies.
"""

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence

from itsdangerous import (
    BadData,
    Serializer,
    Signer,
    TimestampSigner,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode

WEBHOOK_SALT = "bfl-webhook"
IMAGE_SALT = "image"
SUBSCRIPTION_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


class _KeysDerivedOnce:
    """An itsdangerous signer that derives each key once: itsdangerous hashes the key with
    the salt again at every signature and every check."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._derived: dict[bytes | None, bytes] = {}

    def derive_key(self, secret_key: bytes | None = None) -> bytes:
        derived = self._derived.get(secret_key)
        if derived is None:
            derived = self._derived[secret_key] = super().derive_key(secret_key)
        return derived


class _TokenSigner(_KeysDerivedOnce, Signer):
    pass


class _TimedTokenSigner(_KeysDerivedOnce, TimestampSigner):
    pass


class _Tokens:
    """itsdangerous's URL-safe serializers for tokens that carry a job id. The tokens are
    itsdangerous's format, read by itsdangerous; two of its costs go:

    - it builds a signer for every token and every check: here one per salt, kept;
    - it tries zlib on every payload and keeps the result if shorter, which a job id's 34
      bytes of JSON are not: deflate's set-up allocates and clears a few hundred KB each time.
      The payload goes uncompressed, which itsdangerous reads as it always has.

    In the serving process a token cost 105–111 µs of CPU, now 67–71 µs (bench/README.md,
    seventeenth pass)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._signers: dict[str | bytes | None, Signer] = {}

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        signer = self._signers.get(salt)
        if signer is None:
            signer = self._signers[salt] = super().make_signer(salt)
        return signer

    def dump_payload(self, obj) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


class _WebhookTokens(_Tokens, URLSafeSerializer):
    default_signer = _TokenSigner


class _ImageTokens(_Tokens, URLSafeTimedSerializer):
    default_signer = _TimedTokenSigner


class Signing:
    def __init__(self, secret_keys: Sequence[str]) -> None:
        assert secret_keys, "at least one secret key"
        self._keys = [key.encode() for key in secret_keys]
        # itsdangerous signs with the *last* key of its list; ours signs with the first.
        newest_last = list(reversed(self._keys))
        self._webhook = _WebhookTokens(newest_last, salt=WEBHOOK_SALT)
        self._image = _ImageTokens(newest_last, salt=IMAGE_SALT)

    def webhook_token(self, job_id: uuid.UUID) -> str:
        return self._webhook.dumps(job_id.hex)

    def job_id_from_webhook_token(self, token: str) -> uuid.UUID | None:
        try:
            return _job_id(self._webhook.loads(token))
        except (BadData, ValueError, TypeError):
            return None

    def webhook_secret(self, job_id: uuid.UUID) -> str:
        """The secret BFL echoes in X-Webhook-Secret for this job; derived, never stored."""
        return _job_secret(self._keys[0], job_id)

    def webhook_secret_matches(self, job_id: uuid.UUID, given: str) -> bool:
        """Constant-time check against the secret derived from every rotation key."""
        matches = [hmac.compare_digest(_job_secret(key, job_id), given) for key in self._keys]
        return any(matches)

    def image_token(self, job_id: uuid.UUID) -> str:
        return self._image.dumps(job_id.hex)

    def job_id_from_image_token(self, token: str, max_age_s: int) -> uuid.UUID | None:
        try:
            return _job_id(self._image.loads(token, max_age=max_age_s))
        except (BadData, ValueError, TypeError):
            return None


def _job_id(payload) -> uuid.UUID | None:
    """The job a token names: its payload is the id's hex (a signed token with any other
    payload names none; `uuid.UUID` raised AttributeError on a number, a 500)."""
    if not isinstance(payload, str):
        return None
    try:
        return uuid.UUID(hex=payload)
    except ValueError:
        return None


def _job_secret(key: bytes, job_id: uuid.UUID) -> str:
    return hmac.new(key, b"fluxhook.job-secret." + job_id.bytes, hashlib.sha256).hexdigest()


def bfl_signature_matches(secret: str, body: bytes, header: str) -> bool:
    """`X-BFL-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>` (BFL's skills docs)."""
    scheme, _, given = header.strip().partition("=")
    if scheme.lower() != "sha256" or not given:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.strip().lower())


def new_subscription_secret() -> str:
    return SUBSCRIPTION_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_bytes(secret: str) -> bytes:
    """A `whsec_` secret is base64 key material; any other secret (a drop-in
    `webhook_secret`) signs with its UTF-8 bytes."""
    if secret.startswith(SUBSCRIPTION_SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(SUBSCRIPTION_SECRET_PREFIX))
    return secret.encode()


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def standard_headers(
    secrets_in_use: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """webhook-id / -timestamp / -signature; one signature per secret during a rotation."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    if secrets_in_use:
        signatures = [standard_signature(s, msg_id, timestamp, body) for s in secrets_in_use]
        headers["webhook-signature"] = " ".join(signatures)
    return headers


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return "fh_" + secrets.token_urlsafe(32)
