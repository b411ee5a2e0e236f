"""Celery settings of the web app and the workers, from ``common.config`` (why: docs/operations.md)."""
from kombu import Queue

from common import broker
from common.config import CelerySettings, async_queue_of, load

_settings = load(CelerySettings)
_amqp = broker.is_amqp(_settings.broker_url)
_timeout = _settings.socket_timeout

broker_url = _settings.broker_url
result_backend = _settings.result_backend

# No pickle anywhere: images travel as raw bytes in msgpack; results and events are JSON.
task_serializer = "msgpack"
result_serializer = event_serializer = "json"
accept_content = ["msgpack", "json"]
result_accept_content = ["json"]

# Nothing accepted is lost: ack after the result is stored, requeue when the worker dies.
task_acks_late = task_reject_on_worker_lost = task_acks_on_failure = task_acks_on_timeout = True
broker_connection_retry_on_startup = True

# Every socket gives up after BROKER_SOCKET_TIMEOUT: a paused server fails a command, never hangs it.
broker_connection_timeout = _timeout
redis_socket_timeout = redis_socket_connect_timeout = _timeout
redis_socket_keepalive = redis_retry_on_timeout = True

broker_transport_options: dict[str, object]
if _amqp:
    # Quorum queues and publisher confirms: an acknowledged task survives a broker crash.
    task_default_queue_type = "quorum"
    worker_detect_quorum_queues = True  # quorum queues have no global QoS: prefetch per consumer
    broker_transport_options = {"confirm_publish": True, "read_timeout": _timeout, "write_timeout": _timeout}
    # A worker notices a dead connection within two missed heartbeats (publishers send none).
    broker_heartbeat = max(1, round(3 * _timeout))
else:
    if broker_url.startswith("redis://"):
        # Reliable fetch, liveness, one client per channel (common/redis_transport.py).
        broker_transport = "common.redis_transport:Transport"
    broker_transport_options = {
        # An unacknowledged task goes back to the queue after the visibility timeout.
        "visibility_timeout": _settings.visibility_timeout,
        "unacked_restore_interval": _settings.restore_interval,
        "unacked_restore_throttle": 1,
        # A dead worker's tasks come back once its heartbeat stops (common/redis_transport.py).
        "consumer_dead_after": _settings.dead_consumer_seconds,
        # The async queue only when the synchronous one is empty (RabbitMQ shares the worker).
        "queue_order_strategy": "priority",
        "socket_timeout": _timeout, "socket_connect_timeout": _timeout, "socket_keepalive": True,
    }

result_expires = _settings.result_expires  # long enough to poll /tasks/<id>
# Time limits stay under the visibility timeout so a stuck task never runs twice.
task_time_limit = _settings.time_limit
task_soft_time_limit = task_time_limit * 2 / 3
worker_send_task_events = task_send_sent_event = _settings.task_events  # for Flower

# Synchronous requests first, then ?async=true ones: async work never delays a waiting client.
task_default_queue = _settings.queue
_arguments = {"x-queue-type": "quorum"} if _amqp else None
task_queues = tuple(Queue(name, routing_key=name, queue_arguments=_arguments)
                    for name in (_settings.queue, async_queue_of(_settings.queue)))
worker_prefetch_multiplier = _settings.prefetch_multiplier
