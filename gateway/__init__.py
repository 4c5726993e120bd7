"""The REST gateway: REST/JSON → gRPC transcoding from the schema's google.api.http annotations."""
