"""`make sam-local`: every file in events/ through `sam local invoke`, in a Lambda-like container,
against the embedded AWS (tools/devkit: moto on 127.0.0.1, made to behave as AWS), checked as the
e2e tests check.

tools/sam_local.sh prepares (packages, base image tarball, `sam build`) and runs `python -m
tools.sam_local run` in a network namespace of its own, where only loopback and Docker's bridge
exist. Inside it the runner starts a Docker daemon (its own socket, state and exec dirs), imports
the base image, starts the embedded AWS and, per function build dir, a Unix socket bridge to it
(<build dir>/<fn>/.aws.sock); the image's bootstrap relays the function's AWS calls through that
socket. Then it invokes each step of plan.toml, checks the response and the AWS state, prints a
table, and stops what it started (by process id), also on failure.

- plan: plan.toml, checked against events/; each step's event with its run-time values
- template: template.yaml on x86_64 for sam build
- runner: the run (Docker, embedded AWS, bridges, every step, the table)
- processes, docker: what the run starts, and stopping it
- invoke: `sam local invoke` and what its output says
- aws_state, damage, checks: AWS read back, the damage before a heal event, what each step must leave

    python -m tools.sam_local template <out>   # the template with Architectures x86_64
    python -m tools.sam_local run --sam ... --rootfs ... --build-dir ... --cache ... --work ...
"""

from tools.sam_local.plan import EVENTS, PLAN, ROOT, function_for, load_plan, prepared_event
from tools.sam_local.template import write_template

__all__ = ["EVENTS", "PLAN", "ROOT", "function_for", "load_plan", "prepared_event", "write_template"]
