"""The schema, as sqlite-utils migrations: an older database upgrades in place on start."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("vidhook")


@migrations()
def m001_initial(db: Database) -> None:
    db.table("jobs").create(
        {
            "id": str,
            "provider": str,
            "provider_job_id": str,
            "status": str,
            "provider_status": str,
            "model": str,
            "prompt": str,
            "request": str,  # JSON: images, mode, options as submitted
            "callback_token": str,
            "callback_url": str,  # exactly as sent to the provider
            "key_fingerprint": str,  # which API key created the task; never the key
            "result_url": str,
            "cover_url": str,
            "error": str,
            "credits": float,
            "notify": str,  # JSON list of channel names, NULL for the defaults
            "anomalies": str,  # JSON list of observations that were ignored
            "created_at": float,
            "updated_at": float,
            "finished_at": float,
            "last_callback_at": float,
            "next_poll_at": float,  # NULL: no poll scheduled
            "poll_failures": int,
            "confirm_callback_id": int,  # a terminal callback awaiting confirmation
        },
        pk="id",
        not_null={"provider", "status", "created_at", "updated_at"},
        defaults={"anomalies": "[]", "poll_failures": 0},
    )
    db.table("jobs").create_index(["callback_token"], unique=True)
    db.table("jobs").create_index(["next_poll_at"])
    db.table("jobs").create_index(["status", "id"])
    db.table("jobs").create_index(["provider", "provider_job_id"])

    db.table("transitions").create(
        {
            "id": int,
            "job_id": str,
            "from_status": str,
            "to_status": str,
            "source": str,
            "at": float,
            "detail": str,
        },
        pk="id",
        not_null={"job_id", "to_status", "source", "at"},
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db.table("transitions").create_index(["job_id", "id"])

    db.table("callbacks").create(
        {
            "id": int,
            "job_id": str,
            "provider": str,
            "received_at": float,
            "nonce": str,
            "provider_status": str,
            "headers": str,  # JSON, with signatures and credentials removed
            "body": str,
            "outcome": str,  # applied | confirming
        },
        pk="id",
        not_null={"job_id", "provider", "received_at"},
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db.table("callbacks").create_index(["job_id", "id"])

    db.table("nonces").create(
        {"provider": str, "nonce": str, "digest": str, "expires_at": float},
        pk=("provider", "nonce"),
        not_null={"digest", "expires_at"},
    )
    db.table("nonces").create_index(["expires_at"])

    db.table("deliveries").create(
        {
            "id": int,
            "job_id": str,
            "transition_id": int,
            "channel": str,
            "event": str,
            "status": str,  # pending | delivered | dead
            "attempts": int,
            "next_attempt_at": float,
            "created_at": float,
            "updated_at": float,
            "delivered_at": float,
            "last_error": str,
        },
        pk="id",
        not_null={"job_id", "transition_id", "channel", "event", "status", "created_at"},
        defaults={"attempts": 0},
        foreign_keys=[("job_id", "jobs", "id"), ("transition_id", "transitions", "id")],
    )
    db.table("deliveries").create_index(["transition_id", "channel"], unique=True)
    db.table("deliveries").create_index(["status", "next_attempt_at"])


@migrations()
def m002_poll_schedule(db: Database) -> None:
    jobs = db.table("jobs")
    jobs.add_column("polls", int, not_null_default=0)  # successful polls so far
    jobs.add_column("deadline_at", float)  # past it, an unfinished job fails "timed out"
    jobs.create_index(["deadline_at"])
    jobs.create_index(["provider", "next_poll_at"])


@migrations()
def m003_outbox(db: Database) -> None:
    db.table("delivery_attempts").create(
        {
            "id": int,
            "delivery_id": int,
            "at": float,
            "outcome": str,  # delivered | retry | dead | disabled
            "status_code": int,
            "error": str,
            "duration_ms": float,
        },
        pk="id",
        not_null={"delivery_id", "at", "outcome"},
        foreign_keys=[("delivery_id", "deliveries", "id")],
    )
    db.table("delivery_attempts").create_index(["delivery_id", "id"])
    db.table("deliveries").create_index(["channel", "status", "next_attempt_at"])
    # A re-queued dead delivery counts its age again from here.
    db.table("deliveries").add_column("requeued_at", float)
    # The id receivers dedupe on: random, so it is unique across databases too.
    db.table("deliveries").add_column("event_id", str)
    # A channel whose destination is gone; cleared when its configuration changes.
    db.table("channel_states").create(
        {"name": str, "disabled_at": float, "reason": str, "config_fingerprint": str},
        pk="name",
    )


@migrations()
def m004_callback_received_url(db: Database) -> None:
    # The URL as this service saw it (scheme and host after the proxy), token cut out:
    # what to look at when a proxy does not forward the scheme or the host.
    db.table("callbacks").add_column("received_url", str)


@migrations()
def m005_submission_queue(db: Database) -> None:
    jobs = db.table("jobs")
    # A submission the provider refused for now (429, 5xx, unreachable) is sent again at
    # next_submit_at; submitting_at marks an attempt under way, so that one a crash cut
    # short is known after the restart (the provider may or may not have taken it).
    jobs.add_column("submit_attempts", int, not_null_default=0)
    jobs.add_column("next_submit_at", float)
    jobs.add_column("submitting_at", float)
    jobs.add_column("submit_error", str)
    # Partial: nearly every job has neither, and the workers only look for those that do.
    db.execute(
        "CREATE INDEX idx_jobs_next_submit_at ON jobs (next_submit_at)"
        " WHERE next_submit_at IS NOT NULL"
    )
    db.execute(
        "CREATE INDEX idx_jobs_submitting_at ON jobs (submitting_at)"
        " WHERE submitting_at IS NOT NULL"
    )


@migrations()
def m005_heartbeat(db: Database) -> None:
    # One row, rewritten at start and by /readyz: a write that proves writes are possible.
    db.table("heartbeat").create({"id": int, "at": float}, pk="id", not_null={"at"})


@migrations()
def m006_archive(db: Database) -> None:
    # The durable download queue: one row per job whose result is to be kept, queued in
    # the transaction that completes the job; its status is the job's media status.
    db.table("downloads").create(
        {
            "job_id": str,
            "status": str,  # pending | kept | failed | expired | pruned | off
            "attempts": int,
            "next_attempt_at": float,
            "queued_at": float,  # a file stored before this is fetched again
            "updated_at": float,
            "finished_at": float,
            "error": str,
        },
        pk="job_id",
        not_null={"status", "queued_at", "updated_at"},
        defaults={"attempts": 0},
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db.table("downloads").create_index(["status", "next_attempt_at"])
    # One row per file kept, written only once the file is whole in its storage.
    db.table("media").create(
        {
            "job_id": str,
            "kind": str,  # video | cover
            "store": str,  # local | s3: where location points
            "location": str,  # the file's name in the folder, or the object's key
            "bytes": int,
            "sha256": str,
            "content_type": str,
            "stored_at": float,
            "pruned_at": float,
        },
        pk=("job_id", "kind"),
        not_null={"store", "location", "bytes", "sha256", "content_type", "stored_at"},
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db.table("media").create_index(["stored_at"])


@migrations()
def m007_events(db: Database) -> None:
    # The live stream's log: one row per transition and per change of a job's kept copy,
    # written in the transaction that makes the change. A client resumes after the last
    # id it saw (Last-Event-ID). AUTOINCREMENT: an id is never given out twice, not even
    # once the newest rows are gone.
    db.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,"
        " transition_id INTEGER, at FLOAT NOT NULL)"
    )
    # One row: every event up to ``through`` has been pruned, so a client that resumes
    # from before it has missed some for good and is told to start over.
    db.table("events_pruned").create({"id": int, "through": int}, pk="id", not_null={"through"})


@migrations()
def m008_progress(db: Database) -> None:
    # The provider's latest word on how far a job has got, as JSON ({"percent": 42} or
    # {"queue_position": 3}), from the submit answer or the latest poll; NULL when it
    # said nothing. Not a state: a change of it makes no transition.
    db.table("jobs").add_column("progress", str)


@migrations()
def m009_claims(db: Database) -> None:
    # Work a replica has claimed (PostgreSQL: several replicas share the database), until
    # claimed_until, which it renews while it works (receiver.store.claims).
    for table in ("jobs", "deliveries", "downloads"):
        db.table(table).add_column("claimed_by", str)
        db.table(table).add_column("claimed_until", float)
    # The request budget of each provider, shared by the replicas: when its next request
    # may leave, and until when the provider asked for a pause (Retry-After).
    db.table("provider_budgets").create(
        {"provider": str, "next_at": float, "blocked_until": float},
        pk="provider",
        not_null={"next_at", "blocked_until"},
        defaults={"next_at": 0.0, "blocked_until": 0.0},
    )
