"""Per-family answers: from what a runner returned (and the model's card) to the response schema.

Pure functions, one module per family: no HTTP, no runner call, no BentoML. The API service
(service.py) decodes the request, calls the runner and hands the result here, so everything a
family decides after its model has spoken (thresholds, top-k, which face is valid, which
antibiotic was asked for) is tested in tests/unit without a server.
"""
