"""The handles every service function needs, taken from the app once."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from coordinator.appkeys import DATABASE, JOB_BUS, SETTINGS
from coordinator.bus import JobBus
from coordinator.db.database import Database
from coordinator.settings import Settings


@dataclass(frozen=True)
class Core:
    settings: Settings
    db: Database
    bus: JobBus

    @classmethod
    def of(cls, app: web.Application) -> Core:
        return cls(app[SETTINGS], app[DATABASE], app[JOB_BUS])
