"""Despliegue's shared machinery: configuration, errors, model artifacts, schemas.

Everything here is used by more than one model family; family-specific serving code lives in
`runners/`, the public HTTP API in `service.py`.
"""
