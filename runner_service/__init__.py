"""The runner: a grpc.aio service that executes runs in worker processes."""
