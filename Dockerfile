# One image for every tickflow service (connectors, dataflow, tools).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY tickflow ./tickflow
COPY flows ./flows
COPY schemas ./schemas
COPY connectors ./connectors
COPY infra ./infra
# gcc only for the build of schemas._avro_writer (the hot-path Avro encoder), then removed.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && (cd / && python -c "import schemas._avro_writer") \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["tickflow"]
