"""Celery settings shared by the web app and the workers.

Only lowercase Celery setting names; every value comes from
``common.config.CelerySettings`` (the environment, read once). Why each
reliability setting is what it is: README.md, "Queue settings".
"""
from common.config import CelerySettings, load

_settings = load(CelerySettings)

broker_url = _settings.broker_url
result_backend = _settings.result_backend

# No pickle anywhere: images travel as raw bytes in msgpack; results and events are JSON.
task_serializer = _settings.task_serializer
result_serializer = "json"
event_serializer = "json"
accept_content = ["msgpack", "json"]
result_accept_content = ["json"]

# Nothing accepted is lost: ack after the result is stored, requeue when the worker dies.
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = True
task_acks_on_timeout = True
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout,
    "unacked_restore_interval": _settings.restore_interval,
    "unacked_restore_throttle": 1,
}
broker_connection_retry_on_startup = True

# Results live long enough for a client to poll /tasks/<id>, then expire.
result_expires = _settings.result_expires

# Time limits stay under the visibility timeout so a stuck task never runs twice.
task_soft_time_limit = _settings.soft_time_limit
task_time_limit = _settings.time_limit

# Flower needs task events.
worker_send_task_events = _settings.send_task_events
task_send_sent_event = _settings.send_sent_event

task_default_queue = _settings.queue
worker_prefetch_multiplier = _settings.prefetch_multiplier
