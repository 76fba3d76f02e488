"""The development kit: what a local run of rolekeeper needs, shared by tests/ and tools/.

- environment: the region, fake credentials and the settings' variables a local run sets
- clock: FakeClock, the time tests run the handlers on (every wait recorded, none slept)
- events: the files in events/ as CloudFormation and EventBridge send them
- lambda_context: what Lambda passes the handlers besides the event
- responses: where CloudFormation's answers land (in-process Sent, or Receiver over HTTP)
- handlers: both handlers rebuilt on fresh settings, clients and a clock
- fidelity: moto made to behave as AWS where rolekeeper depends on the difference
- cloudformation: the CloudFormation double requests are confirmed against
- embedded: moto in-process (fast_aws) or as a server on 127.0.0.1 (moto_server)

Not part of the Lambda artifact (CodeUri is src/) and never imported by src/rolekeeper. Import
the modules themselves: importing the package imports nothing, so environment can be applied
before boto3, moto or rolekeeper are loaded.
"""
