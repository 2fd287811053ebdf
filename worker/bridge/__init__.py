"""`hailo-bridge`: the HTTP sidecar that keeps `/healthz` and `/infer` alive over MQTT.

The Hailo device stays owned by one process, the worker; the bridge only speaks MQTT to it.
`mqtt` holds the MQTT side (who is alive, request/response), `app` the FastAPI routes,
`models` the request and response bodies, `metrics` the Prometheus side, `cli` the command.
"""
