"""tickflow: vendor market data -> raw Kafka log -> normalized Avro topics and a Parquet lake."""

__version__ = "0.1.0"
