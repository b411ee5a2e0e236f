"""celeryconfig.py: the settings each broker gets (evaluated afresh per environment)."""
from __future__ import annotations

from celery import Celery

from tests.support.brokers import celery_config

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6399/0"


def _app(**env: str) -> Celery:
    app = Celery("t")
    base = {"REDIS_URL": REDIS, "CELERY_BROKER_URL": "", "CELERY_RESULT_BACKEND": "", "REDIS_PASSWORD": "",
            "BROKER_SOCKET_TIMEOUT": "", "TASK_EVENTS": ""}
    app.config_from_object(celery_config(**{**base, **env}))
    return app


def test_rabbitmq_gets_quorum_queues_confirms_socket_timeouts_and_heartbeats() -> None:
    app = _app(CELERY_BROKER_URL=AMQP, BROKER_SOCKET_TIMEOUT="4")
    conf = app.conf
    assert (conf.broker_url, conf.result_backend) == (AMQP, REDIS)  # results stay on Redis
    assert conf.task_default_queue_type == "quorum" and conf.worker_detect_quorum_queues
    assert conf.broker_transport_options == {"confirm_publish": True, "read_timeout": 4.0,
                                             "write_timeout": 4.0}
    assert conf.broker_heartbeat == 12 and conf.broker_connection_timeout == 4.0
    assert [(q.name, q.queue_arguments) for q in app.amqp.queues.values()] == [
        ("inference", {"x-queue-type": "quorum"}), ("inference.async", {"x-queue-type": "quorum"})]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost


def test_redis_keeps_its_visibility_timeout_and_gets_socket_timeouts() -> None:
    conf = _app(BROKER_SOCKET_TIMEOUT="7").conf
    assert conf.task_default_queue_type == "classic"
    assert conf.broker_transport == "common.redis_transport:Transport"
    assert conf.broker_transport_options == {
        "visibility_timeout": 60, "unacked_restore_interval": 10, "unacked_restore_throttle": 1,
        "consumer_dead_after": 5.0,
        "queue_order_strategy": "priority", "socket_timeout": 7.0, "socket_connect_timeout": 7.0,
        "socket_keepalive": True}
    assert (conf.redis_socket_timeout, conf.redis_socket_connect_timeout) == (7.0, 7.0)
    assert conf.redis_retry_on_timeout and conf.redis_socket_keepalive
    assert conf.broker_connection_timeout == 7.0


def test_no_pickle_one_switch_for_events_and_a_soft_limit_under_the_hard_one() -> None:
    conf = _app().conf
    assert (conf.task_serializer, conf.result_serializer, conf.event_serializer) == (
        "msgpack", "json", "json")
    assert "pickle" not in conf.accept_content and conf.result_accept_content == ["json"]
    assert conf.worker_send_task_events is conf.task_send_sent_event is True
    conf = _app(TASK_EVENTS="false", TASK_TIME_LIMIT="60").conf
    assert conf.worker_send_task_events is conf.task_send_sent_event is False
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (40.0, 60.0)


def test_redis_password_is_added_to_redis_urls_only() -> None:
    conf = _app(REDIS_PASSWORD="p@ss word").conf
    assert conf.broker_url == conf.result_backend == "redis://:p%40ss%20word@127.0.0.1:6399/0"
    conf = _app(REDIS_PASSWORD="x", CELERY_BROKER_URL=AMQP,
                CELERY_RESULT_BACKEND="redis://:own@127.0.0.1:6399/1").conf
    assert (conf.broker_url, conf.result_backend) == (AMQP, "redis://:own@127.0.0.1:6399/1")


def test_sync_queue_is_consumed_before_the_async_one() -> None:
    app = _app(CELERY_QUEUE="jobs")
    queues = list(app.amqp.queues.values())  # in the order a Redis worker pops them (classic lists)
    assert [(q.name, q.routing_key, q.queue_arguments) for q in queues] == [
        ("jobs", "jobs", None), ("jobs.async", "jobs.async", None)]
    assert app.conf.task_default_queue == "jobs"
