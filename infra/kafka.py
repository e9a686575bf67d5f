"""Apache Kafka for the embedded stack and the tests: one KRaft node (broker and controller)
on loopback, its jars resolved from Maven Central, its data on disk.

* ``kafka_classpath()`` resolves ``kafka_2.13`` and ``kafka-tools`` of ``KAFKA_VERSION`` (and
  a Log4j 2 binding) with Maven into ``~/.m2`` and caches the classpath under
  ``<cache>/kafka-<version>/classpath.txt`` (``TICKFLOW_KAFKA_CACHE``, default
  ``~/.cache/tickflow``): the first run on a machine pays the download, later ones start at
  once.
* ``KafkaBroker`` formats its storage once (``kafka.tools.StorageTool``), starts
  ``kafka.Kafka`` with a heap sized for a 2-core test machine, and is ready when it answers a
  metadata request (not when a port opens). A restart keeps topics, records and committed
  offsets. ``kill()`` is a kill -9, for outage tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Self

from infra.procs import ManagedProcess, free_port

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # what kafka 4.1.1 itself depends on
HEAP = "-Xmx768m"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tickflow</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """<Configuration status="warn">
  <Appenders><Console name="out" target="SYSTEM_OUT">
    <PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers>
    <Logger name="kafka" level="warn"/><Logger name="org.apache.kafka" level="warn"/>
    <Logger name="kafka.server.KafkaServer" level="info"/>
    <Logger name="kafka.server.KafkaRaftServer" level="info"/>
    <Root level="warn"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
"""


def cache_dir() -> Path:
    return Path(os.environ.get("TICKFLOW_KAFKA_CACHE",
                               Path.home() / ".cache" / "tickflow")) / f"kafka-{KAFKA_VERSION}"


def kafka_classpath() -> str:
    """The broker's and tools' Java classpath, resolved through Maven once per machine."""
    d = cache_dir()
    cp_file = d / "classpath.txt"
    if cp_file.exists():
        cp = cp_file.read_text().strip()
        if cp and all(Path(p).exists() for p in cp.split(":")):
            return cp
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise RuntimeError("Apache Kafka needs Java 17+ and Maven (mvn) on PATH")
    d.mkdir(parents=True, exist_ok=True)
    (d / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
    tmp = d / "classpath.txt.tmp"
    t0 = time.monotonic()
    run = subprocess.run(["mvn", "-q", "-B", "-f", str(d / "pom.xml"),
                          "dependency:build-classpath", f"-Dmdep.outputFile={tmp}"],
                         capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"mvn could not resolve Apache Kafka {KAFKA_VERSION}:\n"
                           f"{(run.stdout + run.stderr)[-3000:]}")
    tmp.replace(cp_file)
    (d / "resolved-in-seconds.txt").write_text(f"{time.monotonic() - t0:.1f}\n")
    return cp_file.read_text().strip()


def java_argv(main: str, *args: str, heap: str = HEAP) -> list[str]:
    """argv of one of Kafka's main classes (a broker, a tool) with our classpath."""
    log4j = cache_dir() / "log4j2.xml"
    if not log4j.exists():
        log4j.parent.mkdir(parents=True, exist_ok=True)
        log4j.write_text(_LOG4J2)
    return ["java", heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", kafka_classpath(), main, *args]


class KafkaBroker(ManagedProcess):
    """One Apache Kafka KRaft node on ``host:port``, data under ``data_dir``."""

    def __init__(self, host: str, port: int, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.controller_port = free_port(host)
        self.config = data_dir / "server.properties"
        super().__init__("broker", [], host, port, log_path)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def version(self) -> str:
        return f"Apache Kafka {KAFKA_VERSION}"

    def _write_config(self) -> None:
        h, p, c = self.host, self.port, self.controller_port
        props = {
            "process.roles": "broker,controller", "node.id": "1",
            "listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
            "advertised.listeners": f"PLAINTEXT://{h}:{p}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.voters": f"1@{h}:{c}",
            "log.dirs": str(self.data_dir / "logs"),
            "offsets.topic.replication.factor": "1", "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "group.initial.rebalance.delay.ms": "0", "auto.create.topics.enable": "false",
            "num.network.threads": "2", "num.io.threads": "4",
            "message.max.bytes": str(16 * 1024 * 1024 + 1024),
        }
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def start(self, timeout: float = 90.0) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()  # ports may change between runs; the log dir stays
        if not (self.data_dir / "logs" / "meta.properties").exists():
            # "--cluster-id=<id>": an id may start with "-", which as a separate argument
            # the tool's parser takes for an option (1 start in 32 failed so).
            fmt = subprocess.run(java_argv("kafka.tools.StorageTool", "format",
                                           f"--cluster-id={_cluster_id()}", "-c",
                                           str(self.config),
                                           heap="-Xmx256m"),
                                 capture_output=True, text=True, timeout=120)
            if fmt.returncode != 0:
                raise RuntimeError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        self.argv = java_argv("kafka.Kafka", str(self.config))
        super().start(timeout)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready when the broker answers metadata (the port opens earlier)."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Kafka exited during start; see {self.log_path}:\n"
                                   f"{self.tail_log()}")
            try:
                md = admin.list_topics(timeout=2)
                if md.brokers:
                    return
            except Exception:  # not answering yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Kafka did not answer metadata within {timeout:.0f}s; "
                                   f"see {self.log_path}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        super().stop(timeout)

    def kill(self) -> None:
        """kill -9: no clean shutdown (an outage)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def wipe(self, timeout: float = 60.0) -> None:
        """Delete every topic and consumer group (internal topics aside): the broker as if
        just formatted, for a test that shares this broker with others. Raises if a group
        still has members (something of an earlier test still runs)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        groups = [g.group_id for g in admin.list_consumer_groups(
            request_timeout=timeout).result(timeout).valid]
        if groups:
            for g, fut in admin.delete_consumer_groups(groups,
                                                       request_timeout=timeout).items():
                try:
                    fut.result(timeout)
                except Exception as exc:
                    raise RuntimeError(f"cannot delete consumer group {g!r}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            names = [t for t in admin.list_topics(timeout=timeout).topics
                     if not t.startswith("__")]
            if not names:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics not deleted within {timeout:.0f}s: {names}")
            for fut in admin.delete_topics(names, operation_timeout=timeout).values():
                with contextlib.suppress(Exception):  # already being deleted: wait below
                    fut.result(timeout)
            time.sleep(0.05)


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64 URL-safe without padding (22 chars)."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def consumer_groups(bootstrap_servers: str, *args: str, timeout: float = 120.0
                    ) -> subprocess.CompletedProcess[str]:
    """Apache Kafka's ``kafka-consumer-groups`` (the class bin/kafka-consumer-groups.sh runs),
    e.g. ``consumer_groups(b, "--group", g, "--describe")``."""
    return subprocess.run(java_argv(CONSUMER_GROUP_COMMAND, "--bootstrap-server",
                                    bootstrap_servers, *args, heap="-Xmx256m"),
                          capture_output=True, text=True, timeout=timeout)


def describe_offsets(bootstrap_servers: str, group: str) -> dict[tuple[str, int],
                                                                  tuple[int | None, int, int]]:
    """``kafka-consumer-groups --describe``, parsed: (topic, partition) -> (current offset,
    log end offset, lag) as the tool prints them ("-" current: None)."""
    run = consumer_groups(bootstrap_servers, "--group", group, "--describe")
    if run.returncode != 0:
        raise RuntimeError(f"kafka-consumer-groups --describe failed: {run.stderr[-2000:]}")
    out: dict[tuple[str, int], tuple[int | None, int, int]] = {}
    header: list[str] | None = None
    for line in run.stdout.splitlines():
        cols = line.split()
        if "CURRENT-OFFSET" in cols:
            header = cols
            continue
        if header is None or len(cols) < len(header):
            continue
        row = dict(zip(header, cols, strict=False))
        cur = row["CURRENT-OFFSET"]
        out[(row["TOPIC"], int(row["PARTITION"]))] = (
            None if cur == "-" else int(cur), int(row["LOG-END-OFFSET"]),
            int(row["LAG"]) if row["LAG"] != "-" else int(row["LOG-END-OFFSET"]))
    return out
