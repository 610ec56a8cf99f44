"""The API worker's edge: everything a request meets before an endpoint, and the HTTP server.

- `stack`: installs the whole middleware stack on the service, in order (the order is
  explained once, there);
- `probes`: /livez, /readyz, /healthz, answered first;
- `audit`: one JSON line per call; `auth`: bearer tokens and scopes;
- `guards`: path, size, in-flight, content-type, upload-field and method checks;
- `rejections`: refused inputs counted per route and reason;
- `docs`: the OpenAPI document and the Swagger UI, as this service publishes them;
- `server`: uvicorn settings (head deadline, trusted proxies, route-labelled metrics).

Nothing here runs in a runner process; nothing is imported here.
"""
