"""structlog configuration: JSON lines off a terminal, one canonical line per outcome.

stdlib loggers (asyncpg, botocore, aiohttp) are routed through the same
formatter so every line the process writes has one shape.
"""

from __future__ import annotations

import logging
import sys

import structlog

from workers.tracing import trace_ids_processor


def configure_logging(level: str = "info", fmt: str = "auto", *, traced: bool = False) -> None:
    """``traced`` (``FLEET_TRACING=otlp``): every line written inside a span carries its
    ``trace_id`` and ``span_id`` (``docs/tracing.md``)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if traced:
        processor = trace_ids_processor()
        if processor is not None:
            shared.insert(1, processor)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries are chatty at info; their warnings still come through.
    for noisy in ("botocore", "aiobotocore", "urllib3", "aiohttp.access", "asyncio", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
