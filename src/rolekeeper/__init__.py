"""rolekeeper: keep the IAM roles and KMS grants that Spot Fleet, Batch and ECS need."""

__version__ = "0.1.0"
