"""`python -m gateway`: the public gateway, configured from the environment."""

from __future__ import annotations

import asyncio

from gateway.app import start_gateway
from gateway.settings import GatewaySettings
from taxidriver.logs import setup_logging
from taxidriver.server import serve


async def main() -> None:
    settings = GatewaySettings.from_env()
    app = await start_gateway(settings)
    await serve(app.running, grace=settings.shutdown_grace)
    await app.close()


if __name__ == "__main__":
    setup_logging("gateway", GatewaySettings.from_env().log_level)
    asyncio.run(main())
