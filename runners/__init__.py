"""One BentoML service per model family. Each loads its model(s) by the tag that
configuration.yaml names and exposes batchable inference methods; no HTTP concerns here."""
