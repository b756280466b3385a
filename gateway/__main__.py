"""`python -m gateway`: the public gateway, configured from the environment."""

from __future__ import annotations

from gateway.app import start_gateway
from gateway.settings import GatewaySettings
from taxidriver.server import main

if __name__ == "__main__":
    main("gateway", GatewaySettings, start_gateway)
