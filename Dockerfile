# Image for every streamfleet process: the workers (`fleet run WORKER`), the
# one-shot migration (`fleet migrate`) and the CLI.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs, so edits to tests or ops/ keep the layer cached.
COPY pyproject.toml README.md ./
COPY contracts/ contracts/
COPY workers/ workers/
COPY schema/ schema/
RUN pip install ".[tracing]"
# The package is installed into site-packages; `fleet migrate` reads the SQL
# migrations from here.
ENV FLEET_SCHEMA_DIR=/app/schema

# Run unprivileged; nothing in the image needs to be writable.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fleet
USER 10001

# Ops endpoint: /metrics, /health/liveness, /health/readiness, /status.
EXPOSE 8080

# The process handles SIGTERM itself: stop reading, drain for up to
# FLEET_SHUTDOWN_GRACE_SECONDS, acknowledge, exit 0.
STOPSIGNAL SIGTERM
CMD ["fleet", "--help"]
