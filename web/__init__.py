"""The HTTP face of the public API: transcoded REST routes, OpenAPI, a dashboard."""
