"""Moved to tools/devkit, the development kit tests and tools share (embedded.moto_server,
responses.Receiver, lambda_context.LambdaContext, environment). Only tools/bench.py still imports
these names (it is being made a package by another change): delete this module once it imports
tools.devkit."""

from tools.devkit.embedded import moto_server as embedded_aws
from tools.devkit.environment import ACCOUNT, OPT_IN, REGION
from tools.devkit.lambda_context import LambdaContext as Context
from tools.devkit.responses import Receiver, free_port

__all__ = ["ACCOUNT", "OPT_IN", "REGION", "Context", "Receiver", "embedded_aws", "free_port"]
