"""A faithful local BFL (Black Forest Labs) API, for tests, benchmarks and emulator mode.

Modules: `app` (create_emulator_app, lifespan), `config` (EmulatorConfig), `engine` (tasks and
their lifecycle), `state` (tasks, balances, counters), `routes` (BFL's public routes), `control`
(`/_emulator/*`), `courier` and `webhooks` (webhook delivery), `images` (rendering, signed
delivery URLs), `ratelimit` (get_result's headers).
"""

from service.emulator.app import create_emulator_app
from service.emulator.config import EmulatorConfig

__all__ = ["EmulatorConfig", "create_emulator_app"]
