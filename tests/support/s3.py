"""A real S3-compatible server for the tests: moto's server mode, on loopback."""

import logging
import uuid
from dataclasses import dataclass

import httpx
import obstore
from moto.server import ThreadedMotoServer

from service.settings import S3Access
from service.stores import Buckets


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def access(self) -> S3Access:
        # moto takes any credentials; they are still sent, and signed, as AWS would need.
        return S3Access(
            access_key_id="test-key-id",
            secret_access_key="test-secret",
            region="us-east-1",
            endpoint_url=self.endpoint,
        )

    def new_bucket(self) -> str:
        name = f"fluxhook-{uuid.uuid4().hex[:12]}"
        httpx.put(f"{self.endpoint}/{name}").raise_for_status()
        return name

    def objects(self, bucket: str) -> dict[str, int]:
        """Key → size of every object in `bucket`."""
        listed = obstore.list(self._client(bucket)).collect()
        return {meta["path"]: meta["size"] for meta in listed}

    def object(self, bucket: str, key: str) -> bytes:
        return bytes(obstore.get(self._client(bucket), key).bytes())

    def _client(self, bucket: str):
        return Buckets(self.access()).client(bucket)


def start_s3_server() -> tuple[ThreadedMotoServer, S3Server]:
    # Werkzeug, under moto's server, prints a line per request to stderr unless its logger
    # has a level (`make bench`'s storage row printed thousands); its errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, S3Server(f"http://{host}:{port}")
