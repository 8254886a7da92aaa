"""Run the service under uvicorn, with a drain period on SIGTERM for load balancers.

On SIGTERM the server first answers /readyz with 503 for `drain_s` seconds while it keeps serving, so
a balancer (nginx retries, Kubernetes readiness) stops sending it new work; then uvicorn stops
accepting, finishes the requests in flight (at most `shutdown_timeout_s`) and the process exits.
A second SIGTERM, or SIGINT (Ctrl-C), skips the drain.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_s: float) -> None:
        super().__init__(config)
        self.app, self.drain_s = app, drain_s
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_s > 0 and self._timer is None and not self.should_exit:
            self.app.state.engine.draining = True
            log.info("SIGTERM: /readyz now answers 503; shutting down in %.1f s", self.drain_s)
            self._timer = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
            self._timer.daemon = True
            self._timer.start()
            return
        if self._timer is not None:
            self._timer.cancel()
        super().handle_exit(sig, frame)


def serve(settings: Settings, host: str, port: int, log_level: str = "info") -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
    )
    DrainingServer(config, app, settings.drain_s).run()
