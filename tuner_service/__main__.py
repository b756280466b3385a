"""`python -m tuner_service`: the tuner with JSON logs and a graceful SIGTERM drain."""

from __future__ import annotations

import asyncio

from taxidriver.logs import setup_logging
from taxidriver.server import serve
from tuner_service.app import start_tuner
from tuner_service.settings import TunerSettings


async def main() -> None:
    settings = TunerSettings.from_env()
    setup_logging("tuner", settings.log_level)
    app = await start_tuner(settings)
    # Sweeps are not stopped on SIGTERM: their leases run out and a tuner takes them over.
    await serve(app.running, grace=settings.shutdown_grace)
    await app.tuner.close()


if __name__ == "__main__":
    asyncio.run(main())
