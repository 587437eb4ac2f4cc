"""OpenAI wire models of the Files and Batch APIs (wire models only)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmserve.batch.lines import ENDPOINTS
from llmserve.server.protocol import ErrorResponse

Endpoint = Literal[ENDPOINTS]  # type: ignore[valid-type]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> FileObject:
        return cls(id=r["id"], bytes=r["bytes"], created_at=r["created_at"], filename=r["filename"],
                   purpose=r["purpose"])


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1)
    endpoint: Endpoint
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=16)
    output_expires_after: dict[str, Any] | None = None  # accepted; output files are kept until deleted


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> BatchObject:
        fields = {k: r[k] for k in cls.model_fields if k in r and k not in ("errors", "metadata", "object")}
        return cls(**fields, errors=json.loads(r["errors"]) if r["errors"] else None,
                   metadata=json.loads(r["metadata"]) if r["metadata"] else None,
                   request_counts=RequestCounts(total=r["total"], completed=r["completed"], failed=r["failed"]))


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def not_found(what: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entry of a route that looks up a file or batch of the caller's."""
    return {404: {"model": ErrorResponse, "description": f"No such {what} (or it belongs to another API key)"}}


CONFLICT = {409: {"model": ErrorResponse, "description": "The batch is already finalizing or finished"}}
