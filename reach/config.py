"""Configuration from environment variables: one explicit object, read once per process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_BROKER_PORT = 19092


def local_ports(nodes: int, port: int = LOCAL_BROKER_PORT) -> list[tuple[int, int]]:
    """(listener, controller) ports of each node of the local Kafka (`reach.broker.LocalCluster`):
    node i listens on `port` + 2(i-1), its controller on the port after."""
    return [(port + 2 * i, port + 2 * i + 1) for i in range(nodes)]


def local_bootstrap(nodes: int, port: int = LOCAL_BROKER_PORT) -> str:
    """The bootstrap servers of the local Kafka of `nodes` nodes from `port`."""
    return ",".join(f"127.0.0.1:{listener}" for listener, _ in local_ports(nodes, port))


LOCAL_BOOTSTRAP = local_bootstrap(1)


@dataclass(frozen=True)
class Quota:
    """What one tenant may have accepted (`ingest.quotas`); None: no limit."""

    records_per_minute: int | None = None
    batches_in_flight: int | None = None
    # How many records may be sent at once with a full allowance: a token bucket's capacity.
    # None: a minute's worth (`records_per_minute`), so `q=Q;w=60` means Q records at once.
    burst_records: int | None = None

    def burst(self) -> int:
        """The records quota's capacity (`burst_records`, else a minute's worth)."""
        assert self.records_per_minute is not None
        return self.burst_records if self.burst_records is not None else self.records_per_minute


def _limit(name: str, raw: object) -> int | None:
    """A limit from configuration: unset (None or "") is no limit, else an integer of at least 1."""
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        value = 0
    if isinstance(raw, bool) or value < 1 or (isinstance(raw, float) and raw != value):
        raise ValueError(f"{name} must be a whole number of at least 1, or unset for no limit (got {raw!r})")
    return value


def _overrides(raw: str, default: Quota) -> dict[str, Quota]:
    """`REACH_QUOTA_OVERRIDES`: {"partnerId": {"recordsPerMinute": n | null, "batchesInFlight": n | null,
    "burstRecords": n | null}}; a limit left out is the default's, null is no limit (for
    burstRecords: a minute's worth)."""
    import orjson

    parsed = orjson.loads(raw)
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise ValueError("REACH_QUOTA_OVERRIDES must be a JSON object of partner id -> "
                         '{"recordsPerMinute": n | null, "batchesInFlight": n | null, "burstRecords": n | null}')
    found = {}
    for partner, limits in parsed.items():
        unknown = set(limits) - {"recordsPerMinute", "batchesInFlight", "burstRecords"}
        if unknown:
            raise ValueError(f"REACH_QUOTA_OVERRIDES[{partner!r}]: unknown limits {sorted(unknown)}")
        found[partner] = Quota(
            _limit(f"REACH_QUOTA_OVERRIDES[{partner!r}].recordsPerMinute",
                   limits.get("recordsPerMinute", default.records_per_minute)),
            _limit(f"REACH_QUOTA_OVERRIDES[{partner!r}].batchesInFlight",
                   limits.get("batchesInFlight", default.batches_in_flight)),
            _limit(f"REACH_QUOTA_OVERRIDES[{partner!r}].burstRecords",
                   limits.get("burstRecords", default.burst_records)))
    return found


def _urls(name: str, raw: str | None) -> tuple[str, ...]:
    """A comma-separated list of http(s) base URLs (empty: none given)."""
    urls = tuple(u.strip().rstrip("/") for u in (raw or "").split(",") if u.strip())
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise ValueError(f"{name} must be comma-separated http:// or https:// URLs (got {', '.join(bad)})")
    return urls


@dataclass(frozen=True)
class Settings:
    """Everything a process of the service needs to know about its surroundings."""

    bootstrap_servers: str = LOCAL_BOOTSTRAP
    # True when KAFKA_BOOTSTRAP_SERVERS was given: the service then starts no broker.
    external_broker: bool = False
    # The local Kafka's nodes (1, or 3 for a real cluster: RF 3, min ISR 2) and first port.
    broker_nodes: int = 1
    local_broker_port: int = LOCAL_BROKER_PORT
    topic_prefix: str = "reach"
    topic_partitions: int = 4
    replication_factor: int = 1
    app_id: str = "reach-worker"
    data_dir: Path = PROJECT_ROOT / ".data"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    worker_web_port: int = 6066
    produce_timeout_s: float = 10.0
    # Names this ingress's transactional producers; stable across restarts of one instance,
    # so a restarted ingress fences what its predecessor left open.
    ingress_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    ingress_producers: int = 4
    # HTTP ingress processes sharing the port (`ingest.server`): one per core by default.
    ingress_processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_body_bytes: int = 16 * 1024 * 1024
    # How long a batch's status stays readable after it was accepted (and the batch-events
    # topic keeps its events, so that a new ingress can build the same statuses).
    batch_retention_days: float = 30.0
    # How long a single-resource write waits for its record's outcome before answering 202.
    sync_wait_s: float = 10.0
    # The most resources one deleteAll may name: its deletes are published in one transaction,
    # which must commit within produce_timeout_s.
    delete_all_max: int = 100_000
    # How long an Idempotency-Key stays taken after its request was accepted (at most as long
    # as batch statuses are kept: the batch-events topic holds the keys).
    idempotency_key_hours: float = 24.0
    partner_secrets: dict[str, str] = field(default_factory=lambda: {"dev-partner": "dev-secret"})
    # Every tenant's quota, and the quotas of some partners' tenants (`ingest.quotas`).
    quota: Quota = Quota()
    quota_overrides: dict[str, Quota] = field(default_factory=dict)
    # Uploads are answered 503 while more records than this wait for the workers (None: no bound).
    max_backlog_records: int | None = None
    # The readers (`state.reader`): reader i serves the read models of the partitions p with
    # p % len(reader_urls) == i; a reader process is told its index.
    reader_urls: tuple[str, ...] = ("http://127.0.0.1:8070",)
    reader_index: int = 0

    def with_local_broker(self, nodes: int) -> Settings:
        """These settings with a local Kafka of `nodes` nodes (its bootstrap servers, and as
        many replicas of each topic); unchanged for an external broker."""
        if self.external_broker:
            return self
        return replace(self, broker_nodes=nodes, bootstrap_servers=local_bootstrap(nodes, self.local_broker_port),
                       replication_factor=nodes)

    def quota_for(self, partner_id: str) -> Quota:
        """The quota of each tenant of a partner."""
        return self.quota_overrides.get(partner_id, self.quota)

    def to_env(self) -> dict[str, str]:
        """The environment variables `from_env` reads back as these settings (a process started
        with them runs with exactly these). KAFKA_BOOTSTRAP_SERVERS is set only for an external
        broker: without it a process uses (and may start) the local one."""
        import orjson

        def limit(value: int | None) -> str:
            return "" if value is None else str(value)

        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers if self.external_broker else "",
            "REACH_BROKER_NODES": str(self.broker_nodes),
            "REACH_LOCAL_BROKER_PORT": str(self.local_broker_port),
            "REACH_TOPIC_PREFIX": self.topic_prefix,
            "REACH_TOPIC_PARTITIONS": str(self.topic_partitions),
            "REACH_REPLICATION_FACTOR": str(self.replication_factor),
            "REACH_APP_ID": self.app_id,
            "REACH_DATA_DIR": str(self.data_dir),
            "REACH_HTTP_HOST": self.http_host,
            "REACH_HTTP_PORT": str(self.http_port),
            "REACH_WORKER_WEB_PORT": str(self.worker_web_port),
            "REACH_PRODUCE_TIMEOUT_S": repr(self.produce_timeout_s),
            "REACH_INGRESS_ID": self.ingress_id,
            "REACH_INGRESS_PRODUCERS": str(self.ingress_producers),
            "REACH_INGRESS_PROCESSES": str(self.ingress_processes),
            "REACH_MAX_BODY_BYTES": str(self.max_body_bytes),
            "REACH_BATCH_RETENTION_DAYS": repr(self.batch_retention_days),
            "REACH_SYNC_WAIT_S": repr(self.sync_wait_s),
            "REACH_DELETE_ALL_MAX": str(self.delete_all_max),
            "REACH_IDEMPOTENCY_KEY_HOURS": repr(self.idempotency_key_hours),
            "REACH_PARTNER_SECRETS": orjson.dumps(self.partner_secrets).decode(),
            "REACH_QUOTA_RECORDS_PER_MINUTE": limit(self.quota.records_per_minute),
            "REACH_QUOTA_BATCHES_IN_FLIGHT": limit(self.quota.batches_in_flight),
            "REACH_QUOTA_BURST_RECORDS": limit(self.quota.burst_records),
            "REACH_QUOTA_OVERRIDES": orjson.dumps({
                partner: {"recordsPerMinute": q.records_per_minute, "batchesInFlight": q.batches_in_flight,
                          "burstRecords": q.burst_records}
                for partner, q in self.quota_overrides.items()}).decode() if self.quota_overrides else "",
            "REACH_MAX_BACKLOG_RECORDS": limit(self.max_backlog_records),
            "REACH_READER_URLS": ",".join(self.reader_urls),
            "REACH_READER_INDEX": str(self.reader_index),
        }

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> Settings:
        """Build settings from `REACH_*` and `KAFKA_BOOTSTRAP_SERVERS`, defaults for the rest."""
        import orjson

        env = os.environ if env is None else env
        defaults = cls()
        bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        secrets = env.get("REACH_PARTNER_SECRETS")
        quota = Quota(_limit("REACH_QUOTA_RECORDS_PER_MINUTE", env.get("REACH_QUOTA_RECORDS_PER_MINUTE")),
                      _limit("REACH_QUOTA_BATCHES_IN_FLIGHT", env.get("REACH_QUOTA_BATCHES_IN_FLIGHT")),
                      _limit("REACH_QUOTA_BURST_RECORDS", env.get("REACH_QUOTA_BURST_RECORDS")))
        overrides = env.get("REACH_QUOTA_OVERRIDES", "").strip()
        nodes = int(env.get("REACH_BROKER_NODES", defaults.broker_nodes))
        if nodes not in (1, 3):
            raise ValueError(f"REACH_BROKER_NODES must be 1 or 3 (got {nodes})")
        local_port = int(env.get("REACH_LOCAL_BROKER_PORT", defaults.local_broker_port))
        return cls(
            bootstrap_servers=bootstrap or local_bootstrap(nodes, local_port),
            external_broker=bool(bootstrap),
            broker_nodes=nodes,
            local_broker_port=local_port,
            topic_prefix=env.get("REACH_TOPIC_PREFIX", defaults.topic_prefix),
            topic_partitions=int(env.get("REACH_TOPIC_PARTITIONS", defaults.topic_partitions)),
            # A local cluster of three keeps three replicas of every topic unless told otherwise.
            replication_factor=int(env.get("REACH_REPLICATION_FACTOR", defaults.replication_factor if bootstrap
                                           else nodes)),
            app_id=env.get("REACH_APP_ID", defaults.app_id),
            data_dir=Path(env.get("REACH_DATA_DIR", str(defaults.data_dir))),
            http_host=env.get("REACH_HTTP_HOST", defaults.http_host),
            http_port=int(env.get("REACH_HTTP_PORT", defaults.http_port)),
            worker_web_port=int(env.get("REACH_WORKER_WEB_PORT", defaults.worker_web_port)),
            produce_timeout_s=float(env.get("REACH_PRODUCE_TIMEOUT_S", defaults.produce_timeout_s)),
            ingress_id=(env.get("REACH_INGRESS_ID")
                        or f"{socket.gethostname()}-{env.get('REACH_HTTP_PORT', defaults.http_port)}"),
            ingress_producers=int(env.get("REACH_INGRESS_PRODUCERS", defaults.ingress_producers)),
            ingress_processes=int(env.get("REACH_INGRESS_PROCESSES", defaults.ingress_processes)),
            max_body_bytes=int(env.get("REACH_MAX_BODY_BYTES", defaults.max_body_bytes)),
            batch_retention_days=float(env.get("REACH_BATCH_RETENTION_DAYS", defaults.batch_retention_days)),
            sync_wait_s=float(env.get("REACH_SYNC_WAIT_S", defaults.sync_wait_s)),
            delete_all_max=int(env.get("REACH_DELETE_ALL_MAX", defaults.delete_all_max)),
            idempotency_key_hours=float(env.get("REACH_IDEMPOTENCY_KEY_HOURS", defaults.idempotency_key_hours)),
            partner_secrets=orjson.loads(secrets) if secrets else defaults.partner_secrets,
            quota=quota,
            quota_overrides=_overrides(overrides, quota) if overrides else {},
            max_backlog_records=_limit("REACH_MAX_BACKLOG_RECORDS", env.get("REACH_MAX_BACKLOG_RECORDS")),
            reader_urls=_urls("REACH_READER_URLS", env.get("REACH_READER_URLS")) or defaults.reader_urls,
            reader_index=int(env.get("REACH_READER_INDEX", defaults.reader_index)),
        )
