"""The OpenAPI 3.1 document of the coordinator (`GET /v1/openapi.json`).

Written by hand from SPEC §3, small on purpose: object schemas are one string of
`name:type` words (`_shape`), and each operation is one `_op(...)` call naming its summary,
answer, errors and parameters. A test compares the paths and methods here with the routes
`create_app` serves, both ways, and runs openapi-spec-validator over the document.
"""

from __future__ import annotations

from typing import Any

from coordinator.domain.jobs import STATUS_VALUES

API_VERSION = "1"
JSON = "application/json"
PROBLEM = "application/problem+json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _str(description: str | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def _int(minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


STATUSES = list(STATUS_VALUES)
# The types `_shape` knows; `@Name` refers to a component schema, `[t]` is an array of t.
TYPES: dict[str, Schema] = {
    "str": _str(),
    "int": _int(0),
    "number": {"type": "number"},
    "bool": {"type": "boolean"},
    "amount": {"type": "number", "description": "AIT, exact to 6 decimals"},
    "time": _str("ISO 8601 UTC with Z and milliseconds", format="date-time"),
    "date": _str("UTC date", format="date"),
    "address": _str("ait1 + 40 lowercase hex", pattern="^ait1[0-9a-f]{40}$"),
    "hex": _str(pattern="^[0-9a-f]+$"),
    "status": {"type": "string", "enum": STATUSES},
    "priority": {"type": "string", "enum": ["low", "normal", "high"]},
    "role": {"type": "string", "enum": ["client", "miner", "admin"]},
    "percent": _int(0, 100),
    "object": {"type": "object"},
    "any": {},
}


def _type(word: str) -> Schema:
    if word.endswith("|null"):
        return {"oneOf": [_type(word.removesuffix("|null")), {"type": "null"}]}
    if word.startswith("[") and word.endswith("]"):
        return {"type": "array", "items": _type(word[1:-1])}
    if word.startswith("@"):
        return _ref(word[1:])
    return dict(TYPES[word])


def _shape(fields: str, **special: Schema) -> Schema:
    """An object schema from `name:type` words; `name?` is optional, `type|null` may be
    null. `special` adds fields whose schema is not a plain type. Extra fields are allowed
    (SPEC: responses may carry more)."""
    props: Schema = {}
    required: list[str] = []
    for word in fields.split():
        name, _, kind = word.partition(":")
        if not name.endswith("?"):
            required.append(name)
        props[name.rstrip("?")] = _type(kind)
    props.update(special)
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


def _schemas() -> dict[str, Schema]:
    return {
        "Problem": _shape(
            "type:str title:str status:int detail:str errors?:[@FieldError]",
        ),
        "FieldError": _shape("field:str pointer?:str detail:str"),
        "JobSubmit": _job_submit(),
        "JobBatch": _job_batch(),
        "JobsAccepted": _shape("jobs:[@JobAccepted]"),
        "JobAccepted": _shape(
            "job_id:str status:status estimated_cost:amount estimated_time_seconds:int "
            "chain_id:str created_at?:time queue_reason?:str|null"
        ),
        "Job": _shape(
            "job_id:str status:status progress:percent model:str created_at:time attempts:int "
            "chain_id:str miner_id:str|null started_at:time|null completed_at:time|null "
            "result:any name:str|null estimated_cost:amount cost:amount|null error:str|null "
            "queue_reason?:str|null"
        ),
        "JobSummary": _shape(
            "job_id:str status:status model:str name?:str|null created_at?:time "
            "completed_at?:time|null cost?:amount|null chain_id?:str"
        ),
        "JobList": _shape("jobs:[@JobSummary] total:int has_more:bool"),
        "JobHistory": _shape("jobs:[@JobSummary] count:int total_cost:amount"),
        "Receipt": _shape(
            "receipt:object signature:@Signature",
            block={
                "oneOf": [_shape("chain_id:str height:int merkle_proof:[any]"), {"type": "null"}]
            },
        )
        | {"required": ["receipt", "signature", "block"]},
        "Signature": _shape("alg:str public_key:hex sig:hex"),
        "FileUploaded": _shape("file_id:str bytes:int sha256:hex"),
        "Balance": _shape(
            "address:address chain_id:str balance:amount held:amount available:amount"
        ),
        "WalletHistory": _shape(
            "address?:address chain_id?:str|null entries:[@LedgerEntry] total:int has_more:bool"
        ),
        "Account": _shape("address:str kind:str"),
        "LedgerEntry": _shape(
            "transfer_id:str kind?:str chain_id?:str job_id?:str|null amount:amount "
            "amount_uait?:int direction?:str debit:@Account credit:@Account created_at:time"
        ),
        "FaucetRequest": _faucet_request(),
        "FaucetResult": _shape(
            "transfer_id:str address:address chain_id:str amount:amount balance:amount "
            "held?:amount available?:amount"
        ),
        "Chain": _shape(
            "chain_id:str id?:str faucet:bool default?:bool coordinator_public_key:hex"
        ),
        "Chains": _shape("chains:[@Chain] default_chain:str coordinator_public_key?:hex"),
        "Block": _shape(
            "entries:[object] hash:hex signature:@Signature",
            header=_shape(
                "version:int chain_id:str height:int prev_hash:hex merkle_root:hex "
                "created_at:time entry_count:int"
            ),
        )
        | {"required": ["header", "entries", "hash", "signature"]},
        "Blocks": _shape("blocks:[@Block]"),
        "Me": _shape("address:address role:role key_id:str"),
        "Miners": _shape(
            "miners:[@Miner]",
        ),
        "Miner": _shape(
            "miner_id:str status:str gpus:[object] models:[object] jobs_completed:int "
            "reputation:number"
        ),
        "Models": _shape("models:[@Model]"),
        "Model": _shape("model:str miners_online:int price_min?:amount price_max?:amount"),
        "Health": _shape("status:str"),
        # The JSON `data` of the job event stream's events (see _job_events).
        "ProgressEvent": _shape("job_id:str type:str progress:percent message:str|null"),
        "EndEvent": _shape("job_id:str status:status"),
        "DroppedEvent": _shape("events:int"),
    }


def _text(max_len: int, description: str = "") -> Schema:
    """An optional string field as `Fields.string` reads it: null allowed, no NUL."""
    schema: Schema = {"type": ["string", "null"], "maxLength": max_len, "pattern": "^[^\\u0000]*$"}
    return schema | ({"description": description} if description else {})


def _closed(properties: Schema, description: str = "") -> Schema:
    """An optional object with only these fields (unknown fields are 422)."""
    schema: Schema = {
        "type": ["object", "null"],
        "properties": properties,
        "additionalProperties": False,
    }
    return schema | ({"description": description} if description else {})


def _job_submit() -> Schema:
    """What `POST /v1/jobs` accepts (coordinator.api.jobs.parse_job_request)."""
    from coordinator.api.jobs import MAX_PRICE_UAIT, MAX_TIMEOUT_S, MODEL_RE

    return {
        "type": "object",
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "pattern": f"^{MODEL_RE.pattern}$",
            },
            "input": {"description": "a string, any JSON value, or a file_id"},
            "output_config": _closed({"destination": _text(100), "format": _text(50)}),
            "requirements": _closed(
                {
                    "gpu_type": _text(50, "e.g. a100, rtx4090 (matched case-insensitively)"),
                    "gpu_count": {"type": ["integer", "null"], "minimum": 1, "maximum": 64},
                    "min_vram_gb": {"type": ["number", "null"], "minimum": 0, "maximum": 4096},
                }
            ),
            "priority": {"enum": ["low", "normal", "high", None]},
            "timeout_seconds": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": MAX_TIMEOUT_S,
            },
            "chain_id": _text(64, "absent or null: the default chain; unknown: 422"),
            "max_price": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": MAX_PRICE_UAIT / 1_000_000,
                "description": "AIT, at most 6 decimals (a finer amount is refused: 422)",
            },
            "name": _text(200),
            "params": {"type": ["object", "null"], "description": "runtime parameters"},
            "fail_if_unmatched": {"type": ["boolean", "null"]},
        },
        "required": ["model", "input"],
        "additionalProperties": False,
    }


def _job_batch() -> Schema:
    """What `POST /v1/jobs/batch` accepts: `jobs`, each as `POST /v1/jobs` takes it."""
    from coordinator.service.jobs import MAX_BATCH_JOBS

    jobs = {"type": "array", "items": _ref("JobSubmit"), "minItems": 1, "maxItems": MAX_BATCH_JOBS}
    return {
        "type": "object",
        "properties": {"jobs": jobs},
        "required": ["jobs"],
        "additionalProperties": False,
    }


def _faucet_request() -> Schema:
    """What `POST /v1/faucet` accepts (coordinator.api.wallets.faucet): no other field."""
    return {
        "type": "object",
        "properties": {
            "address": {
                "type": ["string", "null"],
                "maxLength": 44,
                "pattern": "^(ait1[0-9a-f]{40})?$",
                "description": "ait1 + 40 lowercase hex; absent, null or empty: the caller's",
            },
            "amount": {
                "type": "number",
                "minimum": 0.000001,
                "maximum": 1000,
                # Not `multipleOf: 0.000001`: float validators (Python's jsonschema among
                # them) reject valid amounts such as 0.07 with it.
                "description": "AIT, at most 6 decimals (a finer amount is refused: 422)",
            },
            "chain_id": _text(64, "absent, null or empty: the default chain; unknown: 422"),
        },
        "required": ["amount"],
        "additionalProperties": False,
    }


# -- operations ---------------------------------------------------------------------------
_ERROR_TEXT = {
    400: "Body is not JSON, not an object, or malformed multipart",
    401: "No key, unknown key or revoked key",
    402: "Not enough available balance for the escrow",
    403: "The key's role may not do this",
    404: "Unknown job, file or address, or another client's job",
    409: "The action does not fit the job's state",
    413: "Body larger than the configured limit",
    422: "Fields of the right shape but invalid values (see `errors`)",
    429: "Rate limited; see Retry-After",
    503: "Not ready (database unreachable)",
}


def _problem(code: int) -> Schema:
    response: Schema = {
        "description": _ERROR_TEXT[code],
        "content": {PROBLEM: {"schema": _ref("Problem")}},
    }
    if code == 429:
        response["headers"] = {"Retry-After": {"schema": _int(0)}}
    return response


def _answer(media: str, schema: Schema, description: str = "Success") -> Schema:
    return {"description": description, "content": {media: {"schema": schema}}}


def _op(
    summary: str,
    ok: str | Schema,
    *errors: int,
    status: int = 200,
    params: tuple[Schema, ...] = (),
    body: str | Schema | None = None,
    public: bool = False,
) -> Schema:
    """One operation. `ok` names a component schema of a JSON answer (or is the whole
    response object); `body` likewise for the request. Every authenticated operation may
    also answer 401; every operation 429."""
    codes = set(errors) | ({429} if public else {401, 429})
    response = _answer(JSON, _ref(ok)) if isinstance(ok, str) else ok
    operation: Schema = {
        "summary": summary,
        "responses": {str(status): response} | {str(c): _problem(c) for c in sorted(codes)},
    }
    if params:
        operation["parameters"] = list(params)
    if body is not None:
        content = {JSON: {"schema": _ref(body)}} if isinstance(body, str) else body
        operation["requestBody"] = {"required": True, "content": content}
    if public:
        operation["security"] = []
    return operation


def _path(name: str, kind: str = "str") -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": _type(kind)}


def _query(name: str, schema: Schema | str) -> Schema:
    value = _type(schema) if isinstance(schema, str) else schema
    return {"name": name, "in": "query", "required": False, "schema": value}


def _paging(most: int, default: int) -> tuple[Schema, ...]:
    return (
        _query("limit", {**_int(1, most), "default": default}),
        _query("offset", {**_int(0), "default": 0}),
    )


JOB_ID = [_path("job_id")]
ADDRESS = [_path("address", "address")]
CHAIN_ID = _query("chain_id", _str("default: the coordinator's default chain"))
DATES = (_query("from", "date"), _query("to", "date"))
# Comma-separated (`?status=completed,failed`): only the status events of jobs entering
# those statuses, and progress only with `running`.
STATUS_FILTER = {
    **_query("status", {"type": "array", "items": _type("status")}),
    "style": "form",
    "explode": False,
    "description": "only the status events of jobs entering these statuses (progress "
    "events only with running); default: every event",
}
MULTIPART = "multipart/form-data"
FILE = _str(contentMediaType="application/octet-stream")


def _event(name: str, data: Schema, description: str) -> Schema:
    """One server-sent event as read off the stream: its name and its JSON `data` line."""
    return {
        "type": "object",
        "description": description,
        "properties": {
            "event": {"const": name},
            "data": _str(contentMediaType=JSON, contentSchema=data),
        },
        "required": ["event", "data"],
    }


def _stream(description: str, *events: Schema) -> Schema:
    """A `text/event-stream` answer. OpenAPI 3.1 has no schema for a stream, so (as tools
    read it) `schema` describes each event; comment lines (`: keep-alive`) carry none."""
    each = {"description": description, "oneOf": list(events)}
    return _answer("text/event-stream", each, "A stream of server-sent events")


def _job_events() -> Schema:
    """`GET /v1/jobs/{job_id}/events`: the job now, its changes, then the end."""
    return _stream(
        "One event of the stream, as `{event, data}`: `event: status` first and on every "
        "status change, `event: progress` on progress, `event: end` last (then the stream "
        "closes). A `: keep-alive` comment comes after 15 s of silence.",
        _event("status", _ref("Job"), "The whole job object."),
        _event("progress", _ref("ProgressEvent"), "Progress reported by the miner."),
        _event("end", _ref("EndEvent"), "The job's final status; the last event."),
    )


def _all_job_events() -> Schema:
    """`GET /v1/jobs/events`: every job of the caller, from connecting on; never ends."""
    return _stream(
        "One event of the stream, as `{event, data}`: `event: status` on every status change "
        "of any of the caller's jobs (an admin: of any job), `event: progress` on progress, "
        "`event: dropped` when the client fell so far behind that older events were dropped "
        "(re-read the jobs). A `: keep-alive` comment comes after 15 s of silence.",
        _event("status", _ref("Job"), "The whole job object."),
        _event("progress", _ref("ProgressEvent"), "Progress reported by the miner."),
        _event("dropped", _ref("DroppedEvent"), "How many events were dropped."),
    )


def _paths() -> dict[str, Schema]:
    submit_body = {
        JSON: {"schema": _ref("JobSubmit")},
        MULTIPART: {"schema": _shape("", data=_str(contentMediaType=JSON), file=FILE)},
    }
    return {
        "/v1/jobs": {
            "post": _op("Submit a job; its estimated cost is held in escrow", "JobAccepted",
                        400, 402, 403, 404, 413, 422, status=201, body=submit_body),
            "get": _op("The caller's jobs, newest first", "JobList", 422,
                       params=(_query("status", "status"), *_paging(100, 20))),
        },
        "/v1/jobs/batch": {
            "post": _op("Submit up to 100 jobs, all or none; their estimates held in escrow",
                        "JobsAccepted", 400, 402, 403, 404, 413, 422, status=201,
                        body="JobBatch"),
        },
        "/v1/jobs/events": {
            "get": _op("Server-sent events (status, progress) of all the caller's jobs",
                       _all_job_events(), 422, params=(STATUS_FILTER,)),
        },
        "/v1/jobs/latest": {"get": _op("The caller's most recent job", "Job", 404)},
        "/v1/jobs/history": {
            "get": _op("Jobs created in a range of UTC dates (inclusive), with totals",
                       "JobHistory", 422, params=DATES),
        },
        "/v1/jobs/{job_id}": {
            "parameters": JOB_ID,
            "get": _op("Job status", "Job", 404),
            "put": _op("Rename a job", "Job", 400, 404, 422,
                       body={JSON: {"schema": _shape("name:str")}}),
            "delete": _op("Cancel a job; the escrow comes back", "Job", 404, 409),
        },
        "/v1/jobs/{job_id}/download": {
            "parameters": JOB_ID,
            "get": _op("The output file, with Content-Type and Content-Disposition",
                       # any media type: a JSON output is served as application/json
                       _answer("*/*", {"description": "the output bytes as the miner sent them"}),
                       404, 409),
        },
        "/v1/jobs/{job_id}/receipt": {
            "parameters": JOB_ID,
            "get": _op("The miner-signed receipt and its block", "Receipt", 404, 409),
        },
        "/v1/jobs/{job_id}/events": {
            "parameters": JOB_ID,
            "get": _op("Server-sent events (status, progress, end) until the job ends",
                       _job_events(), 404),
        },
        "/v1/files": {
            "post": _op("Upload a file; its file_id can be a job's input", "FileUploaded",
                        400, 413, 422, status=201,
                        body={MULTIPART: {"schema": _shape("file:any", file=FILE)}}),
        },
        "/v1/me": {"get": _op("The caller's address, role and key id", "Me")},
        "/v1/wallets/{address}/balance": {
            "parameters": ADDRESS,
            "get": _op("Balance of an address (balance = available + held)", "Balance",
                       403, 404, 422, params=(CHAIN_ID,)),
        },
        "/v1/wallets/{address}/history": {
            "parameters": ADDRESS,
            "get": _op("Ledger entries of an address", "WalletHistory", 403, 404, 422,
                       params=(CHAIN_ID, *DATES, *_paging(1000, 100))),
        },
        "/v1/faucet": {
            "post": _op("Mint test AIT (up to 1000 a request) on a faucet chain",
                        "FaucetResult", 400, 403, 422, body="FaucetRequest"),
        },
        "/v1/chains": {"get": _op("Configured chains and the block-signing key", "Chains")},
        "/v1/chain/{chain_id}/blocks": {
            "parameters": [_path("chain_id")],
            "get": _op("Blocks of a chain's log, in height order", "Blocks", 404, 422,
                       params=(_query("from_height", "int"), *_paging(1000, 100)[:1])),
        },
        "/v1/chain/{chain_id}/blocks/{height}": {
            "parameters": [_path("chain_id"), _path("height", "int")],
            "get": _op("One block", "Block", 404, 422),
        },
        "/v1/miners": {
            "get": _op("Connected miners: GPUs, models, prices, reputation", "Miners", 422,
                       params=(_query("model", "str"), _query("limit", _int(1, 10_000)),
                               _query("offset", {**_int(0), "default": 0}))),
        },
        "/v1/models": {"get": _op("Models served now, miners online, price range", "Models")},
        "/v1/miners/ws": {
            "get": _op("Miner websocket (upgrade); see docs/protocol.md",
                       {"description": "Switching protocols"}, 403, status=101),
        },
        "/healthz": {"get": _op("Liveness", "Health", public=True)},
        "/readyz": {"get": _op("Readiness (database reachable)", "Health", 503, public=True)},
        "/metrics": {
            "get": _op("Prometheus metrics", _answer("text/plain", _str()), public=True),
        },
        "/v1/openapi.json": {
            "get": _op("This document", _answer(JSON, TYPES["object"]), public=True),
        },
    }  # fmt: skip


def build_openapi() -> dict[str, Any]:
    """A fresh OpenAPI 3.1 document (callers may change it, e.g. add `servers`)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AIT Market coordinator",
            "version": API_VERSION,
            "description": "Client REST API of the AIT Market coordinator (SPEC §3). "
            "Errors are RFC 9457 problem details (application/problem+json).",
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }
