"""Everything the web app says to the broker and the result store, through one :class:`Dispatcher`."""
from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from redis.exceptions import OutOfMemoryError, RedisError

from celery import Celery, states
from celery.backends.redis import RedisBackend
from kombu.exceptions import OperationalError

from common import broker
from common.config import WebSettings
from common.contract import WIRE_ERRORS, ClassifyArgs, ClassifyResult, task_name
from common.image_store import ImageStore

from .admission import LatencyPredictor, WaitingRequests
from .errors import ApiError
from .models import WebModel, WebModels
from .operations import Metrics, Readiness
from .results import ResultWaiter

__all__ = ["ACCEPTED_KEY_PREFIX", "WEB_CELERY_SETTINGS", "AcceptedTasks", "Deadline", "Dispatcher",
           "WebRedisBackend", "celery_init_app", "result_or_raise"]

logger = logging.getLogger(__name__)

#: What sending raises when the broker is down (kombu wraps most as OperationalError).
_BROKER_ERRORS = (OperationalError, RedisError, OSError)
#: Accepted async task ids (``/tasks/<id>`` tells an unknown id from a pending one by them).
ACCEPTED_KEY_PREFIX = "task-accepted:"

#: Celery settings of the web process over ``celeryconfig`` (and under ``app.config["CELERY"]``).
WEB_CELERY_SETTINGS: dict[str, Any] = {
    "result_backend_thread_safe": True,  # it only reads keys; redis-py's pool is thread-safe
    "redis_backend_health_check_interval": 30,
    # One quick retry (a pooled connection gone stale across a Redis restart), then 503.
    "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                  "interval_max": 0.2},
}


class WebRedisBackend(RedisBackend):
    """Subscribes no sent task's channel (two round trips per request): ResultWaiter listens."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        pass

    def on_result_fulfilled(self, result: Any) -> None:
        pass


def celery_init_app(app: Flask) -> Celery:
    """The web's Celery handle: ``celeryconfig``, :data:`WEB_CELERY_SETTINGS`, ``app.config["CELERY"]``."""
    celery = Celery(app.name)
    celery.config_from_object("celeryconfig")
    base_options = dict(celery.conf.broker_transport_options or {})
    overrides = app.config["CELERY"]
    celery.conf.update(WEB_CELERY_SETTINGS)
    celery.conf.update(overrides)
    if broker.is_redis(celery.conf.broker_url):  # idle connections are checked before use
        celery.conf.broker_transport_options = {**base_options, "health_check_interval": 30,
                                                **overrides.get("broker_transport_options", {})}
    if broker.is_redis(celery.conf.result_backend):
        # Celery reads "<class path>+<url>" as "this backend class at this URL".
        celery.conf.result_backend = f"{__name__}:WebRedisBackend+{celery.conf.result_backend}"
    app.extensions["celery"] = celery  # not set_default(): tests build many apps
    return celery


@dataclass(frozen=True)
class Deadline:
    """A request's deadline on the wall clock (the task's ``expires``) and the monotonic one."""

    at: float
    at_monotonic: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.time() + seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at_monotonic - time.monotonic()

    def expires(self) -> datetime:
        return datetime.fromtimestamp(self.at, tz=UTC)


@dataclass(frozen=True)
class AcceptedTasks:
    """``task-accepted:<id>`` records: the hash of the caller's key ("" without keys)."""

    client: Any

    def record(self, task_id: str, owner: str, ttl: float) -> None:
        self.client.set(ACCEPTED_KEY_PREFIX + task_id, owner.encode("ascii"), px=max(1, int(ttl * 1000)))

    def owner(self, task_id: str) -> str | None:
        raw = self.client.get(ACCEPTED_KEY_PREFIX + task_id)
        return None if raw is None else bytes(raw).decode("ascii", "replace")

    def forget(self, task_id: str) -> None:
        with suppress(RedisError):  # best effort: it expires
            self.client.delete(ACCEPTED_KEY_PREFIX + task_id)


def _out_of_memory(exc: BaseException | None) -> bool:
    """Redis refused a write under ``maxmemory`` + ``noeviction`` (kombu may wrap the error)."""
    for _ in range(5):
        if exc is None or isinstance(exc, OutOfMemoryError) or str(exc).startswith("OOM "):
            return exc is not None
        exc = exc.__cause__ or exc.__context__
    return False


class Dispatcher:
    """Admission, sending, waiting and the async tasks' records, for one app."""

    def __init__(self, celery: Celery, settings: WebSettings, models: WebModels, readiness: Readiness,
                 metrics: Metrics, waiting: WaitingRequests) -> None:
        self.celery, self.settings, self.models, self.readiness = celery, settings, models, readiness
        self.metrics, self.waiting = metrics, waiting
        self.latency: defaultdict[str, LatencyPredictor] = defaultdict(LatencyPredictor)  # by model
        self.waiter = ResultWaiter(celery.backend)
        self.accepted = AcceptedTasks(celery.backend.client)
        self.images = ImageStore.for_broker(str(celery.conf.broker_url), float(
            celery.conf.broker_connection_timeout)) if settings.images_by_reference else None

    def _unavailable(self, exc: BaseException, what: str, model: str) -> ApiError:
        if _out_of_memory(exc):
            return self._overloaded(model, "out_of_memory", "the task queue is full (out of memory)")
        return ApiError("broker_unavailable", f"the {what} is unreachable; try again shortly",
                        retry_after=self.settings.broker_retry_after)

    def _overloaded(self, model: str, reason: str, message: str, retry_after: int | None = None) -> ApiError:
        self.metrics.rejected.labels(reason, model).inc()
        return ApiError("overloaded", f"{message}; try again shortly",
                        retry_after=retry_after or self.settings.broker_retry_after)

    def model(self, name: str | None, *, synchronous: bool) -> WebModel:
        """Model ``name`` (None: the default); 503 when broken or, for a waiting client, without a worker."""
        model = self.models.find(name)
        reason = model.broken
        if reason is None and synchronous:
            answer = self.readiness.latest()
            reason = None if answer is None else answer.why_not(model)
        if reason is not None:
            raise ApiError("model_unavailable", f"model {model.name} cannot serve: {reason}",
                           retry_after=self.settings.broker_retry_after)
        return model

    def admit(self, model: WebModel, asynchronous: bool) -> None:
        """503 when the request's queue is full, or a waiting client's predicted latency is over the
        objective: once per request, before its upload is read."""
        objective = self.settings.max_latency_ms
        if objective and not asynchronous:
            predictor = self.latency[model.name]
            predictor.backlog(model.queues["sync"].length.get())
            if refusal := predictor.refusal(objective / 1000):
                message = (f"the predicted latency is {refusal[0] * 1000:.0f} ms "
                           f"(the objective is {objective} ms)")
                raise self._overloaded(model.name, "latency", message, retry_after=refusal[1])
        bounded = model.queues["async" if asynchronous else "sync"]
        waiting = bounded.full()
        if waiting is not None:
            raise self._overloaded(model.name, "queue_full",
                                   f"{waiting} tasks are already queued (the limit is {bounded.limit})")

    def send(self, model: WebModel, image: bytes, top_k: int, *, task_id: str, asynchronous: bool,
             deadline: Deadline) -> None:
        """Publish the model's classify task (with an image store, the message carries None)."""
        name = task_name(batch=model.batch_mode(self.settings.use_batch_processing))
        try:
            if self.images is not None:
                self.images.put(task_id, image, deadline.remaining())
            self.celery.send_task(
                name, args=ClassifyArgs(None if self.images else image, top_k), task_id=task_id,
                queue=model.queues["async" if asynchronous else "sync"].name, expires=deadline.expires(),
                argsrepr=f"<image {len(image)} bytes>, top_k={top_k}",
                kwargsrepr=f"{{'model': {model.name!r}}}")
        except _BROKER_ERRORS as exc:
            logger.warning("Could not send task %s (%s): %s", task_id, name, exc)
            if self.images is not None:
                with suppress(*_BROKER_ERRORS):  # best effort: it expires
                    self.images.delete([task_id])
            raise self._unavailable(exc, "task queue", model.name) from exc

    def submit(self, model: WebModel, image: bytes, top_k: int, deadline: Deadline, owner: str) -> str:
        """Record (owned by key hash ``owner``) and send an async task; its id."""
        task_id = str(uuid.uuid4())
        try:  # as long as the task may wait, then as long as its result lives
            self.accepted.record(task_id, owner, deadline.remaining() + self.settings.result_expires)
        except RedisError as exc:
            logger.warning("Could not record task %s: %s", task_id, exc)
            raise self._unavailable(exc, "result store", model.name) from exc
        try:
            self.send(model, image, top_k, task_id=task_id, asynchronous=True, deadline=deadline)
        except ApiError:
            self.accepted.forget(task_id)
            raise
        return task_id

    def classify(self, model: WebModel, image: bytes, top_k: int,
                 deadline: Deadline) -> tuple[str, float, dict[str, Any]]:
        """Send a task and wait for it in a waiting slot (or 503): its id, send time and ready meta."""
        with self.waiting.slot() as admitted:
            if not admitted:
                raise self._overloaded(model.name, "waiting_full",
                                       f"this server already has {self.waiting.limit} requests waiting")
            if deadline.remaining() <= 0:
                raise ApiError("expired", "the request's deadline passed before its task was sent")
            task_id = str(uuid.uuid4())
            latency = self.settings.max_latency_ms  # counted only where it is asked for
            counted = self.latency[model.name].waiting_one() if latency else nullcontext()
            with counted, self.waiter.expecting(task_id):  # before sending, so a fast result cannot slip past
                sent_at = time.time()
                self.send(model, image, top_k, task_id=task_id, asynchronous=False, deadline=deadline)
                try:
                    meta = self.waiter.wait(task_id, max(deadline.remaining(), 1e-3))
                except ApiError:
                    self.metrics.revoked.labels(model.name).inc()
                    try:
                        self.celery.control.revoke(task_id)
                    except Exception as exc:  # noqa: BLE001 - the answer (504) must not depend on it
                        logger.warning("Could not revoke task %s: %s", task_id, exc)
                    raise
        return task_id, sent_at, meta

    def status(self, task_id: str) -> tuple[str | None, dict[str, Any] | None]:
        """The key hash that created async task ``task_id`` (None: unknown) and its meta, if stored."""
        try:
            return self.accepted.owner(task_id), self.waiter.fetch(task_id)
        except RedisError as exc:
            logger.warning("Could not read task %s: %s", task_id, exc)
            raise self._unavailable(exc, "result store", "") from exc


def result_or_raise(meta: dict[str, Any]) -> ClassifyResult:
    """A successful task's result; the matching ApiError otherwise."""
    state = meta.get("status")
    if state == states.SUCCESS:
        result: ClassifyResult = meta["result"]
        return result
    if state == states.REVOKED:
        raise ApiError("expired", "the request expired before a worker could take it")
    if state != states.FAILURE:
        raise ApiError("worker_error", f"unexpected task state {state!r}")
    raw = meta.get("result")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    exc_type = str(error.get("exc_type") or "error")
    message = error.get("exc_message")
    message = ", ".join(map(str, message)) if isinstance(message, (list, tuple)) else str(message or "")
    wire = WIRE_ERRORS.get(exc_type)
    if wire is not None:
        raise ApiError(wire.code, message or wire.message)
    raise ApiError("worker_error", f"the worker failed: {exc_type}: {message}".rstrip(": "))
