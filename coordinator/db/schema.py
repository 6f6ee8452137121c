"""SQLAlchemy Core tables. Times are integer epoch ms (`*_ms`), money integer micro-AIT
(`*_uait`), JSON documents are stored as text (same on SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
)

from chain.store import ledger_accounts, ledger_holds, ledger_transfers, partial_index
from chain.store import metadata as ledger_metadata

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("applied_at_ms", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 hex; never the key
    Column("role", String(10), nullable=False),
    Column("address", String(44), nullable=False, index=True),
    Column("name", String(200)),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger),
)

files = Table(
    "files",
    metadata,
    Column("file_id", String(40), primary_key=True),
    Column("owner_address", String(44), nullable=False, index=True),
    Column("filename", String(255)),
    Column("content_type", String(200), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # In the database (not the data dir) so every coordinator process on one PostgreSQL
    # can hand the input to the miners connected to it.
    Column("data", LargeBinary, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(40), primary_key=True),
    Column("client_address", String(44), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("chain_id", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("name", String(200)),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),  # 0 low, 1 normal, 2 high
    Column("requirements", Text, nullable=False),  # JSON
    Column("params", Text, nullable=False),  # JSON
    Column("output_config", Text, nullable=False),  # JSON
    Column("input_json", Text),  # the JSON input as text, or NULL for a file input
    Column("input_file_id", String(40), ForeignKey("files.file_id")),
    Column("input_sha256", String(64), nullable=False),
    Column("input_bytes", BigInteger, nullable=False),
    Column("timeout_seconds", Integer, nullable=False),
    Column("deadline_ms", BigInteger, nullable=False),
    Column("max_price_uait", BigInteger),
    Column("estimated_cost_uait", BigInteger, nullable=False),
    Column("estimated_units", BigInteger, nullable=False),
    Column("estimated_time_seconds", Integer, nullable=False),
    Column("cost_uait", BigInteger),
    Column("progress", Integer, nullable=False, default=0),
    Column("progress_message", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("miner_id", String(40)),
    Column("miner_address", String(44)),
    Column("lease_expires_at_ms", BigInteger),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("started_at_ms", BigInteger),
    Column("completed_at_ms", BigInteger),
    Column("error", Text),
    Column("result", Text),  # JSON
    Column("output", LargeBinary),  # the bytes GET /download answers
    Column("output_sha256", String(64)),
    Column("output_content_type", String(200)),
    Column("output_filename", String(255)),
    Column("output_size", BigInteger),
    Column("extra", Text),  # JSON: small facts that need no column (e.g. the price paid)
)
# The indexes that only the queue and the reaper's sweeps read are partial (schema
# version 6): a job leaves them when it ends instead of moving to another key, so its
# status changes rewrite fewer index entries (docs/benchmarks.md, round 24). A planner
# uses a partial index only for a query whose WHERE implies the index's, so their reads
# state the status predicates as literals: a prepared statement's generic plan on
# PostgreSQL knows nothing of a parameter's value (SQLite re-plans once it is bound).
QUEUED_ONLY = jobs.c.status == literal_column("'queued'")
# The queue: claims scan queued jobs by priority then age. `status` stays the first
# column, so the queue read's equality on it rates this index as before (no statistics).
partial_index(
    "ix_jobs_queue", QUEUED_ONLY, jobs.c.status, jobs.c.priority.desc(), jobs.c.created_at_ms
)
# Listing (GET /v1/jobs, newest first) and history (oldest first). Each index gives the
# whole ORDER BY, job_id breaking ties, so a page is read off the index and OFFSET skips
# index entries: without them SQLite sorted every matching row for each page (an admin's
# page of 38,000 jobs took 90 ms, on the event loop; schema version 3).
Index("ix_jobs_client_created", jobs.c.client_address, jobs.c.created_at_ms, jobs.c.job_id)
Index(
    "ix_jobs_client_status",
    jobs.c.client_address,
    jobs.c.status,
    jobs.c.created_at_ms,
    jobs.c.job_id,
)
Index("ix_jobs_created", jobs.c.created_at_ms, jobs.c.job_id)
Index("ix_jobs_status_created", jobs.c.status, jobs.c.created_at_ms, jobs.c.job_id)
# A model's latest completions (measured throughput). Partial: a job gets its entry once,
# when it completes, so the status changes before that do not touch it (and on PostgreSQL,
# where an update writes a new entry in every index its new row belongs to, nor do they).
# The throughput query states the same predicate.
COMPLETED_ONLY = jobs.c.status == literal_column("'completed'")
partial_index("ix_jobs_model_completed", COMPLETED_ONLY, jobs.c.model, jobs.c.completed_at_ms)
# The jobs leased to a miner, read when it says hello (to resume them after a reconnect).
# Without it that read walked every running job (8 ms with 40,000 running, on the event
# loop, for each miner of a reconnect storm; docs/benchmarks.md, round 15). Partial: a job
# has an entry only while it runs. Schema version 5. The read states the same predicate.
# `status` is constant in it, but SQLite (no statistics) rates an index by the equalities
# it serves, and with miner_id alone it tied with the status-led indexes and took one.
RUNNING_ONLY = jobs.c.status == literal_column("'running'")
partial_index("ix_jobs_running_miner", RUNNING_ONLY, jobs.c.miner_id, jobs.c.status)
# Leases that ran out (the reaper): only running jobs hold one, and a comparison of the
# lease implies this predicate. Not RUNNING_ONLY: planners without statistics then took
# ix_jobs_running_miner for the sweep (every running job, filtered by lease) or this one
# for a miner's hello (every running job, filtered by miner).
LEASED = jobs.c.lease_expires_at_ms.is_not(None)
partial_index("ix_jobs_lease", LEASED, jobs.c.lease_expires_at_ms)
# Jobs past their deadline (the reaper): only queued and running jobs can time out.
NOT_ENDED = jobs.c.status.in_([literal_column("'queued'"), literal_column("'running'")])
partial_index("ix_jobs_deadline", NOT_ENDED, jobs.c.status, jobs.c.deadline_ms)

miners = Table(
    "miners",
    metadata,
    Column("miner_id", String(40), primary_key=True),
    Column("address", String(44), nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("advert", Text, nullable=False),  # JSON: the last capability advert
    Column("first_seen_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("jobs_completed", Integer, nullable=False, default=0),
    Column("jobs_failed", Integer, nullable=False, default=0),
    Column("reputation", Float, nullable=False, default=1.0),
)

receipts = Table(
    "receipts",
    metadata,
    Column("job_id", String(40), primary_key=True),
    Column("chain_id", String(64), nullable=False),
    Column("receipt", Text, nullable=False),  # JSON exactly as the miner signed it
    Column("signature", Text, nullable=False),  # JSON {"alg","public_key","sig"}
    Column("created_at_ms", BigInteger, nullable=False),
    # Its block is its payment's (`pay:{job_id}` in ledger_transfers, which carries it).
)

# The ledger's tables (ledger_accounts, ledger_transfers, ledger_holds) live with its rules
# in chain.store, on their own MetaData; migrations create both. Re-exported here.
ALL_METADATA = (metadata, ledger_metadata)

# Blocks of the per-chain hash-chained log, written by the block sealer (chain work).
chain_blocks = Table(
    "chain_blocks",
    metadata,
    Column("chain_id", String(64), primary_key=True),
    Column("height", BigInteger, primary_key=True),
    Column("hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("merkle_root", String(64), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("header", Text, nullable=False),  # JSON, canonical form is what is signed
    Column("body", Text, nullable=False),  # JSON: the entries (transfers, receipts)
    Column("signature", Text, nullable=False),  # JSON {"alg","public_key","sig"}
    UniqueConstraint("chain_id", "hash", name="uq_chain_blocks_hash"),
)

__all__ = [
    "ALL_METADATA",
    "api_keys",
    "chain_blocks",
    "files",
    "jobs",
    "ledger_accounts",
    "ledger_holds",
    "ledger_transfers",
    "metadata",
    "miners",
    "receipts",
    "schema_version",
]
