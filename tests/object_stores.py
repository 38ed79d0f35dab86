"""Real object-store servers for tests, on 127.0.0.1 and free ports: moto in server mode (S3) and
gcp-storage-emulator (GCS), each a real HTTP server the real clients (boto3, s3fs,
google-cloud-storage, gcsfs) talk to through their standard settings (``AWS_ENDPOINT_URL``,
``STORAGE_EMULATOR_HOST``). Servers are session-scoped and stopped by their own handle; each test
gets an empty bucket (``s3_bucket`` / ``gcs_bucket`` fixtures: ``"s3://NAME"``, ``"gs://NAME"``).
Nothing here points at a non-loopback address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except Exception as e:  # noqa: BLE001 - connection refused until it listens; HTTP errors mean it does
            if hasattr(e, "code"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up in {timeout:.0f} s: {e}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server's endpoint URL (``http://127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    _wait_http(url)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """A gcp-storage-emulator's endpoint URL (``http://127.0.0.1:PORT``), in memory."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    proc = subprocess.Popen([exe, "start", f"--host={LOOPBACK}", f"--port={port}", "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{LOOPBACK}:{port}"
    try:
        _wait_http(url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _fresh_clients() -> None:
    from rldskit import paths

    paths.reset()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> Iterator[str]:
    """An empty bucket on the S3 server, with the standard AWS settings pointing at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST"), timeout=10).close()
    _fresh_clients()
    import boto3

    name = f"rldskit-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    yield f"s3://{name}"
    _fresh_clients()


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch) -> Iterator[str]:
    """An empty bucket on the GCS emulator, with ``STORAGE_EMULATOR_HOST`` pointing at it."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    _fresh_clients()
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = f"rldskit-{uuid.uuid4().hex[:10]}"
    storage.Client(project="rldskit-test", credentials=AnonymousCredentials()).create_bucket(name)
    yield f"gs://{name}"
    _fresh_clients()
