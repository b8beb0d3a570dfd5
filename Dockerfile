# The image deploy/docker-compose.yml runs (keychest:latest): `keychest serve` on Python 3.11.
# Build from the repository root: docker build -t keychest:latest .
# Run every part in one container, or one --role per container as the compose file does.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Every dependency comes as a wheel (uvloop, psycopg[binary], cryptography): no compiler.
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10023 keychest \
 && useradd --system --uid 10023 --gid 10023 --home-dir /var/lib/keychest --create-home keychest
USER 10023:10023
WORKDIR /var/lib/keychest
# SQLite's data lives here when no --db is given; the compose file uses PostgreSQL instead.
# The HTTP listener defaults to 127.0.0.1, which nobody outside a container could reach.
ENV KEYCHEST_DATA_DIR=/var/lib/keychest \
    KEYCHEST_HTTP_LISTEN=0.0.0.0:8080 \
    KEYCHEST_LINE_LISTEN=0.0.0.0:10023 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/keychest"]
EXPOSE 10023 8080
CMD ["keychest", "serve"]
