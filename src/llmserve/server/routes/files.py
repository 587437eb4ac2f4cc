"""OpenAI's Files API (``purpose="batch"``): upload, list, retrieve, content, delete; per key."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from llmserve.batch.store import JobStore
from llmserve.errors import InvalidRequest, NotFound, RequestTooLarge
from llmserve.server.auth import Identity, owner_of, require_api_key
from llmserve.server.jobs import get_jobs
from llmserve.server.openapi import errors
from llmserve.server.protocol_batch import FileDeleted, FileList, FileObject, not_found

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
PURPOSES = ("batch",)


@router.post("/files")
async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...),
                      identity: Identity = Depends(require_api_key)) -> FileObject:
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose {purpose!r} is not supported; this server accepts 'batch' files",
                             param="purpose")
    jobs = get_jobs(request)
    limit = jobs.settings.batch_max_file_bytes
    fd, tmp = tempfile.mkstemp(dir=jobs.store.sync.files_dir, suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as out:
            await asyncio.to_thread(shutil.copyfileobj, file.file, out)
        size = os.path.getsize(tmp)
        if size > limit:
            raise RequestTooLarge(f"the file has {size} bytes; at most {limit} are allowed", param="file")
        record = await jobs.call(JobStore.add_file, owner_of(identity), purpose, file.filename or "upload.jsonl",
                                 Path(tmp))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("file %s uploaded: %d bytes", record["id"], record["bytes"])
    return FileObject.from_record(record)


@router.get("/files", responses=errors(400))
async def list_files(request: Request, identity: Identity = Depends(require_api_key),
                     after: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                     order: Literal["asc", "desc"] = "desc", purpose: str | None = None) -> FileList:
    rows, more = await get_jobs(request).call(JobStore.list_files, owner_of(identity), purpose=purpose,
                                              after=after, limit=limit, newest_first=order == "desc")
    data = [FileObject.from_record(r) for r in rows]
    return FileList(data=data, has_more=more, first_id=data[0].id if data else None,
                    last_id=data[-1].id if data else None)


async def _file(request: Request, identity: Identity, file_id: str) -> dict:
    record = await get_jobs(request).call(JobStore.get_file, owner_of(identity), file_id)
    if record is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return record


@router.get("/files/{file_id}", responses=not_found("file"))
async def retrieve_file(file_id: str, request: Request, identity: Identity = Depends(require_api_key)) -> FileObject:
    return FileObject.from_record(await _file(request, identity, file_id))


@router.get("/files/{file_id}/content", responses={200: {"content": {"application/octet-stream": {}}, "description": "The file as uploaded or written"}, **not_found("file")})
async def file_content(file_id: str, request: Request, identity: Identity = Depends(require_api_key)) -> FileResponse:
    record = await _file(request, identity, file_id)
    return FileResponse(get_jobs(request).store.sync.path_of(file_id), media_type="application/octet-stream",
                        filename=record["filename"])


@router.delete("/files/{file_id}", responses=not_found("file"))
async def delete_file(file_id: str, request: Request, identity: Identity = Depends(require_api_key)) -> FileDeleted:
    if not await get_jobs(request).call(JobStore.delete_file, owner_of(identity), file_id):
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return FileDeleted(id=file_id)
