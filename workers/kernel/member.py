"""Who a consumer is to the server: the parts of a consumer share one :class:`Member`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Member:
    """One consumer of one group: the client it talks through (replies read as ``Any``
    and shaped at this edge), the stream and group it reads, its consumer name, and its
    logger bound with all three."""

    redis: Any
    stream: str
    group: str
    name: str
    log: Any
