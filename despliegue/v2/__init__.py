"""The Open Inference Protocol (KServe V2) over the service: wire format (protocol), each model
kind's tensors and seed endpoint (models), names and token scopes (naming), routes (routes)."""
