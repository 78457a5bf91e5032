"""A real S3-compatible server on loopback for the tests: moto's standalone server.

moto (``moto[server]``, in the ``test`` extra) answers the S3 REST API over HTTP as AWS
does, conditional writes included. It is started with authentication on: after the
first three (unauthenticated) calls create an IAM user allowed ``s3:*`` and its access
key, every request must carry a valid AWS Signature V4 for that key, which moto checks
by recomputing it. moto does not check ``x-amz-content-sha256`` against the payload.
It keeps everything in memory: a stopped server has lost its buckets and keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

import boto3
import pytest

from tests.harness.ports import free_port

REGION = "us-east-1"
START_TIMEOUT = 30.0
_UNAUTHENTICATED_CALLS = 3
_ALLOW_S3 = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})


class S3Server:
    """One moto server process listening on 127.0.0.1; its log goes to ``log_path``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self.access_key = ""
        self.secret_key = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        """Start the server, wait until it answers and make the test user's access key; fail
        the test, with the server's log, if it does not come up."""
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_UNAUTHENTICATED_CALLS)},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._fail(f"moto's S3 server exited with {self._process.returncode}")
            if self._answers():
                self._make_user()
                return self
            time.sleep(0.1)
        self.stop()
        self._fail(f"moto's S3 server did not answer within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """Stop the server (its buckets are gone)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _make_user(self) -> None:
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="farm")
        iam.put_user_policy(UserName="farm", PolicyName="s3", PolicyDocument=_ALLOW_S3)
        key = iam.create_access_key(UserName="farm")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/moto-api/data.json", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def _fail(self, why: str) -> NoReturn:
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        pytest.fail(
            f"{why}. The S3 tests need moto[server] in the virtualenv"
            f" (pip install -e '.[test]'). Its log:\n{tail}", pytrace=False,
        )
