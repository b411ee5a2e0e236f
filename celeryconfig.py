"""Celery settings shared by the web app and the workers.

Only lowercase Celery setting names, each with its environment override and
default on one line. Why each reliability setting is what it is: README.md,
"Queue settings".
"""
import os

broker_url = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
result_backend = os.environ.get("CELERY_RESULT_BACKEND") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# No pickle anywhere: images travel as raw bytes in msgpack; results and events are JSON.
task_serializer = os.environ.get("CELERY_TASK_SERIALIZER", "msgpack")
result_serializer = "json"
event_serializer = "json"
accept_content = ["msgpack", "json"]
result_accept_content = ["json"]

# Nothing accepted is lost: ack after the result is stored, requeue when the worker dies.
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = True
task_acks_on_timeout = True
broker_transport_options = {"visibility_timeout": int(os.environ.get("BROKER_VISIBILITY_TIMEOUT", "60")), "unacked_restore_interval": int(os.environ.get("BROKER_RESTORE_INTERVAL", "10")), "unacked_restore_throttle": 1}
broker_connection_retry_on_startup = True

# Results live long enough for a client to poll /tasks/<id>, then expire.
result_expires = int(os.environ.get("RESULT_EXPIRES", "3600"))

# Time limits stay under the visibility timeout so a stuck task never runs twice.
task_soft_time_limit = float(os.environ.get("TASK_SOFT_TIME_LIMIT", "30"))
task_time_limit = float(os.environ.get("TASK_TIME_LIMIT", "45"))

# Flower needs task events.
worker_send_task_events = os.environ.get("WORKER_SEND_TASK_EVENTS", "true").lower() in {"1", "true", "yes"}
task_send_sent_event = os.environ.get("TASK_SEND_SENT_EVENT", "true").lower() in {"1", "true", "yes"}

task_default_queue = os.environ.get("CELERY_QUEUE", "inference")
worker_prefetch_multiplier = int(os.environ.get("WORKER_PREFETCH_MULTIPLIER", "4"))
