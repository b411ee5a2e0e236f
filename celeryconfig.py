"""Celery settings shared by the web app and the workers.

Only lowercase Celery setting names; every value comes from
``common.config.CelerySettings`` (the environment, read once). Why each
reliability setting is what it is: README.md, "Queue settings".
"""
from kombu import Queue

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
broker_connection_retry_on_startup = True
broker_connection_timeout = _settings.socket_timeout

broker_transport_options: dict[str, object]
if _settings.broker_is_amqp:
    # RabbitMQ: a quorum queue (replicated, fsynced) and publisher confirms, so a
    # task the broker acknowledged survives a broker crash; an unacknowledged
    # delivery returns to the queue the moment its worker's connection drops.
    task_default_queue_type = "quorum"
    # Quorum queues have no global QoS: prefetch is set per consumer (Celery
    # detects the queue type and does so itself; stated so it cannot drift).
    worker_detect_quorum_queues = True
    broker_transport_options = {"confirm_publish": True}
    # A dead connection is noticed within two missed heartbeats (py-amqp also
    # turns on TCP keepalive); clients that only publish send none.
    broker_heartbeat = _settings.heartbeat
else:
    if str(broker_url).startswith("redis://"):
        # kombu's, with one client per channel instead of one per command (common/redis_transport.py);
        # rediss:// and unix sockets keep kombu's own, not measured here.
        broker_transport = "common.redis_transport:Transport"
    # Redis: an unacknowledged task goes back to the queue after the visibility
    # timeout, checked every restore interval.
    broker_transport_options = {
        "visibility_timeout": _settings.visibility_timeout,
        "unacked_restore_interval": _settings.restore_interval,
        "unacked_restore_throttle": 1,
        # Queues in the order of task_queues: the async queue only when the
        # synchronous one is empty (RabbitMQ shares the worker between them).
        "queue_order_strategy": "priority",
        # A paused or partitioned Redis fails a command instead of hanging it.
        "socket_timeout": _settings.socket_timeout,
        "socket_connect_timeout": _settings.socket_timeout,
        "socket_keepalive": True,
    }

# The result backend is Redis with either broker.
redis_socket_timeout = _settings.socket_timeout
redis_socket_connect_timeout = _settings.socket_timeout
redis_socket_keepalive = True
redis_retry_on_timeout = True

# Results live long enough for a client to poll /tasks/<id>, then expire.
result_expires = _settings.result_expires

# Time limits stay under the visibility timeout so a stuck task never runs twice.
task_soft_time_limit = _settings.soft_time_limit
task_time_limit = _settings.time_limit

# Flower needs task events.
worker_send_task_events = _settings.send_task_events
task_send_sent_event = _settings.send_sent_event

# Synchronous requests first, then ?async=true ones: a backlog of async work
# never delays a client that waits (README, "Admission control").
task_default_queue = _settings.queue
_queue_arguments = {"x-queue-type": "quorum"} if _settings.broker_is_amqp else None
task_queues = tuple(Queue(name, routing_key=name, queue_arguments=_queue_arguments)
                    for name in (_settings.queue, _settings.async_queue))
worker_prefetch_multiplier = _settings.prefetch_multiplier
