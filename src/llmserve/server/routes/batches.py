"""OpenAI's Batch API: create, retrieve, list, cancel; a key sees only its own batches."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request

from llmserve.batch.states import Status
from llmserve.batch.store import IllegalTransition, JobStore
from llmserve.errors import Conflict, InvalidRequest, NotFound
from llmserve.server.auth import Identity, owner_of, require_api_key
from llmserve.server.jobs import get_jobs
from llmserve.server.openapi import errors
from llmserve.server.body import JSONBodyRoute
from llmserve.server.protocol_batch import CONFLICT, BatchCreateRequest, BatchList, BatchObject, not_found

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], route_class=JSONBodyRoute)
WINDOWS = {"24h": 24 * 3600}


@router.post("/batches", responses=not_found("input file"))
async def create_batch(body: BatchCreateRequest, request: Request,
                       identity: Identity = Depends(require_api_key)) -> BatchObject:
    jobs, owner = get_jobs(request), owner_of(identity)
    source = await jobs.call(JobStore.get_file, owner, body.input_file_id)
    if source is None:
        raise NotFound(f"No such File object: {body.input_file_id}", param="input_file_id")
    if source["purpose"] != "batch":
        raise InvalidRequest(f"file {body.input_file_id} has purpose {source['purpose']!r}; a batch needs a "
                             "file uploaded with purpose 'batch'", param="input_file_id")
    record = await jobs.call(JobStore.create_batch, owner, body.endpoint, body.input_file_id,
                             WINDOWS[body.completion_window], body.completion_window, body.metadata)
    jobs.runner.wake()
    logger.info("batch %s created for %s", record["id"], body.endpoint)
    return BatchObject.from_record(record)


async def _batch(request: Request, identity: Identity, batch_id: str) -> dict:
    record = await get_jobs(request).call(JobStore.get_batch, owner_of(identity), batch_id)
    if record is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return record


@router.get("/batches/{batch_id}", responses=not_found("batch"))
async def retrieve_batch(batch_id: str, request: Request, identity: Identity = Depends(require_api_key)) -> BatchObject:
    return BatchObject.from_record(await _batch(request, identity, batch_id))


@router.get("/batches", responses=errors(400))
async def list_batches(request: Request, identity: Identity = Depends(require_api_key), after: str | None = None,
                       limit: int = Query(20, ge=1, le=100)) -> BatchList:
    rows, more = await get_jobs(request).call(JobStore.list_batches, owner_of(identity), after=after, limit=limit)
    data = [BatchObject.from_record(r) for r in rows]
    return BatchList(data=data, has_more=more, first_id=data[0].id if data else None,
                     last_id=data[-1].id if data else None)


@router.post("/batches/{batch_id}/cancel", responses={**not_found("batch"), **CONFLICT})
async def cancel_batch(batch_id: str, request: Request, identity: Identity = Depends(require_api_key)) -> BatchObject:
    jobs = get_jobs(request)
    record = await _batch(request, identity, batch_id)
    if record["status"] in (Status.CANCELLING.value, Status.CANCELLED.value):
        return BatchObject.from_record(record)
    try:
        record = await jobs.call(JobStore.advance, batch_id, Status.CANCELLING)
    except IllegalTransition:
        current = (await _batch(request, identity, batch_id))["status"]
        raise Conflict(f"Cannot cancel a batch with status '{current}'.", param="batch_id") from None
    jobs.runner.cancelled(batch_id)
    logger.info("batch %s cancelling", batch_id)
    return BatchObject.from_record(record)
