"""What the routes of the application (:mod:`lungseg.serve.app`) share: the settings, the models
and their micro-batchers, the threads that decode and encode, the processes that make DICOM SEGs
and SRs, the metrics and the API key's state."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from lungseg.core.errors import LungsegError
from lungseg.dicom.encoder import DicomEncoder
from lungseg.serve.batcher import MicroBatcher
from lungseg.serve.loading import ServedModel, load_models
from lungseg.serve.metrics import Metrics
from lungseg.serve.pipeline import ServeError
from lungseg.serve.security import KeyFailures
from lungseg.serve.settings import ServeConfig, api_key

log = logging.getLogger("lungseg.serve")


class Service:
    """What the routes share: settings, models, their batchers, the decode/encode threads."""

    def __init__(self, config: ServeConfig, models: dict[str, ServedModel] | None) -> None:
        self.config = config
        self.models = models
        self.batchers: dict[tuple[str, bool], MicroBatcher] = {}
        self.pool = ThreadPoolExecutor(min(8, (os.cpu_count() or 2) + 2), "lungseg-io")
        #: Processes for DICOM SEG and SR requests, started at the first one (none on one core).
        self.encoder = DicomEncoder.per_core()
        self.pending = 0
        self.failure: str | None = None
        self.api_key = api_key()
        self.metrics = Metrics()
        self.key_failures = KeyFailures()

    @property
    def ready(self) -> bool:
        return bool(self.batchers) and all(b.running for b in self.batchers.values())

    async def start(self) -> None:
        if self.models is None:
            await self._load_in_background()
        if self.models is None:
            return
        wait = self.config.batch_wait_ms / 1000
        for name, model in self.models.items():
            for tta, segmenter in ((False, model.segmenter), (True, model.augmented)):
                forward = lambda items, s=segmenter: list(s.proba_preprocessed(items))  # noqa: E731
                self.batchers[name, tta] = MicroBatcher(
                    forward,
                    self.config.max_batch,
                    wait,
                    name=f"{name}{'+tta' if tta else ''}",
                    observe=self.metrics.batch,
                )

    async def _load_in_background(self) -> None:
        try:
            self.models = await asyncio.to_thread(load_models, self.config)
        except LungsegError as exc:
            self.failure = f"models failed to load: {exc.problem}"
            log.error(self.failure)

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.encoder is not None:
            self.encoder.close(wait=False)

    def gauges(self) -> dict[str, list[tuple[str, float]]]:
        """What ``/metrics`` reads at the moment it is asked."""
        return {
            "lungseg_requests_in_progress": [("", self.pending)],
            "lungseg_batch_queue_depth": [
                (f'model="{name}",tta="{str(tta).lower()}"', batcher.queued)
                for (name, tta), batcher in self.batchers.items()
            ],
            "lungseg_ready": [("", float(self.ready))],
        }

    def model(self, name: str | None) -> ServedModel:
        if not self.ready or self.models is None:
            raise ServeError(503, self.failure or "models are still loading; retry shortly")
        if not name:  # ``?model=`` empty, as a form sends an unset choice: the default
            return next(iter(self.models.values()))
        if name not in self.models:
            raise ServeError(422, f"unknown model {name!r}; loaded: {', '.join(self.models)}")
        return self.models[name]
