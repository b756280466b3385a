"""The public gateway: one address for the trainer and registry APIs.

It forwards calls as raw bytes (no re-serialisation), keeps metadata,
deadlines, cancellation and rich error details intact, balances trainer calls
round robin, mirrors the upstreams' health and advertises only the public
services through reflection. The internal ingest API is never routed.
"""
