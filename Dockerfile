# One image for every tickflow service (connectors, dataflow, tools).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tickflow ./tickflow
COPY flows ./flows
COPY schemas ./schemas
COPY connectors ./connectors
COPY infra ./infra
RUN pip install --no-cache-dir .
ENTRYPOINT ["tickflow"]
