"""What Lambda passes a handler besides the event."""

from __future__ import annotations

from dataclasses import dataclass

from tools.devkit.environment import ACCOUNT, REGION


@dataclass
class LambdaContext:
    """One invocation. aws_request_id is the same for every context unless given: rolekeeper takes
    a request noted by the same invocation as its own earlier attempt, so a test that means
    another invocation (another execution environment) passes its own."""

    function_name: str = "rolekeeper-ProvisionerFunction"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rolekeeper-ProvisionerFunction"
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    remaining_ms: int = 120_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
