"""make demo: the whole lifecycle on an embedded AWS (moto on 127.0.0.1), no account needed.

The real handlers run unchanged; boto3 reaches moto through AWS_ENDPOINT_URL and responses go
to a local receiver standing in for CloudFormation's pre-signed ResponseURL (tools/devkit).
After each step the demo prints what changed in AWS and in rolekeeper's registry (a diff of two
snapshots, not a dump), and it ends with what to do next.

- run: the session (send a request, heal, print what a step changed) and main
- story: the steps, two stacks from first request to last Delete
- snapshot: what AWS and the registry hold, and the difference between two snapshots

    python -m tools.demo
"""
