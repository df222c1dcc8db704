"""Locust users that speak shardq's TCP protocol through the blocking client.

    locust -f loadtests/locustfile.py --host shardq://127.0.0.1:7070                 # web UI on :8089
    locust -f loadtests/locustfile.py --host shardq://127.0.0.1:7070 --headless -u 50 -r 10 -t 1m
    SHARDQ_TLS_CA=ca.pem locust -f loadtests/locustfile.py --host shardqs://127.0.0.1:7070   # TLS

Three users, weighted by ``--producer-weight`` / ``--worker-weight`` / ``--reader-weight``:

- ProducerUser: SUBMIT one task, or a batch of ``--batch-size`` (``--batch-ratio`` of its requests);
  a QueueFull refusal is a failed request (the broker is full: add workers or slow producers);
  priorities drawn from ``--priorities`` (a comma list), a ``--delay-ms`` delay on a share of them.
- WorkerUser: CLAIM up to ``--claim-max`` with ``--claim-wait-s``, then RESULT completed for all.
- ReaderUser: QUERY_STATUS of tasks it submitted, GET_STATS.

A ``shardqs://`` host speaks TLS, trusting ``--tls-ca`` (else the system CAs) and presenting
``--tls-cert``/``--tls-key`` to a server with mutual TLS (docs/security.md). (Locust 2.4x has
its own ``--tls-cert``/``--tls-key`` for its web UI; where it does, ours are ``--shardq-tls-ca``,
``--shardq-tls-cert`` and ``--shardq-tls-key``, and SHARDQ_TLS_* work with either.)

Every option can also be given as an environment variable (``SHARDQ_PAYLOAD_SIZE=1024`` ...). Each
request is reported to Locust with its message type as the request type, its response time, the
bytes it carried, and its failure (a shardq error with its code, or a dropped connection).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from locust import User, between, events, task

from shardq import Client
from shardq.client.models import Job


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("shardq")
    group.add_argument("--payload-size", type=int, env_var="SHARDQ_PAYLOAD_SIZE", default=100,
                       help="payload bytes per task")
    group.add_argument("--batch-size", type=int, env_var="SHARDQ_BATCH_SIZE", default=10,
                       help="tasks per batched SUBMIT")
    group.add_argument("--batch-ratio", type=float, env_var="SHARDQ_BATCH_RATIO", default=0.3,
                       help="share of producer requests that are batches (0..1)")
    group.add_argument("--priorities", env_var="SHARDQ_PRIORITIES", default="100,100,100,200,50",
                       help="comma list of priorities to draw from (uniformly)")
    group.add_argument("--delay-ms", type=int, env_var="SHARDQ_DELAY_MS", default=0,
                       help="delay_ms given to --delay-ratio of the tasks")
    group.add_argument("--delay-ratio", type=float, env_var="SHARDQ_DELAY_RATIO", default=0.0,
                       help="share of tasks submitted with --delay-ms (0..1)")
    group.add_argument("--claim-max", type=int, env_var="SHARDQ_CLAIM_MAX", default=50,
                       help="tasks per CLAIM")
    group.add_argument("--claim-wait-s", type=float, env_var="SHARDQ_CLAIM_WAIT_S", default=1.0,
                       help="how long a CLAIM waits for work")
    group.add_argument("--task-type", env_var="SHARDQ_TASK_TYPE", default="locust",
                       help="the task type the users submit and claim")
    taken = {s for a in parser._actions for s in a.option_strings}  # locust's own, in 2.4x
    for name, help in (("ca", "with a shardqs:// host: the CA that signed the server's certificate"),
                       ("cert", "with a shardqs:// host: a client certificate (mutual TLS)"),
                       ("key", "the private key of the client certificate")):
        flags = [f"--shardq-tls-{name}"] + ([] if f"--tls-{name}" in taken else [f"--tls-{name}"])
        group.add_argument(*flags, dest=f"shardq_tls_{name}", env_var=f"SHARDQ_TLS_{name.upper()}",
                           default="", help=help)
    group.add_argument("--producer-weight", type=int, env_var="SHARDQ_PRODUCER_WEIGHT", default=2)
    group.add_argument("--worker-weight", type=int, env_var="SHARDQ_WORKER_WEIGHT", default=4)
    group.add_argument("--reader-weight", type=int, env_var="SHARDQ_READER_WEIGHT", default=1)


@events.init.add_listener
def _weights(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is not None:
        ProducerUser.weight = options.producer_weight
        WorkerUser.weight = options.worker_weight
        ReaderUser.weight = options.reader_weight


class ShardqUser(User):
    """A Locust user with one shardq connection; ``measure`` reports each request."""

    abstract = True
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        url = self.host or "shardq://127.0.0.1:7070"
        tls = {name: getattr(self.options, f"shardq_{name}") or None
               for name in ("tls_ca", "tls_cert", "tls_key")}
        if not url.startswith("shardqs://"):
            tls = {}  # (the environment may carry them for another target)
        self.client = Client(url, timeout=30, name="locust/1", **tls)

    def on_stop(self) -> None:
        self.client.close()

    def measure(self, request_type: str, name: str, call: Callable[[], Any],
                size: Callable[[Any], int] = lambda _: 0) -> Any:
        start = time.perf_counter()
        outcome: Any = None
        failure: BaseException | None = None
        try:
            outcome = call()
        except Exception as exc:  # every shardq error and dropped connection is a failed request
            failure = exc
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=size(outcome) if failure is None else 0, exception=failure, context={})
        return outcome


class ProducerUser(ShardqUser):
    weight = 2

    def job(self) -> Job:
        o = self.options
        delay = o.delay_ms / 1000 if o.delay_ms and random.random() < o.delay_ratio else None
        priority = int(random.choice(o.priorities.split(",")))
        return Job(o.task_type, random.randbytes(o.payload_size), priority=priority, delay=delay)

    @task
    def submit(self) -> None:
        o = self.options
        if random.random() < o.batch_ratio:
            jobs = [self.job() for _ in range(o.batch_size)]
            self.measure("SUBMIT", f"submit batch of {o.batch_size}", lambda: self.client.submit_many(jobs),
                         lambda ids: o.payload_size * len(ids))
        else:
            job = self.job()
            self.measure("SUBMIT", "submit one", lambda: self.client.submit_many([job]),
                         lambda ids: o.payload_size)


class WorkerUser(ShardqUser):
    weight = 4

    def on_start(self) -> None:
        super().on_start()
        self.worker_id = f"locust-{uuid.uuid4().hex[:12]}"

    @task
    def claim_and_complete(self) -> None:
        o = self.options
        tasks = self.measure("CLAIM", "claim", lambda: self.client.claim(
            self.worker_id, max=o.claim_max, wait=o.claim_wait_s, types=[o.task_type]),
            lambda got: sum(len(t.payload or b"") for t in got))
        if tasks:
            self.measure("RESULT", "complete", lambda: self.client.report(
                self.worker_id, [({"id": t.id, "attempt": t.attempt, "status": "completed"}, b"")
                                 for t in tasks]), lambda out: 0)


class ReaderUser(ShardqUser):
    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.ids = self.client.submit_many([Job(f"{self.options.task_type}-reader") for _ in range(20)])

    @task(3)
    def status(self) -> None:
        ids = random.sample(self.ids, 5)
        self.measure("QUERY_STATUS", "status of 5", lambda: self.client.status_many(ids), lambda got: len(got))

    @task(1)
    def stats(self) -> None:
        self.measure("GET_STATS", "stats", self.client.stats, lambda st: len(st["shards"]))
