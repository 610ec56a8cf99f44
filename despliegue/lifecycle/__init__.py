"""Model lifecycle: what each family serves, changed without a restart.

An import only adds a *candidate* to the model store; what a family serves is an explicit
choice recorded in the state file. The modules follow the processes they run in:

- `state`: the state file and its history (read everywhere, written by the commands);
- `plans`: what each family should serve, from the state file and configuration.yaml;
- `swap`: in each runner, the loaded models and the hot swap with canary and shadow;
- `pinning`: a call answered by one loaded version the caller names (V2 `/versions/{v}`);
- `comparisons`: how a shadow's answers are compared (named per model by the registry);
- `metrics`: the Prometheus series (answers per tag in the API; batches and shadows in runners);
- `commands`: promote, rollback, canary, shadow (the operator's process);
- `mlflow_sync`: families that follow an MLflow alias (the operator's process);
- `pack`: `bentoml build` with the home's state in the build context (the operator's).

Nothing is imported here: a runner imports `swap` and `plans`, never the commands.
"""
