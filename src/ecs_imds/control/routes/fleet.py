"""The fleet as a whole: its defaults, and the fleet file (export, and import validated
whole: all of it or nothing).

An import may carry an `Idempotency-Key`: the store records the key with the import, in
the same transaction, so a client that lost the answer can send the same import again and
get the first one's result instead of a second import. With `dry-run` it changes nothing
and says what it would change. Asked for `application/x-ndjson`, it answers as it goes:
one line per stage (parse, validate, write) with how far it is, then the result or the
error, so a client can show progress of the server's work, not only of the upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ecs_imds.collector import paused, release
from ecs_imds.control import fleet
from ecs_imds.control import schemas as s
from ecs_imds.control.context import ControlContext, Ctx, principal
from ecs_imds.control.http import error_of, read_json, responses
from ecs_imds.errors import ApiError
from ecs_imds.protocol.model import FleetDefaults
from ecs_imds.store import Store

router = APIRouter(tags=["fleet"])

NDJSON = "application/x-ndjson"
IMPORTS = "import/"  # named values in the store: IMPORTS + key → the import's result
_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def defaults_of(store: Store) -> FleetDefaults:
    return FleetDefaults.from_doc(store.load_defaults())


@router.get("/v1/defaults", operation_id="DescribeDefaults", responses={
    200: s.json_response(s.DEFAULTS, "the fleet defaults"), **responses()})
async def get_defaults(ctx: Ctx) -> JSONResponse:
    return JSONResponse((await ctx.run(defaults_of, ctx.store)).to_doc())


@router.put("/v1/defaults", operation_id="ModifyDefaults",
            openapi_extra=s.json_body(s.DEFAULTS, "what every instance inherits"),
            responses={200: s.json_response(s.DEFAULTS, "replaced"), **responses(400)})
async def set_defaults(request: Request, ctx: Ctx) -> JSONResponse:
    doc = await read_json(request)
    defaults, _ = await ctx.run(fleet.set_defaults, ctx.store, doc)
    await ctx.record(request, "set-defaults", "fleet")
    return JSONResponse(defaults.to_doc())


@router.get("/v1/fleet", operation_id="ExportFleet", responses={
    200: s.json_response(s.FLEET, "the whole fleet, as a fleet file"), **responses()})
async def export_fleet(ctx: Ctx) -> Response:
    return Response(await ctx.run(_exported, ctx.store), media_type="application/json")


def _exported(store: Store) -> bytes:
    """The fleet file as JSONResponse would render it, made on a store thread: at 100,000
    instances, rendering it on the event loop would stop the data plane for seconds."""
    with paused():
        return json.dumps(fleet.export_fleet(store), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode()


def _recorded(store: Store, key: str, digest: str) -> dict[str, Any] | None:
    """The result of the import made with `key` before; None when there was none."""
    raw = store.secrets_named(IMPORTS + key).get(IMPORTS + key)
    if raw is None:
        return None
    done: dict[str, Any] = json.loads(raw)
    if done["Digest"] != digest:
        raise ApiError(422, "IdempotencyKeyReused",
                       "Idempotency-Key: already used for another import; use a new key")
    return done


def _import(store: Store, doc: Any, replace: bool, key: str | None, body: bytes,
            progress: fleet.Progress) -> tuple[s.ImportResult, bool]:
    """The import (or the one made before with `key`); whether it was made before. On a
    store thread, with the collector paused (ecs_imds.collector): it makes millions of
    objects at 100,000 instances. `doc`'s instances are consumed (emptied)."""
    with paused():
        try:
            return _import_paused(store, doc, replace, key, _digest(body, replace), progress)
        finally:
            # Freed here, a piece at a time: at the route's end, on the event loop, its
            # instances would be freed in one go (0.3 s at 100,000).
            if isinstance(doc, dict) and isinstance(doc.get("instances"), list):
                release(doc["instances"])


def _digest(body: bytes, replace: bool) -> str:
    """What names an import: its body and its kind (a replace is another import)."""
    kind = hashlib.sha256(b"replace\0" if replace else b"merge\0").hexdigest()
    return hashlib.sha256(kind.encode() + body).hexdigest()


def _import_paused(store: Store, doc: Any, replace: bool, key: str | None, digest: str,
                   progress: fleet.Progress) -> tuple[s.ImportResult, bool]:
    if key is not None and (done := _recorded(store, key, digest)) is not None:
        # The store's version now: the import made before is served from it on.
        return s.ImportResult(Version=store.version(), Instances=done["Instances"]), True
    count = len(doc.get("instances") or []) if isinstance(doc, dict) else 0
    note = None
    if key is not None:
        record = {"Digest": digest, "Instances": count, "At": int(time.time())}
        note = (IMPORTS + key, json.dumps(record).encode())
    version = fleet.import_fleet(store, doc, replace, note, progress)
    return s.ImportResult(Version=version, Instances=count), False


@router.post("/v1/fleet", response_model=s.ImportResult | s.ImportPlan,
             operation_id="ImportFleet",
             openapi_extra={**s.json_body(s.FLEET, "a fleet file (JSON)")},
             responses={**responses(400, 409, 422), 200: {
                 "description": "imported (or, with dry-run, what it would change); asked "
                                f"for {NDJSON}, one JSON line per stage, then the result",
                 "content": {NDJSON: {}}}},
             summary="Import a fleet file, all of it or nothing")
async def import_fleet(
    request: Request, ctx: Ctx,
    replace: bool = Query(False, description="delete the instances not in the file; its "
                                             "defaults replace the stored ones"),
    dry_run: bool = Query(False, alias="dry-run", description="change nothing; say what "
                                                              "the import would change"),
    idempotency_key: str | None = Header(None, description="a key of the client's choosing: "
                                                           "the same import sent again with "
                                                           "it is not made twice"),
) -> Response:
    if idempotency_key is not None and not _KEY.fullmatch(idempotency_key):
        raise ApiError(400, "InvalidParameter",
                       "Idempotency-Key: 1-128 letters, digits, '.', '_', ':' or '-'")
    body = await request.body()
    doc = await read_json(request)
    if dry_run:
        return JSONResponse(await ctx.run(fleet.plan_import, ctx.store, doc, replace))
    who = principal(request).name

    def work(progress: fleet.Progress) -> tuple[s.ImportResult, bool]:
        """The import and its audit line, on a store thread: the line is written before
        the answer, and also when the client went away meanwhile."""
        result, again = _import(ctx.store, doc, replace, idempotency_key, body, progress)
        if not again:
            ctx.audit.record(who, "import", "fleet", instances=result.Instances,
                             replace=replace)
        return result, again

    if NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_streamed(ctx, work, idempotency_key),
                                 media_type=NDJSON)
    _claim(idempotency_key)
    try:
        result, again = await ctx.run(work, fleet.no_progress)
    finally:
        _IN_FLIGHT.discard(idempotency_key or "")
    return JSONResponse(result.model_dump(),
                        headers={"Idempotent-Replayed": "true"} if again else None)


# Keys of the imports running in this server: a client that lost its answer may send the
# import again while the first is still at work, and must not start a second one.
_IN_FLIGHT: set[str] = set()


def _claim(key: str | None) -> None:
    """Mark the import with `key` as running (on the event loop: no lock needed); refused
    while one with the same key still runs. `_IN_FLIGHT.discard(key)` when it is done."""
    if key is not None:
        if key in _IN_FLIGHT:
            raise ApiError(409, "IdempotencyKeyInUse", "Idempotency-Key: that import is "
                           "still running; send it again when it is done to get its result")
        _IN_FLIGHT.add(key)


async def _streamed(ctx: ControlContext,
                    work: Callable[[fleet.Progress], tuple[s.ImportResult, bool]],
                    key: str | None) -> AsyncIterator[bytes]:
    """The import's stages as they happen, a JSON line each (at most ten a second), then
    `{"Result": …}` or `{"Error": {"Status", "Code", "Message"}}`."""
    loop = asyncio.get_running_loop()
    stages: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done in (0, total) or now - last[0] >= 0.1:
            last[0] = now
            loop.call_soon_threadsafe(stages.put_nowait, (stage, done, total))

    try:
        _claim(key)
    except ApiError as exc:
        yield _line({"Error": {"Status": exc.status, "Code": exc.code, "Message": exc.message}})
        return
    task = asyncio.ensure_future(ctx.run(work, progress))

    # No longer running when done, even if the client has gone away (audited by `work`).
    task.add_done_callback(lambda _: _IN_FLIGHT.discard(key or ""))
    while not task.done() or not stages.empty():
        waiting = asyncio.ensure_future(stages.get())
        await asyncio.wait([task, waiting], return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            stage, done, total = waiting.result()
            yield _line({"Stage": stage, "Done": done, "Total": total})
        else:
            waiting.cancel()
    try:
        result, again = task.result()
    except Exception as exc:
        answer = error_of(exc)
        yield _line({"Error": {"Status": answer.status_code, **json.loads(bytes(answer.body))}})
        return
    yield _line({"Result": result.model_dump(), "Replayed": again})


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"
