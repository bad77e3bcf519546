"""The audit trail: every control-plane call, allowed or refused, as a CloudTrail record.

Records are appended in one order and chained: each row stores the HMAC-SHA256 of the previous
row's hash and its own document, keyed from the master key (not stored in the database), so a
record altered, removed or moved in the database breaks the chain where it happened, and a
database-only attacker cannot forge a consistent one. The newest link is also written to
``<data-dir>/audit.head``, which exposes removal of the most recent records.

A batch is appended in one transaction, so a failed append (the disk full, say) leaves no torn
record and the chain as it was. A management event's record that cannot be written for lack of
space waits in memory (at most ``BACKLOG_LIMIT``, lost if the daemon dies before there is
space) and is appended before the next records, by the next append or by the writer thread
within ``BACKLOG_RETRY_SECONDS``: its call is answered meanwhile, as CloudTrail delivers its
records after the calls, and a Describe does not fail because the disk is full. A data event is
never kept waiting: its write is acknowledged only once it is durable. An append that met the
database away may have been committed with the answer lost: the next append reads where the
chain ends from the database (and rewrites ``audit.head``) rather than trusting memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session, sessionmaker

from mlfleet.api.pipeline import ApiCall
from mlfleet.auth.identity import Principal
from mlfleet.auth.secrets import SecretBox
from mlfleet.common.paging import Paging, page_before
from mlfleet.common.storage import storage_full
from mlfleet.protocol.errors import NamedAwsError
from mlfleet.protocol.sensitive import HIDDEN
from mlfleet.protocol.shapes import cloudtrail as shapes
from mlfleet.settings import Settings
from mlfleet.state.db import database_unavailable
from mlfleet.state.models import AuditRecord

log = logging.getLogger(__name__)

EVENT_VERSION = "1.11"
# AWS documents no CloudTrail data events for MLflow calls; mlfleet names them after the
# service that signs them (sagemaker-mlflow), with the IAM action as the event name.
DATA_EVENT_SOURCE = "sagemaker-mlflow.amazonaws.com"
GENESIS = "0" * 64
# Hidden whatever the model says: AuthorizedUrl carries a single-use sign-in token.
SECRET_MEMBERS = frozenset(
    {"SecretAccessKey", "SessionToken", "AuthorizedUrl", "Password", "PrivateKey"}
)
# Data events are calls to a tracking server's MLflow API.
TRACKING_SERVER_TYPE = "AWS::SageMaker::MlflowTrackingServer"
MLFLOW_APP_TYPE = "AWS::SageMaker::MlflowApp"
LOOKUP_COLUMNS = {
    "EventId": AuditRecord.event_id,
    "EventName": AuditRecord.event_name,
    "Username": AuditRecord.username,
    "ResourceType": AuditRecord.resource_type,
    "ResourceName": AuditRecord.resource_name,
    "EventSource": AuditRecord.event_source,
    "AccessKeyId": AuditRecord.access_key_id,
}
DEFAULT_LOOKUP_RESULTS = 50


class InvalidNextTokenException(NamedAwsError):
    pass


class InvalidLookupAttributesException(NamedAwsError):
    pass


class InvalidTimeRangeException(NamedAwsError):
    pass


def _record_number(token: str) -> int:
    if not token.isdigit():
        raise InvalidNextTokenException("Invalid NextToken.")
    return int(token)


# CloudTrail's NextToken is the record number its page ends before (newest first).
LOOKUP_PAGING: Paging[int] = Paging(
    "NextToken", "MaxResults", DEFAULT_LOOKUP_RESULTS, str, _record_number
)
_HEAD_SIZE = 128


def iso_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Called once the record is durable, with None, or with the error that kept it from being
# written.
Durable = Callable[[Exception | None], None]
# The last member: whether the record is durable elsewhere already, so it may wait to share
# a commit (runtime.stored_events).
# A None document asks only that what waits be written now (``drain``).
_Queued = tuple[dict[str, Any] | None, str | None, Durable, bool]
# How long such a record may wait: each commit is a sync of the disk, which otherwise meets the
# sync of the next MLflow write a training loop sends.
STORED_ELSEWHERE_WAIT = 0.1
BACKLOG_LIMIT = 10_000
BACKLOG_RETRY_SECONDS = 1.0


def _settle(done: asyncio.Future[None], error: Exception | None) -> None:
    if done.done():  # the waiting request was cancelled
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _epoch(iso: str) -> float:
    # fromisoformat is ~10x cheaper than strptime, on every record of a busy gateway.
    return datetime.fromisoformat(iso).timestamp()


def redact(value: Any, member: str = "") -> Any:
    """The value as CloudTrail shows it: secrets hidden, member names in lowerCamelCase."""
    if member in SECRET_MEMBERS:
        return HIDDEN
    if isinstance(value, Mapping):
        return {_lower_first(str(k)): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def user_identity(principal: Principal | None, account: str, key_id: str | None) -> dict[str, Any]:
    if principal is None:
        identity: dict[str, Any] = {"type": "Unknown"}
        if key_id:
            identity["accessKeyId"] = key_id
        return identity
    if principal.kind == "service":
        # A call a tracking server makes itself (its outbound connections), as CloudTrail
        # records what an AWS service does on an account's behalf.
        return {"type": "AWSService", "invokedBy": principal.name}
    if principal.is_user:
        return {
            "type": "IAMUser",
            "principalId": principal.user_id,
            "arn": principal.arn,
            "accountId": account,
            "accessKeyId": principal.access_key_id,
            "userName": principal.name,
        }
    role_id = principal.user_id.split(":", 1)[0]
    return {
        "type": "AssumedRole",
        "principalId": principal.user_id,
        "arn": principal.arn,
        "accountId": account,
        "accessKeyId": principal.access_key_id,
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "principalId": role_id,
                "arn": principal.identity_arn,
                "accountId": account,
                "userName": principal.name,
            },
            "attributes": {"mfaAuthenticated": "false"},
        },
    }


def _username(principal: Principal | None) -> str | None:
    if principal is None:
        return None
    # CloudTrail names an assumed role's events after the session.
    return principal.name if principal.is_user else principal.arn.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DataEvent:
    """One MLflow call through the gateway, as the audit trail records it."""

    principal: Principal
    action: str  # sagemaker-mlflow:LogMetric
    resource: str  # the tracking server's ARN
    time: float
    source_ip: str | None
    user_agent: str
    request_id: str
    parameters: dict[str, Any]
    status: int | None  # None: recorded as forwarded, before MLflow answered
    error_code: str | None = None
    error_message: str | None = None
    # Chosen by a worker that stored the record with MLflow's write (runtime.stored_events).
    event_id: str | None = None
    # An S3 write on the S3-compatible endpoint is recorded as S3 records it.
    source: str = DATA_EVENT_SOURCE
    resource_type: str = TRACKING_SERVER_TYPE


@dataclass
class Verification:
    records: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditTrail:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        key: bytes,
        head_file: Path,
        account_id: str,
        region: str,
    ) -> None:
        self._sessions = sessions
        self._engine = sessions.kw["bind"]
        self._key = key
        self._head_file = head_file
        self._account = account_id
        self._region = region
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Queued] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        # Management events' records not written yet for lack of space, oldest first.
        self._backlog: list[tuple[dict[str, Any], str | None]] = []
        self._head_fd: int | None = None
        # Compiled once for the database's dialect: compiling (or finding the compiled form in
        # SQLAlchemy's cache) on every append cost more CPU than the insert itself.
        # A declarative class's __table__ is typed as any FromClause; a mapped table it is.
        table = cast(Table, AuditRecord.__table__)
        compiled = insert(table).compile(dialect=self._engine.dialect)
        self._insert_sql = str(compiled)
        self._insert_order = compiled.positiontup  # None where parameters go by name
        self._head = self._last_link()
        # Set when an append met the database away: its commit may have happened with the
        # answer lost, so where the chain ends is read again before the next append.
        self._head_unsure = False

    # --- writing -----------------------------------------------------------------------------

    def record_api_call(self, call: ApiCall) -> dict[str, Any]:
        """Append the call's record; return it (EventBridge receives it too)."""
        document: dict[str, Any] = {
            "eventVersion": EVENT_VERSION,
            "userIdentity": user_identity(call.principal, self._account, call.access_key_id),
            "eventTime": iso_time(call.time),
            "eventSource": f"{call.service}.amazonaws.com",
            "eventName": call.operation or "Unknown",
            "awsRegion": self._region,
            "sourceIPAddress": call.source_ip,
            "userAgent": call.user_agent,
            "requestParameters": redact(call.parameters) if call.parameters is not None else None,
            "responseElements": redact(call.response) if call.response else None,
            "requestID": call.request_id,
            "eventID": str(uuid.uuid4()),
            "readOnly": call.read_only,
            "resources": [
                {"accountId": self._account, "type": resource.type, "ARN": resource.arn}
                for resource in dict.fromkeys(call.resources)
                if resource.arn != "*"
            ],
            "eventType": "AwsApiCall",
            "managementEvent": True,
            "recipientAccountId": self._account,
            "eventCategory": "Management",
        }
        if call.error is not None:
            document["errorCode"] = call.error.code
            document["errorMessage"] = call.error.message
        self.append(document, _username(call.principal))
        return document

    def record_service_event(
        self, name: str, resource_arn: str, resource_type: str, details: dict[str, Any]
    ) -> dict[str, Any]:
        """Append what mlfleet did to a resource on its own (a tracking server put to sleep,
        woken), as CloudTrail records an AWS service's own actions: an ``AwsServiceEvent``."""
        document: dict[str, Any] = {
            "eventVersion": EVENT_VERSION,
            "userIdentity": {"accountId": self._account, "invokedBy": "sagemaker.amazonaws.com"},
            "eventTime": iso_time(time.time()),
            "eventSource": "sagemaker.amazonaws.com",
            "eventName": name,
            "awsRegion": self._region,
            "sourceIPAddress": "sagemaker.amazonaws.com",
            "userAgent": "sagemaker.amazonaws.com",
            "requestParameters": None,
            "responseElements": None,
            "eventID": str(uuid.uuid4()),
            "readOnly": False,
            "resources": [{"accountId": self._account, "type": resource_type, "ARN": resource_arn}],
            "eventType": "AwsServiceEvent",
            "managementEvent": True,
            "recipientAccountId": self._account,
            "serviceEventDetails": details,
            "eventCategory": "Management",
        }
        self.append(document, None)
        return document

    def record_data_event(self, event: DataEvent) -> Awaitable[None]:
        """An MLflow write through the gateway, as a CloudTrail data event; await it."""
        return self.append_async(*self._data_event_document(event))

    def record_data_event_then(
        self, event: DataEvent, durable: Durable, stored_elsewhere: bool = False
    ) -> None:
        """``record_data_event`` for a caller that only has to pass the news on (a worker's
        fast lane asks for one per MLflow write): ``durable`` runs on the writer thread, so
        the event loop is not woken for it; it must be quick and thread-safe. A record
        ``stored_elsewhere`` (durable with MLflow's write) may wait a moment to share a
        commit with others."""
        self.append_then(*self._data_event_document(event), durable, stored_elsewhere)

    def _data_event_document(self, event: DataEvent) -> tuple[dict[str, Any], str | None]:
        document: dict[str, Any] = {
            "eventVersion": EVENT_VERSION,
            "userIdentity": user_identity(event.principal, self._account, None),
            "eventTime": iso_time(event.time),
            "eventSource": event.source,
            "eventName": event.action.split(":", 1)[1],
            "awsRegion": self._region,
            "sourceIPAddress": event.source_ip,
            "userAgent": event.user_agent,
            "requestParameters": event.parameters,
            "responseElements": None if event.status is None else {"statusCode": event.status},
            "requestID": event.request_id,
            "eventID": event.event_id or str(uuid.uuid4()),
            "readOnly": False,
            "resources": [
                {
                    "accountId": self._account,
                    "type": event.resource_type,
                    "ARN": event.resource,
                }
            ],
            "eventType": "AwsApiCall",
            "managementEvent": False,
            "recipientAccountId": self._account,
            "eventCategory": "Data",
        }
        if event.error_code is not None:
            document["errorCode"] = event.error_code
            document["errorMessage"] = event.error_message
        return document, _username(event.principal)

    def append(self, document: dict[str, Any], username: str | None) -> None:
        """Append a management event's record, or keep it for later if there is no space."""
        self._append_batch([(document, username)], may_wait=True)

    async def append_async(self, document: dict[str, Any], username: str | None) -> None:
        """Append with group commit: records that arrive together share one transaction and
        one sync, and each caller returns only once its record is durable."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def durable(error: Exception | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, done, error)

        self.append_then(document, username, durable)
        await done

    def append_then(
        self,
        document: dict[str, Any],
        username: str | None,
        durable: Durable,
        stored_elsewhere: bool = False,
    ) -> None:
        """Queue the record for the writer thread; ``durable`` runs there after it."""
        self._start_writer()
        self._queue.put((document, username, durable, stored_elsewhere))

    def drain(self, timeout: float = 10.0) -> None:
        """Write every record queued so far, and return once written: at shutdown, since the
        writer is a daemon thread that exiting would cut short."""
        if self._writer is None:
            return
        written = threading.Event()
        self._queue.put((None, None, lambda _error: written.set(), False))
        if not written.wait(timeout):
            log.warning("audit records still queued after %.0f s at shutdown", timeout)

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_forever, daemon=True)
            self._writer.start()

    def _write_forever(self) -> None:
        """The writer thread: a batch is whatever queued while the previous one was written,
        with the records stored elsewhere that waited up to STORED_ELSEWHERE_WAIT."""
        waiting: list[_Queued] = []
        deadline = 0.0
        while True:
            try:
                # Idle, it wakes now and then for a backlog (``append`` does not wake it).
                timeout = (
                    max(0.0, deadline - time.monotonic()) if waiting else BACKLOG_RETRY_SECONDS
                )
                arrived = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                arrived = []
            while not self._queue.empty():
                arrived.append(self._queue.get_nowait())
            can_wait = [item for item in arrived if item[3]]
            if can_wait and not waiting:
                deadline = time.monotonic() + STORED_ELSEWHERE_WAIT
            waiting += can_wait
            urgent = [item for item in arrived if not item[3]]
            if not urgent and time.monotonic() < deadline:
                continue
            batch, waiting = waiting + urgent, []
            if batch or self._backlog:
                self._write_batch(batch)

    def _write_batch(self, batch: list[_Queued]) -> None:
        error: Exception | None = None
        entries = [(document, username) for document, username, *_ in batch if document]
        try:
            if entries or self._backlog:
                self._append_batch(entries)
        except Exception as exc:  # every waiter learns its record was not written
            error = exc
        for _, _, durable, _ in batch:
            try:
                durable(error)
            except Exception:  # the writer thread must outlive any one caller
                log.exception("a caller failed to take the news of its audit record")

    def _append_batch(
        self, entries: list[tuple[dict[str, Any], str | None]], may_wait: bool = False
    ) -> None:
        """Append the backlog, then ``entries``; ``may_wait``: keep them in the backlog if
        there is no space (otherwise the error is raised)."""
        with self._lock:
            if self._head_unsure:
                self._head = self._last_link()
                self._head_unsure = False
                self._write_head()
            seq, prev = self._head
            rows = []
            for document, username in self._backlog + entries:
                seq += 1
                row = self._row(seq, prev, document, username)
                rows.append(row)
                prev = row["hash"]
            # A plain connection, not an ORM session: with a data event per MLflow write, the
            # session's cost would show in the gateway's.
            order = self._insert_order
            params = rows if order is None else [tuple(row[k] for k in order) for row in rows]
            try:
                with self._engine.begin() as connection:
                    connection.exec_driver_sql(self._insert_sql, params)
            except Exception as error:
                if database_unavailable(error):
                    self._head_unsure = True
                if not (may_wait and storage_full(error) and len(self._backlog) < BACKLOG_LIMIT):
                    raise
                if not self._backlog:
                    log.warning("the storage is full: audit records wait in memory for space")
                self._backlog += entries
                self._start_writer()
                return
            if self._backlog:
                log.info("%d audit records that waited for space are written", len(self._backlog))
                self._backlog = []
            self._head = (seq, prev)
            self._write_head()

    def _last_link(self) -> tuple[int, str]:
        """The number and hash of the last record in the database."""
        with self._engine.connect() as connection:
            last = connection.execute(
                select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
            ).first()
        return (last.seq, last.hash) if last else (0, GENESIS)

    def _row(
        self, seq: int, prev: str, document: dict[str, Any], username: str | None
    ) -> dict[str, Any]:
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
        first = document["resources"][0] if document["resources"] else {}
        return {
            "seq": seq,
            "event_id": document["eventID"],
            "event_time": _epoch(document["eventTime"]),
            "event_source": document["eventSource"],
            "event_name": document["eventName"],
            "event_category": document["eventCategory"],
            "read_only": document["readOnly"],
            "username": username,
            "access_key_id": document["userIdentity"].get("accessKeyId"),
            "resource_type": first.get("type"),
            "resource_name": first.get("ARN"),
            "document": text,
            "prev_hash": prev,
            "hash": self._link(prev, text),
        }

    def _link(self, prev: str, document: str) -> str:
        return hmac.new(self._key, f"{prev}\n{document}".encode(), hashlib.sha256).hexdigest()

    def _write_head(self) -> None:
        # Overwritten in place with one small fixed-size write: a temp file and a rename per
        # batch cost more than the records themselves on a busy gateway.
        seq, link = self._head
        if self._head_fd is None:
            self._head_fd = os.open(self._head_file, os.O_WRONLY | os.O_CREAT, 0o600)
        text = json.dumps({"seq": seq, "hash": link}).ljust(_HEAD_SIZE).encode()
        os.pwrite(self._head_fd, text, 0)

    # --- reading -----------------------------------------------------------------------------

    def knows(self, event_id: str) -> bool:
        with self._engine.connect() as connection:
            found = connection.execute(
                select(AuditRecord.seq).where(AuditRecord.event_id == event_id)
            ).first()
        return found is not None

    def lookup(self, req: shapes.LookupEventsRequest) -> shapes.LookupEventsResponse:
        """LookupEvents: newest first, one lookup attribute, a time range, paging."""
        query = select(AuditRecord).order_by(AuditRecord.seq.desc())
        attributes = req.get("LookupAttributes", [])
        if len(attributes) > 1:
            raise InvalidLookupAttributesException(
                "You cannot specify more than one lookup attribute."
            )
        for attribute in attributes:
            key, value = attribute["AttributeKey"], attribute["AttributeValue"]
            if key == "ReadOnly":
                if value not in ("true", "false"):
                    raise InvalidLookupAttributesException("ReadOnly must be true or false.")
                query = query.where(AuditRecord.read_only.is_(value == "true"))
            else:
                query = query.where(LOOKUP_COLUMNS[key] == value)
        start, end = req.get("StartTime"), req.get("EndTime")
        if start is not None and end is not None and start > end:
            raise InvalidTimeRangeException("StartTime must be earlier than EndTime.")
        if start is not None:
            query = query.where(AuditRecord.event_time >= start.timestamp())
        if end is not None:
            query = query.where(AuditRecord.event_time <= end.timestamp())
        events, token = page_before(
            self._sessions, query, req, LOOKUP_PAGING, AuditRecord.seq, _lookup_event
        )
        out: shapes.LookupEventsResponse = {"Events": events}
        if token is not None:
            out["NextToken"] = token
        return out

    def records(self) -> Iterator[AuditRecord]:
        with self._sessions() as session:
            yield from session.scalars(
                select(AuditRecord).order_by(AuditRecord.seq).execution_options(yield_per=500)
            )

    def verify(self) -> Verification:
        """Walk the chain from the first record: where it breaks, say what happened there."""
        result = Verification()
        expected_seq, prev = 1, GENESIS
        for row in self.records():
            if row.seq != expected_seq:
                result.problems.append(
                    f"records {expected_seq}..{row.seq - 1} are missing (removed)"
                )
            if row.prev_hash != prev:
                result.problems.append(
                    f"record {row.seq} does not follow the record before it "
                    "(records removed, inserted or reordered)"
                )
            if not hmac.compare_digest(row.hash, self._link(row.prev_hash, row.document)):
                result.problems.append(f"record {row.seq} was altered (its hash does not match)")
            elif _columns_disagree(row):
                result.problems.append(
                    f"record {row.seq} was altered (its lookup columns differ from its document)"
                )
            result.records += 1
            expected_seq, prev = row.seq + 1, row.hash
        result.head = prev
        head = self._read_head()
        if head is not None and (head["seq"], head["hash"]) != (expected_seq - 1, prev):
            result.problems.append(
                f"the trail ends at record {expected_seq - 1} but {self._head_file.name} says "
                f"{head['seq']}: the most recent records were removed or replaced"
            )
        return result

    def _read_head(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._head_file.read_text().strip()))
        except FileNotFoundError:
            return None

    def export(self, folder: Path) -> list[Path]:
        """CloudTrail's log-file layout: one gzipped {"Records": [...]} per hour of events."""
        by_hour: dict[str, list[dict[str, Any]]] = {}
        for row in self.records():
            hour = datetime.fromtimestamp(row.event_time, UTC).strftime("%Y/%m/%d/%Y%m%dT%H00Z")
            by_hour.setdefault(hour, []).append(json.loads(row.document))
        written = []
        for hour, records in by_hour.items():
            day, stamp = hour.rsplit("/", 1)
            path = (
                folder
                / "AWSLogs"
                / self._account
                / "CloudTrail"
                / self._region
                / day
                / f"{self._account}_CloudTrail_{self._region}_{stamp}_mlfleet.json.gz"
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(log_file(records))
            written.append(path)
        return written


def log_file(records: Iterable[Mapping[str, Any]]) -> bytes:
    """The body of a CloudTrail log file: the records as gzipped ``{"Records": [...]}``."""
    return gzip.compress(json.dumps({"Records": list(records)}).encode())


def _columns_disagree(row: AuditRecord) -> bool:
    document: dict[str, Any] = json.loads(row.document)
    return (
        document.get("eventID") != row.event_id
        or document.get("eventName") != row.event_name
        or document.get("eventSource") != row.event_source
        or document.get("readOnly") != row.read_only
        or document["userIdentity"].get("accessKeyId") != row.access_key_id
    )


def _lookup_event(row: AuditRecord) -> shapes.Event:
    event: shapes.Event = {
        "EventId": row.event_id,
        "EventName": row.event_name,
        "ReadOnly": "true" if row.read_only else "false",
        "EventTime": datetime.fromtimestamp(row.event_time, UTC),
        "EventSource": row.event_source,
        "CloudTrailEvent": row.document,
        "Resources": [
            {"ResourceType": r.get("type"), "ResourceName": r.get("ARN")}
            for r in json.loads(row.document).get("resources", [])
        ],
    }
    if row.access_key_id:
        event["AccessKeyId"] = row.access_key_id
    if row.username:
        event["Username"] = row.username
    return event


def open_trail(settings: Settings, sessions: sessionmaker[Session], box: SecretBox) -> AuditTrail:
    return AuditTrail(
        sessions,
        box.derive("audit-trail"),
        settings.data_dir / "audit.head",
        settings.account_id,
        settings.region,
    )
