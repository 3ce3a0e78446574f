"""The seed's snapshot API, served by the ops HTTP endpoint.

``GET  /api/v1/ingest/snapshots?tool=&state=``  -> ``{"snapshots": [record, ...]}``
``GET  /api/v1/ingest/snapshots/{id}``          -> the seed's snapshot record
``POST /api/v1/ingest/snapshots/{id}/rollback`` -> ``{"rollback": {...}}``
``GET  /api/v1/ingest/sla?tool=``               -> ``{"sla": {...}}`` (or a list for all tools)

Reads are open like ``/metrics``. The rollback needs ``Authorization: Bearer <token>``
matching ``FLEET_API_TOKEN``; with no token configured, mutating calls are disabled (401).
Its JSON body takes ``reason`` (required), ``dryRun``, ``force`` and ``trigger``; unknown
fields are refused, so a misspelt ``dry_run`` cannot turn a dry run into a real rollback.
Errors are ``{"error": {"status": N, "message": "..."}}``.
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from aiohttp import web

from workers.settings import Settings
from workers.snapshot_retention.api_shapes import ListResponse, RollbackRequest
from workers.snapshot_retention.changes import RollbackDenied, RollbackFailed
from workers.snapshot_retention.ids import parse_snapshot_id, validate_tool
from workers.snapshot_retention.lifecycle import RollbackTrigger
from workers.snapshot_retention.records import SnapshotState
from workers.snapshot_retention.service import Snapshots

API_ACTOR = "api"
"""``executedBy`` of API rollbacks: the token is shared, so it names no person."""


_encoder = msgspec.json.Encoder()
_rollback_decoder = msgspec.json.Decoder(RollbackRequest)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


def _error(status: int, message: str, **headers: str) -> web.Response:
    response = _json({"error": {"status": status, "message": message}}, status)
    response.headers.update(headers)
    return response


class SnapshotApi:
    def __init__(self, snapshots: Snapshots, token: str | None) -> None:
        self.snapshots = snapshots
        self._token = token

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        challenge = {"WWW-Authenticate": 'Bearer realm="streamfleet"'}
        if not self._token:
            return _error(
                401, "mutating calls are disabled: no API token is configured", **challenge
            )
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self._token.encode()
        ):
            return _error(401, "a valid bearer token is required", **challenge)
        return None

    async def list_snapshots(self, request: web.Request) -> web.Response:
        tool = request.query.get("tool") or None
        state_text = request.query.get("state") or None
        try:
            if tool is not None:
                validate_tool(tool)
            state = None if state_text is None else SnapshotState(state_text)
        except ValueError as exc:
            return _error(400, str(exc))
        found = await self.snapshots.list_snapshots(tool=tool, state=state)
        return _json(ListResponse(snapshots=found))

    async def show(self, request: web.Request) -> web.Response:
        snapshot_id = request.match_info["snapshot_id"]
        try:
            parse_snapshot_id(snapshot_id)
        except ValueError as exc:
            return _error(400, str(exc))
        found = await self.snapshots.get(snapshot_id)
        if found is None:
            return _error(404, f"snapshot {snapshot_id} does not exist")
        return _json(found)

    async def rollback(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        snapshot_id = request.match_info["snapshot_id"]
        try:
            parse_snapshot_id(snapshot_id)
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            body = _rollback_decoder.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, f"malformed request body: {exc}")
        if not body.reason.strip():
            return _error(400, "malformed request body: reason must not be empty")
        target = await self.snapshots.get(snapshot_id)
        if target is None:
            return _error(404, f"snapshot {snapshot_id} does not exist")
        try:
            result = await self.snapshots.rollback(
                target.tool,
                snapshot_id,
                reason=body.reason,
                actor=API_ACTOR,
                dry_run=body.dryRun,
                force=body.force,
                trigger=RollbackTrigger(body.trigger),
            )
        except RollbackDenied as exc:
            return _error(409, str(exc))
        except RollbackFailed as exc:
            return _error(500, str(exc))
        return _json(result)

    async def sla(self, request: web.Request) -> web.Response:
        tool = request.query.get("tool") or None
        if tool is not None:
            try:
                validate_tool(tool)
            except ValueError as exc:
                return _error(400, str(exc))
        return _json(await self.snapshots.sla(tool=tool))


def routes(snapshots: Snapshots, settings: Settings) -> list[web.RouteDef]:
    api = SnapshotApi(snapshots, settings.api_token)
    return [
        web.get("/api/v1/ingest/snapshots", api.list_snapshots),
        web.get("/api/v1/ingest/snapshots/{snapshot_id}", api.show),
        web.post("/api/v1/ingest/snapshots/{snapshot_id}/rollback", api.rollback),
        web.get("/api/v1/ingest/sla", api.sla),
    ]
