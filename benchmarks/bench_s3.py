"""Small S3 requests: the repository's boto3 client against one signed HTTP request each.

An S3 stand-in in a process of its own on loopback answers every HEAD at once (200, the
headers S3 sends) and every GET of a bucket with a listing of 100 files and one collection,
so that what is measured is the client. Two clients ask it the same things over one kept-alive
connection, in turns:

* the farm: ``S3Storage.thd_stat`` of a file (one HeadObject through boto3, as every
  PROPFIND, download and upload check does) and ``thd_list`` of a collection (one
  ListObjectsV2);
* the reference: the same request signed with botocore's SigV4 signer and sent with
  ``http.client`` (what the repository's hand-written client did before boto3).

Each figure is the median time per request over ``CALLS`` calls, wall and CPU of this
process (the server's CPU is not counted), over ``ROUNDS`` rounds taken in turn.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from benchmarks.bench_records import _start
from buildbot_farm.artifacts.s3 import S3Storage
from buildbot_farm.artifacts.s3_config import S3Bucket
from tests.harness.twisted_reactor import reactor

CALLS = 200
ROUNDS = 3
BUCKET = "bench"
KEY, SECRET, REGION = "AKIDBENCH", "bench-secret", "us-east-1"
STAND_IN = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
LISTING = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult'
           b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bench</Name>'
           b'<Prefix>dir/</Prefix><KeyCount>101</KeyCount><MaxKeys>1000</MaxKeys>'
           b'<Delimiter>/</Delimiter><IsTruncated>false</IsTruncated>'
           + b''.join(b'<Contents><Key>dir/file-%d.bin</Key><LastModified>'
                      b'2024-05-01T12:00:00.000Z</LastModified><ETag>'
                      b'"0123456789abcdef0123456789abcdef"</ETag><Size>1024</Size>'
                      b'<StorageClass>STANDARD</StorageClass></Contents>' % n
                      for n in range(100))
           + b'<CommonPrefixes><Prefix>dir/sub/</Prefix></CommonPrefixes></ListBucketResult>')
class StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # headers and body in one write: no delayed-ACK stall
    def log_message(self, *args): pass
    def _headers(self, length):
        self.send_response(200)
        self.send_header("Last-Modified", "Wed, 01 May 2024 12:00:00 GMT")
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("Content-Length", str(length))
        self.send_header("x-amz-request-id", "BENCH")
    def do_HEAD(self):
        self._headers(1024)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
    def do_GET(self):
        self._headers(len(LISTING))
        self.send_header("Content-Type", "application/xml")
        self.end_headers()
        self.wfile.write(LISTING)
server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
open(sys.argv[1], "w").write(str(server.server_address[1]))
server.serve_forever()
"""


class SignedRequests:
    """The reference: each request signed by botocore's SigV4 signer, sent by http.client."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.credentials = Credentials(KEY, SECRET)

    def request(self, method: str, path: str) -> int:
        """Send one signed ``method`` of ``path``; the answer's status."""
        request = AWSRequest(method, self.endpoint + path)
        S3SigV4Auth(self.credentials, "s3", REGION).add_auth(request)
        self.connection.request(method, path, headers=dict(request.headers.items()))
        answer = self.connection.getresponse()
        answer.read()
        return answer.status


def per_call(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds per call of ``work``, over ``CALLS`` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(CALLS):
        work()
    return (time.perf_counter() - wall) / CALLS, (time.process_time() - cpu) / CALLS


def main() -> None:
    """Start the stand-in, measure both clients in turn ``ROUNDS`` times, print the table."""
    workdir = Path(tempfile.mkdtemp(prefix="farm-bench-s3-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        port_file = workdir / "port"
        process, port = _start([sys.executable, "-c", STAND_IN, str(port_file)], port_file)
        storage = S3Storage(S3Bucket(f"http://127.0.0.1:{port}", BUCKET, access_key=KEY,
                                     secret_key=SECRET, region=REGION), workdir, reactor)
        reference = SignedRequests(port)
        work = {
            "HEAD, farm (boto3)": lambda: storage.thd_stat(("dir", "file.bin")),
            "HEAD, reference": lambda: reference.request("HEAD", f"/{BUCKET}/dir/file.bin"),
            "list, farm (boto3)": lambda: storage.thd_list(("dir",)),
            "list, reference": lambda: reference.request(
                "GET", f"/{BUCKET}?list-type=2&prefix=dir%2F&delimiter=%2F&max-keys=1000"),
        }
        for run in work.values():  # warm up: the client, its models, the connections
            run()
        rounds = [{name: per_call(run) for name, run in work.items()} for _ in range(ROUNDS)]
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"small S3 requests to a loopback stand-in, {CALLS} calls a figure,"
          f" {ROUNDS} rounds taken in turn")
    print(f"{'request':<22}{'wall ms median (range)':>26}{'CPU ms median (range)':>26}")
    for name in work:
        walls = sorted(r[name][0] * 1000 for r in rounds)
        cpus = sorted(r[name][1] * 1000 for r in rounds)
        print(f"{name:<22}{_span(walls, '.3f'):>26}{_span(cpus, '.3f'):>26}")
    for request in ("HEAD", "list"):
        farm, ref = f"{request}, farm (boto3)", f"{request}, reference"
        walls = sorted(r[farm][0] / r[ref][0] for r in rounds)
        cpus = sorted(r[farm][1] / r[ref][1] for r in rounds)
        print(f"{request}: farm / reference, wall {_span(walls, '.2f')}, CPU {_span(cpus, '.2f')}")
    print(json.dumps(rounds))


def _span(values: list[float], spec: str) -> str:
    return (f"{format(statistics.median(values), spec)}"
            f" ({format(values[0], spec)}-{format(values[-1], spec)})")
