"""Webhook and image tokens: itsdangerous's format, in both directions, whichever version of
fluxhook made them (tokens are in flight across a deploy: BFL holds the webhook URL, clients
hold image links)."""

import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from service.signing import IMAGE_SALT, WEBHOOK_SALT, Signing

KEYS = ["the newest key", "an older key"]
ids = st.uuids()


def stock_webhook(keys):
    return URLSafeSerializer([key.encode() for key in reversed(keys)], salt=WEBHOOK_SALT)


def stock_image(keys, at: float | None = None):
    class Stamped(TimestampSigner):
        def get_timestamp(self) -> int:  # itsdangerous reads the clock here
            return int(time.time() if at is None else at)

    newest_last = [key.encode() for key in reversed(keys)]
    return URLSafeTimedSerializer(newest_last, salt=IMAGE_SALT, signer=Stamped)


@given(ids)
def test_itsdangerous_reads_the_tokens_fluxhook_makes(job_id):
    signing = Signing(KEYS)
    assert stock_webhook(KEYS).loads(signing.webhook_token(job_id)) == job_id.hex
    assert stock_image(KEYS).loads(signing.image_token(job_id), max_age=60) == job_id.hex


@given(ids)
def test_a_webhook_token_is_the_one_itsdangerous_makes_unless_it_compresses(job_id):
    """fluxhook skips itsdangerous's zlib attempt; only an id of long runs would compress."""
    stock = stock_webhook(KEYS).dumps(job_id.hex)
    assert Signing(KEYS).webhook_token(job_id) == stock or stock.startswith(".")


@given(ids)
def test_fluxhook_reads_the_tokens_itsdangerous_makes(job_id):
    signing = Signing(KEYS)
    token = stock_webhook(KEYS).dumps(job_id.hex)
    assert signing.job_id_from_webhook_token(token) == job_id
    assert signing.job_id_from_image_token(stock_image(KEYS).dumps(job_id.hex), 60) == job_id


def test_a_compressed_payload_is_read():
    """itsdangerous compresses a payload when that makes it shorter."""
    signing = Signing(KEYS)
    token = stock_webhook(KEYS).dumps("0" * 32)  # long runs: itsdangerous compresses
    assert token.startswith(".")
    assert signing.job_id_from_webhook_token(token) == uuid.UUID(int=0)


def test_every_rotation_key_verifies_and_the_first_signs():
    job_id = uuid.uuid4()
    old = Signing(["an older key"])
    rotated = Signing(["the newest key", "an older key"])
    assert rotated.job_id_from_webhook_token(old.webhook_token(job_id)) == job_id
    assert rotated.job_id_from_image_token(old.image_token(job_id), 60) == job_id
    assert old.job_id_from_webhook_token(rotated.webhook_token(job_id)) is None
    assert (
        Signing(["the newest key"]).job_id_from_webhook_token(rotated.webhook_token(job_id))
        == job_id
    )


@pytest.mark.parametrize("mangle", [
    lambda token: token[:-1] + ("A" if token[-1] != "A" else "B"),
    lambda token: "x" + token,
    lambda token: token.replace(".", ""),
    lambda token: "",
])  # fmt: skip
def test_a_changed_token_is_refused(mangle):
    signing, job_id = Signing(KEYS), uuid.uuid4()
    assert signing.job_id_from_webhook_token(mangle(signing.webhook_token(job_id))) is None
    assert signing.job_id_from_image_token(mangle(signing.image_token(job_id)), 60) is None


def test_one_kind_of_token_is_not_the_other():
    signing, job_id = Signing(KEYS), uuid.uuid4()
    assert signing.job_id_from_webhook_token(signing.image_token(job_id)) is None
    assert signing.job_id_from_image_token(signing.webhook_token(job_id), 60) is None


def test_an_image_token_past_its_age_is_refused():
    signing, job_id = Signing(KEYS), uuid.uuid4()
    token = stock_image(KEYS, at=time.time() - 120).dumps(job_id.hex)
    assert signing.job_id_from_image_token(token, 600) == job_id
    assert signing.job_id_from_image_token(token, 60) is None


@pytest.mark.parametrize("payload", ["not hex", "", 12, ["a"], None, {"id": "0" * 32}])
def test_a_signed_token_not_made_from_a_job_id_is_refused(payload):
    signing = Signing(KEYS)
    assert signing.job_id_from_webhook_token(stock_webhook(KEYS).dumps(payload)) is None
    assert signing.job_id_from_image_token(stock_image(KEYS).dumps(payload), 60) is None


@given(st.text(max_size=300))
def test_any_other_string_is_refused_without_an_error(token):
    signing = Signing(KEYS)
    assert signing.job_id_from_webhook_token(token) is None
    assert signing.job_id_from_image_token(token, 60) is None
