"""Offline over S3 (s3fs against moto's S3 server on loopback): the conformance suite, and
a write-offline-then-drain round trip."""

from __future__ import annotations

import itertools
import logging

import pytest

boto3 = pytest.importorskip("boto3")  # moto[server] and s3fs are dev dependencies
s3fs = pytest.importorskip("s3fs")
from moto.server import ThreadedMotoServer  # noqa: E402

from aiofs.layers import Offline  # noqa: E402
from aiofs.testing.conformance import ConformanceSuite  # noqa: E402
from aiofs.testing.faults import FaultInjectingFileSystem  # noqa: E402
from test_offline import DrainBeforeTargetReads  # noqa: E402

CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test",
               "region_name": "us-east-1"}
_buckets = itertools.count()


@pytest.fixture(scope="module")
def s3_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str) -> str:
    name = f"offline-{next(_buckets)}"
    boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS).create_bucket(Bucket=name)
    return name


def s3(endpoint: str):
    return s3fs.S3FileSystem(key="test", secret="test", skip_instance_cache=True,
                             client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"})


class TestOfflineOverS3Conformance(DrainBeforeTargetReads, ConformanceSuite):
    @pytest.fixture
    def aiofs_target(self, tmp_path, s3_endpoint):
        bucket = new_bucket(s3_endpoint)
        fs = Offline(fs=s3(s3_endpoint), cache_dir=str(tmp_path / "cache"), fsync=False)
        root = f"{bucket}/root"
        try:
            yield fs, root
        finally:
            try:
                self.cleanup_fs(fs, root)
                fs.sync(wait=True)
            finally:
                fs.close()


def test_offline_writes_reach_s3_after_the_drain(tmp_path, s3_endpoint):
    bucket = new_bucket(s3_endpoint)
    remote = s3(s3_endpoint)
    flaky = FaultInjectingFileSystem(fs=remote, failure_rate=0.0)
    fs = Offline(fs=flaky, cache_dir=str(tmp_path / "cache"), fsync=False)
    remote.pipe_file(f"{bucket}/seen.txt", b"seen")
    assert fs.cat_file(f"{bucket}/seen.txt") == b"seen"
    flaky.unplug()
    assert not fs.probe()
    files = {f"{bucket}/batch/{i}.bin": bytes([i]) * (i * 100) for i in range(40)}
    fs.pipe(files)
    fs.mv(f"{bucket}/seen.txt", f"{bucket}/moved.txt")
    assert fs.cat_file(f"{bucket}/moved.txt") == b"seen"
    flaky.plug()
    fs.sync(wait=True)
    remote.invalidate_cache()
    assert remote.cat([*files]) == files
    assert remote.cat_file(f"{bucket}/moved.txt") == b"seen"
    assert not remote.exists(f"{bucket}/seen.txt")
    assert flaky.call_counts["put_file"] == 40  # each queued upload sent exactly once
    fs.close()
