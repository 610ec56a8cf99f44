"""Batch scoring: a folder of images or a table of items answered offline, one row per item.

The same runner classes and the same pure answer functions as the HTTP API (despliegue/answers/),
called in this process on whole batches: no HTTP, no JSON, no adaptive batching. Which family
reads what, and how its answer becomes a row, is the family's `Scorer` (despliegue/batch/
families.py), named by its registry entry. `python -m despliegue.batch --help` for the command.
"""
