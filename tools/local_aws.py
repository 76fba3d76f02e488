"""An embedded AWS for the demo, the benchmarks and the e2e tests: a moto server on 127.0.0.1,
made to behave as AWS where rolekeeper depends on it (tests/fidelity.py), and a local receiver
standing in for CloudFormation's pre-signed ResponseURL. Not part of the Lambda artifact."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT = "123456789012"
# The tag by which an operator opts a customer managed key in to Custom::SpotFleetKmsGrant.
OPT_IN = [{"TagKey": "rolekeeper:spot-fleet-grants", "TagValue": "allow"}]
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Receiver:
    """Collects the responses PUT to http://127.0.0.1:<port>/<id>."""

    port: int = 0
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies[self.path.split("?")[0].strip("/")] = json.loads(self.rfile.read(length))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def url(self, request_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/{request_id}?X-Amz-Signature=not-a-real-signature"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class Context:
    function_name: str = "rolekeeper-ProvisionerFunction"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rolekeeper-ProvisionerFunction"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_ms: int = 120_000

    def get_remaining_time_in_millis(self) -> int:
        return self.timeout_ms


def set_environment(endpoint: str, **extra: str) -> None:
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
            "REGISTRY_TABLE_NAME": "rolekeeper-registry",
            "ALLOWED_SERVICE_NAMES": "spot.amazonaws.com,spotfleet.amazonaws.com,batch.amazonaws.com,"
            "ecs.amazonaws.com,autoscaling.amazonaws.com",
            "ALLOWED_MANAGED_POLICY_ARNS": "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
            "ALLOWED_ROLE_NAMES": "aws-ec2-spot-fleet-tagging-role,AmazonEC2SpotFleetRole,AmazonEC2SpotFleetTaggingRole,ecsInstanceRole,"
            "AWSBatchServiceRole,app-*",
            "HEAL_MODE": "heal",
            # No CloudFormation stands behind these requests (the demo, bench and e2e tests play
            # its part by sending them), so there is nothing to confirm them against;
            # tests/integration covers confirmation against a CloudFormation double.
            "VERIFY_REQUESTS": "false",
            # The demo answers a local stand-in for CloudFormation (never set in a deployed stack).
            "LOCAL_RESPONSE_URLS": "true",
            "POWERTOOLS_SERVICE_NAME": "rolekeeper",
            "POWERTOOLS_METRICS_NAMESPACE": "rolekeeper",
            **extra,
        }
    )


@contextlib.contextmanager
def embedded_aws(asynchronous_slr_deletion: bool = False, **environment: str) -> Iterator[Any]:
    """Yields the DeletionTasks controller; AWS_ENDPOINT_URL points every boto3 client at moto."""
    import pytest
    from moto.server import ThreadedMotoServer

    from tests import fidelity

    port = free_port()
    set_environment(f"http://127.0.0.1:{port}", **environment)
    fidelity.use_only_the_managed_policies_rolekeeper_needs()
    tasks = fidelity.DeletionTasks(asynchronous=asynchronous_slr_deletion)
    patcher = pytest.MonkeyPatch()
    fidelity.install(patcher, tasks)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        import boto3

        from rolekeeper.aws import clients as aws
        from rolekeeper.aws.registry import TABLE_SCHEMA
        from rolekeeper.config import settings

        aws.client.cache_clear()
        settings.cache_clear()
        boto3.client("dynamodb").create_table(
            TableName=os.environ["REGISTRY_TABLE_NAME"], **copy.deepcopy(TABLE_SCHEMA)
        )
        yield tasks
    finally:
        server.stop()
        patcher.undo()
