"""The seeds' own serving designs, kept to compare the service against: one FastAPI app per
seed, served by one uvicorn process, loading its model file with joblib at import and calling
it once per request (no batching). The harness passes the stored model's artifact path in
MODEL_FILE, so a seed app and the service answer with the very same model."""
