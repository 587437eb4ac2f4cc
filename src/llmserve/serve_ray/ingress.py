"""The ingress deployment: llmserve's own FastAPI app (every route, keys, limits, metrics), whose
models generate on the model deployments through streaming handles (``remote.RemoteEngine``)."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from llmserve.chat_model import AsyncChatModel
from llmserve.serve_ray import cluster
from llmserve.serve_ray.metrics import RayMetrics
from llmserve.serve_ray.remote import RemoteEngine
from llmserve.serve_ray.sizing import in_flight_limit
from llmserve.serve_ray.wire import Chunk
from llmserve.settings import Settings

logger = logging.getLogger(__name__)


@serve.ingress()  # the app is built in each replica, by ``__serve_build_asgi_app__``
class Ingress:
    async def __init__(self, settings_json: str, handles: dict[str, Any], hub_name: str):
        from llmserve.log import configure_logging

        self.settings = Settings.model_validate_json(settings_json)
        configure_logging(self.settings.log_level)
        cluster.bind_replica_grpc_to_loopback()
        self.handles = handles
        self.metrics = RayMetrics(hub_name)

    async def __serve_build_asgi_app__(self):
        from llmserve.server.app import create_app

        models = []
        for model_settings in self.settings.model_list():
            engine = RemoteEngine(model_settings, self.handles[model_settings.served_name()],
                                  in_flight_limit(model_settings, self.settings), self._first_chunk)
            models.append(AsyncChatModel(engine=engine, settings=model_settings))
        app = create_app(self.settings, models=models)
        app.state.metrics = self.metrics  # the lifespan adds the models' label sets to it
        self.metrics.start_polling()
        return app

    def _first_chunk(self, model_name: str, ttft: float, chunk: Chunk) -> None:
        if chunk.engine_ttft is not None:
            self.metrics.serve_overhead.labels(model_name).observe(max(0.0, ttft - chunk.engine_ttft))
