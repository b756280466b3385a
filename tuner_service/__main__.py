"""`python -m tuner_service`: the tuner with JSON logs and a graceful SIGTERM drain.

Sweeps are not stopped on SIGTERM: their leases run out and a tuner takes them over.
"""

from __future__ import annotations

from taxidriver.server import main
from tuner_service.app import start_tuner
from tuner_service.settings import TunerSettings

if __name__ == "__main__":
    main("tuner", TunerSettings, start_tuner)
