"""One settings model for every process: environment variables (and an optional .env file).

Secrets (MASSIVE_API_KEY, registry and broker credentials) are read only from the
environment and held as ``SecretStr`` so they never show up in a repr, a log line or an
exception message.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Embedded-default ports on 127.0.0.1. Chosen away from the usual 9092/8081 so a developer's
# own Kafka or registry is never touched by `tickflow up`.
DEFAULT_BROKER_PORT = 19092
DEFAULT_REGISTRY_PORT = 18081
DEFAULT_SIMULATOR_PORT = 18765


class Settings(BaseSettings):
    """Runtime configuration shared by the CLI, connectors and flows."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str = Field(
        default=f"127.0.0.1:{DEFAULT_BROKER_PORT}", alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    kafka_security_protocol: str | None = Field(default=None, alias="KAFKA_SECURITY_PROTOCOL")
    kafka_sasl_mechanism: str | None = Field(default=None, alias="KAFKA_SASL_MECHANISM")
    kafka_sasl_username: str | None = Field(default=None, alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(default=None, alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_ca_location: str | None = Field(default=None, alias="KAFKA_SSL_CA_LOCATION")

    schema_registry_url: str = Field(
        default=f"http://127.0.0.1:{DEFAULT_REGISTRY_PORT}", alias="SCHEMA_REGISTRY_URL"
    )
    schema_registry_basic_auth: SecretStr | None = Field(
        default=None,
        alias="SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        description="user:password for a registry behind basic auth",
    )
    schema_registry_ca_location: str | None = Field(
        default=None, alias="SCHEMA_REGISTRY_SSL_CA_LOCATION"
    )

    massive_api_key: SecretStr | None = Field(default=None, alias="MASSIVE_API_KEY")
    massive_ws_host: str = Field(default="socket.massive.com", alias="MASSIVE_WS_HOST")
    massive_ws_secure: bool = Field(default=True, alias="MASSIVE_WS_SECURE")
    massive_rest_url: str = Field(default="https://api.massive.com", alias="MASSIVE_REST_URL")

    lake_root: Path = Field(default=Path("data/lake"), alias="TICKFLOW_LAKE_ROOT")
    state_dir: Path = Field(default=Path(".tickflow"), alias="TICKFLOW_STATE_DIR")
    raw_partitions: int = Field(default=4, ge=1, alias="TICKFLOW_RAW_PARTITIONS")
    normalized_partitions: int = Field(default=4, ge=1, alias="TICKFLOW_NORMALIZED_PARTITIONS")
    consumer_group: str = Field(default="tickflow-normalize", alias="TICKFLOW_CONSUMER_GROUP")
    clock_drift_ms: int = Field(
        default=250, ge=1, alias="TICKFLOW_CLOCK_DRIFT_MS",
        description="Exchange-vs-receipt offset drift that raises a clock alert")
    expired_state_days: int = Field(
        default=5, ge=0, alias="TICKFLOW_EXPIRED_STATE_DAYS",
        description="Days after its expiry (receipt time) that an option contract's state "
                    "(dedup window, DataHealth) is dropped")
    dedup_window_s: float = Field(
        default=120.0, ge=1.0, alias="TICKFLOW_DEDUP_WINDOW_S",
        description="Event time a symbol's recent-duplicate window covers (payloads "
                    "compared); older repeats are judged by the published sequence spans")
    window_journal_min_entries: int = Field(
        default=4096, ge=1, alias="TICKFLOW_WINDOW_JOURNAL_MIN_ENTRIES",
        description="Entries from which a dedup window goes to its journal at recovery "
                    "snapshots (only its changes written each time; connectors.window_journal)"
                    " instead of into the snapshot whole")
    fetch_wait_ms: int = Field(
        default=10, ge=1, le=500, alias="TICKFLOW_FETCH_WAIT_MS",
        description="How long the dataflow's raw consumers let the broker hold an empty "
                    "fetch (on Tansu, added to latency; Kafka answers as records arrive)")
    lake_max_buffered_rows: int = Field(
        default=1_000_000, ge=1000, alias="TICKFLOW_LAKE_MAX_BUFFERED_ROWS",
        description="Rows a lake sink partition holds in open files before it writes the "
                    "largest early (memory bound of bulk replays; 4 partitions per flow)")
    lake_bucket_records: int = Field(
        default=1_000_000, ge=1, alias="TICKFLOW_LAKE_BUCKET_RECORDS",
        description="Raw records per lake file-boundary bucket; resets align to it")

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka settings common to producers, consumers and admin clients."""
        from tickflow.logs import kafka_client_logger

        # librdkafka's own log goes through ours: structured, repeats held back.
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap_servers,
                                "logger": kafka_client_logger()}
        if self.kafka_security_protocol:
            conf["security.protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = self.kafka_ssl_ca_location
        return conf

    def registry_config(self) -> dict[str, Any]:
        """Settings for confluent-kafka's ``SchemaRegistryClient``."""
        conf: dict[str, Any] = {"url": self.schema_registry_url}
        if self.schema_registry_basic_auth is not None:
            conf["basic.auth.user.info"] = self.schema_registry_basic_auth.get_secret_value()
        if self.schema_registry_ca_location:
            conf["ssl.ca.location"] = self.schema_registry_ca_location
        return conf


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
