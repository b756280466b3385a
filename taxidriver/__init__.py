"""Shared plumbing of the Taxi Driver services.

Settings from the environment, JSON logs, one error type mapped to rich gRPC
statuses, server start-up with health, reflection and a graceful drain, and
the embedded PostgreSQL used when DATABASE_URL is unset. The generated proto
modules live below this package (taxidriver/<area>/v1/), produced by
`make protos`.
"""

DOMAIN = "taxidriver.dev"
