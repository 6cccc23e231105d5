"""The job store in Redis: the job state machine (written once, here), the queue, leases, progress and previews.

Keys (all under the configured prefix): ``job:{id}`` hash (state, spec, progress), ``job:{id}:loss`` list,
``job:{id}:logs`` list, ``job:{id}:preview:{channel}`` PNG bytes, ``job:{id}:channels``, ``job:{id}:positions``
and ``job:{id}:frames`` JSON (the live view), ``job:{id}:lease`` (expires unless a worker
renews it), ``job:{id}:cancel`` flag, ``state:{state}`` sets, ``jobs`` zset by creation time, ``queue``
list of queued ids, ``worker:{name}`` (expires) and the ``workers`` zset of their expiry times.
Every change is published on the ``job:{id}:events`` channel as JSON.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import redis

from workers.atomic import remove_temporary
from workers.job import JobSpec


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
ViewPart = Literal["positions", "frames"]
LOG_LINES = 1000
STORE_TIMEOUT_S = 10.0  # a store call that hangs (a stopped server, a partition) fails after this, never blocks
DOORBELL_RINGS = 100  # the doorbell list wakes idle workers; longer than this it only repeats itself

# The state machine's steps, each one Lua script (atomic in Redis). Keys are built from the prefix (ARGV[1])
# as ``JobStore.key`` builds them; ``move`` changes a job's state, its state sets, its log and publishes.
_LUA_LIB = """
local prefix, now, stamp, log_lines = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local function job_key(id, ...)
  local key = prefix .. 'job:' .. id
  for _, part in ipairs({...}) do key = key .. ':' .. part end
  return key
end
local function log(id, line)
  redis.call('RPUSH', job_key(id, 'logs'), stamp .. ' ' .. line)
  redis.call('LTRIM', job_key(id, 'logs'), -log_lines, -1)
end
local function move(id, cur, to, message)
  redis.call('HSET', job_key(id), 'state', to, 'message', message, 'updated', now)
  redis.call('SREM', prefix .. 'state:' .. cur, id)
  redis.call('SADD', prefix .. 'state:' .. to, id)
  redis.call('PUBLISH', job_key(id, 'events'), cjson.encode({event='state', state=to, message=message}))
  local line = 'state ' .. cur .. ' -> ' .. to
  if message ~= '' then line = line .. ': ' .. message end
  log(id, line)
end
local function start(id, cur, worker, lease_ms)
  redis.call('SET', job_key(id, 'lease'), worker, 'PX', lease_ms)
  redis.call('HSET', job_key(id), 'worker', worker)
  move(id, cur, 'running', 'claimed by ' .. worker)
end
"""

# ARGV[5..]: job id, to, message, allowed-from states...  ->  'missing' | 'ok:<old>' | 'refused:<old>'
_TRANSITION = """
local id, to, message = ARGV[5], ARGV[6], ARGV[7]
local cur = redis.call('HGET', job_key(id), 'state')
if not cur then return 'missing' end
for i = 8, #ARGV do
  if ARGV[i] == cur then move(id, cur, to, message) return 'ok:' .. cur end
end
return 'refused:' .. cur
"""

# ARGV[5..]: worker, lease ms, devices the worker offers...  ->  the id of the oldest queued job the worker can
# run (device auto or cpu, or one it offers), now running under its lease; or false. Stale entries are dropped.
_CLAIM = """
local worker, lease_ms = ARGV[5], ARGV[6]
local offered = {auto=true, cpu=true}
for i = 7, #ARGV do offered[ARGV[i]] = true end
local queue = prefix .. 'queue'
for _, id in ipairs(redis.call('LRANGE', queue, 0, -1)) do
  local cur, device = unpack(redis.call('HMGET', job_key(id), 'state', 'device'))
  if cur ~= 'queued' then
    redis.call('LREM', queue, 1, id)
  elseif offered[device or 'auto'] then
    redis.call('LREM', queue, 1, id)
    start(id, cur, worker, lease_ms)
    return id
  end
end
return false
"""

# ARGV[5..]: job id, worker, lease ms  ->  'missing' | 'taken' | 'held:<worker>' | 'refused:<state>'
_TAKE = """
local id, worker, lease_ms = ARGV[5], ARGV[6], ARGV[7]
local cur = redis.call('HGET', job_key(id), 'state')
if not cur then return 'missing' end
if cur == 'queued' then
  redis.call('LREM', prefix .. 'queue', 0, id)
  start(id, cur, worker, lease_ms)
  return 'taken'
end
if cur == 'running' then return 'held:' .. (redis.call('HGET', job_key(id), 'worker') or '') end
return 'refused:' .. cur
"""

# ARGV[5]: job id  ->  'missing' | 'queued' (now cancelled) | 'running' (its worker is asked to stop) | 'final:<state>'
_CANCEL = """
local id = ARGV[5]
local cur = redis.call('HGET', job_key(id), 'state')
if not cur then return 'missing' end
if cur == 'queued' then
  redis.call('LREM', prefix .. 'queue', 0, id)
  move(id, cur, 'cancelled', 'cancelled while queued')
  return cur
end
if cur == 'running' then
  redis.call('SET', job_key(id, 'cancel'), 1)
  log(id, 'cancel requested')
  return cur
end
return 'final:' .. cur
"""


# ARGV[5..]: job id, the terminal states (space-separated), the suffixes of the job's other keys...
#   ->  'missing' | 'ok' (the job and its keys are gone) | 'refused:<state>' (it has not ended) | 'leased' (it has
#   ended, but its worker still holds the lease: it may still write)
_FORGET = """
local id, terminal = ARGV[5], ' ' .. ARGV[6] .. ' '
local cur = redis.call('HGET', job_key(id), 'state')
if not cur then return 'missing' end
if not string.find(terminal, ' ' .. cur .. ' ', 1, true) then return 'refused:' .. cur end
if redis.call('EXISTS', job_key(id, 'lease')) == 1 then return 'leased' end
for i = 7, #ARGV do redis.call('DEL', job_key(id, ARGV[i])) end
redis.call('DEL', job_key(id))
redis.call('SREM', prefix .. 'state:' .. cur, id)
redis.call('ZREM', prefix .. 'jobs', id)
return 'ok'
"""
JOB_KEYS = ("loss", "logs", "lease", "cancel", "channels", "positions", "frames")
"""Suffixes of a job's keys besides its hash and its preview images (``preview:<channel>``)."""


class JobNotFound(KeyError):
    """No job with this id."""


class TransitionError(RuntimeError):
    """The state machine does not allow this change (e.g. cancelling a finished job)."""


class JobStore:
    """Jobs in Redis; safe to share between threads and processes (every change is one atomic step)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r, self.prefix = client, prefix
        self._scripts = {
            name: client.register_script(_LUA_LIB + body)
            for name, body in (
                ("transition", _TRANSITION),
                ("claim", _CLAIM),
                ("take", _TAKE),
                ("cancel", _CANCEL),
                ("forget", _FORGET),
            )
        }

    @classmethod
    def connect(cls, url: str, prefix: str) -> JobStore:
        return cls(redis.Redis.from_url(url, socket_timeout=STORE_TIMEOUT_S, socket_connect_timeout=2.0), prefix)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def channel(self, job_id: str) -> str:
        return self.key("job", job_id, "events")

    def _run(self, script: str, *args: str | float | int) -> str | None:
        """Run one of the state machine's Lua scripts (their common arguments first); its reply as text."""
        common = (self.prefix, time.time(), time.strftime("%Y-%m-%dT%H:%M:%S"), LOG_LINES)
        out = self._scripts[script](keys=[], args=[*common, *args])
        return None if out is None else out.decode()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex[:12]

    def create(self, *, spec: JobSpec, job_id: str | None = None) -> str:
        """Store a queued job and put it on the queue; returns its id."""
        job_id = job_id or self.new_id()
        now = time.time()
        fields = {
            "id": job_id,
            "state": JobState.QUEUED.value,
            "spec": spec.model_dump_json(),
            "device": spec.device,
            "created": now,
            "updated": now,
            "message": "",
            "iteration": 0,
            "total_iterations": 0,
            "frames_received": 0,
            "frames_used": 0,
        }
        pipe = self.r.pipeline()
        pipe.hset(self.key("job", job_id), mapping=fields)
        pipe.sadd(self.key("state", JobState.QUEUED.value), job_id)
        pipe.zadd(self.key("jobs"), {job_id: now})
        pipe.rpush(self.key("queue"), job_id)
        pipe.rpush(self.key("doorbell"), 1)
        pipe.ltrim(self.key("doorbell"), -DOORBELL_RINGS, -1)
        pipe.execute()
        return job_id

    def get(self, job_id: str) -> dict[str, str]:
        raw = self.r.hgetall(self.key("job", job_id))
        if not raw:
            raise JobNotFound(job_id)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def get_many(self, job_ids: list[str]) -> list[dict[str, str]]:
        """The jobs ``job_ids`` in one round trip (ids that no longer exist are left out)."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.key("job", job_id))
        return [{k.decode(): v.decode() for k, v in raw.items()} for raw in pipe.execute() if raw]

    def spec(self, job_id: str) -> JobSpec:
        return JobSpec.model_validate_json(self.get(job_id)["spec"])

    def ids(self, *, state: JobState | None = None, limit: int = 100) -> list[str]:
        """Newest first; only jobs in ``state`` if given (at most ``limit`` >= 1)."""
        last = limit - 1 if state is None else -1  # without a filter only the newest ``limit`` are read
        newest = [i.decode() for i in self.r.zrevrange(self.key("jobs"), 0, last)]
        if state is not None:
            members = {m.decode() for m in self.r.smembers(self.key("state", state.value))}
            newest = [i for i in newest if i in members]
        return newest[:limit]

    def transition(self, job_id: str, *, to: JobState, message: str = "") -> JobState:
        """Move a job to ``to`` if the state machine allows it from its current state; returns the old state."""
        allowed = [s.value for s, nxt in TRANSITIONS.items() if to in nxt]
        out = self._run("transition", job_id, to.value, message, *allowed)
        if out == "missing":
            raise JobNotFound(job_id)
        verdict, _, old = str(out).partition(":")
        if verdict != "ok":
            raise TransitionError(f"job {job_id}: cannot go from {old} to {to.value}")
        return JobState(old)

    def claim(self, *, worker: str, lease_s: float, timeout_s: float, devices: Sequence[str] = ("cpu",)) -> str | None:
        """Take the oldest queued job that ``worker`` can run (its device ``auto``, ``cpu`` or one of ``devices``)
        and mark it running under the worker's lease, in one atomic step; waits up to ``timeout_s`` for a job to
        be queued (the ``doorbell`` list, rung by ``create``); None if none came. A job for a device this worker
        lacks stays queued for a worker that has it."""
        lease_ms = int(lease_s * 1000)
        job_id = self._run("claim", worker, lease_ms, *devices)
        if job_id is None and self.r.blpop([self.key("doorbell")], timeout=timeout_s) is not None:
            job_id = self._run("claim", worker, lease_ms, *devices)
        return job_id

    def take(self, job_id: str, *, worker: str, lease_s: float) -> None:
        """Claim one named queued job for ``worker`` (a Prefect deployment run given its id), atomically.

        A job already running under ``worker`` (the queue worker that claimed it) is left as is; a job running
        under another worker or already finished is refused (TransitionError)."""
        out = str(self._run("take", job_id, worker, int(lease_s * 1000)))
        if out == "missing":
            raise JobNotFound(job_id)
        verdict, _, detail = out.partition(":")
        if verdict == "held" and detail != worker:
            raise TransitionError(f"job {job_id} is running under worker {detail or '?'}, not {worker}")
        if verdict == "refused":
            raise TransitionError(f"job {job_id} is already {detail}")

    def renew(self, job_id: str, *, worker: str, lease_s: float) -> None:
        self.r.set(self.key("job", job_id, "lease"), worker, px=int(lease_s * 1000))

    def release(self, job_id: str) -> None:
        self.r.delete(self.key("job", job_id, "lease"))

    def reap(self) -> list[str]:
        """Fail every running job whose lease has expired (its worker died), removing the temporaries its worker
        left mid-write; returns their ids."""
        failed = []
        for raw in self.r.smembers(self.key("state", JobState.RUNNING.value)):
            job_id = raw.decode()
            if self.r.exists(self.key("job", job_id, "lease")):
                continue
            spec = self.spec(job_id)
            message = "worker lost: its lease expired without a heartbeat"
            if Path(spec.output).is_file():
                message += f"; partial result kept ({spec.output})"
            if spec.checkpoint and Path(spec.checkpoint).is_file():
                message += f"; resumable checkpoint {spec.checkpoint}"
            try:
                self.transition(job_id, to=JobState.FAILED, message=message)
            except TransitionError:
                continue
            remove_temporary(spec.output)
            if spec.checkpoint:
                remove_temporary(spec.checkpoint)
            failed.append(job_id)
        return failed

    def progress(self, job_id: str, values: Mapping[str, float | int | str], *, loss: float | None = None) -> None:
        """Record progress fields (and append ``loss`` to the curve); publish them."""
        pipe = self.r.pipeline()
        pipe.hset(self.key("job", job_id), mapping={k: v for k, v in values.items()})
        if loss is not None:
            pipe.rpush(self.key("job", job_id, "loss"), loss)
        pipe.publish(self.channel(job_id), json.dumps({"event": "progress", **values}))
        pipe.execute()

    def losses(self, job_id: str) -> list[float]:
        return [float(v) for v in self.r.lrange(self.key("job", job_id, "loss"), 0, -1)]

    def put_preview(
        self,
        job_id: str,
        images: Mapping[str, bytes],
        *,
        iteration: int,
        channels: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Store a preview's PNGs by channel name and, if given, the channels' descriptions (display range,
        colour map, pixel size: ``workers.previews.encode``); publish a ``preview`` event."""
        pipe = self.r.pipeline()
        for kind, data in images.items():
            pipe.set(self.key("job", job_id, "preview", kind), data)
        if channels:
            pipe.set(self.key("job", job_id, "channels"), json.dumps({"iteration": iteration, "channels": channels}))
        pipe.hset(self.key("job", job_id), "preview_iteration", iteration)
        pipe.publish(self.channel(job_id), json.dumps({"event": "preview", "iteration": iteration}))
        pipe.execute()

    def preview(self, job_id: str, kind: str) -> bytes | None:
        data = self.r.get(self.key("job", job_id, "preview", kind))
        return bytes(data) if data is not None else None

    def put_view(self, job_id: str, part: ViewPart, value: Mapping[str, Any]) -> None:
        """Store one part of a job's live view as JSON: its scan ``positions`` or its ``frames`` accounting
        (the reporter writes them at a bounded rate); publish it as an event of that name."""
        body = json.dumps(value)
        pipe = self.r.pipeline()
        pipe.set(self.key("job", job_id, part), body)
        pipe.publish(self.channel(job_id), json.dumps({"event": part, "iteration": value.get("iteration")}))
        pipe.execute()

    def view(self, job_id: str) -> dict[str, Any]:
        """A job's live view: ``channels`` (the latest preview's images), ``positions``, ``frames``; each None
        until first stored."""
        names = ("channels", "positions", "frames")
        raw = self.r.mget([self.key("job", job_id, name) for name in names])
        return {name: None if value is None else json.loads(value) for name, value in zip(names, raw, strict=True)}

    def forget(self, job_id: str) -> None:
        """Delete an ended job and every key it has (its result file is left alone); TransitionError if it has
        not ended or its worker still holds its lease (it may still write: a key written after the delete would
        outlive the job)."""
        channels = (self.view(job_id)["channels"] or {}).get("channels", [])
        previews = {"amplitude", "phase", "probe", *(str(c["name"]) for c in channels)}
        suffixes = [*JOB_KEYS, *(f"preview:{name}" for name in sorted(previews))]
        out = str(self._run("forget", job_id, " ".join(sorted(TERMINAL)), *suffixes))
        if out == "missing":
            raise JobNotFound(job_id)
        if out == "leased":
            raise TransitionError(f"job {job_id} has ended but its worker is still finishing: try again shortly")
        if out != "ok":
            raise TransitionError(f"job {job_id} is {out.removeprefix('refused:')}: only ended jobs can be deleted")

    def log(self, job_id: str, line: str) -> None:
        pipe = self.r.pipeline()
        pipe.rpush(self.key("job", job_id, "logs"), f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}")
        pipe.ltrim(self.key("job", job_id, "logs"), -LOG_LINES, -1)
        pipe.execute()

    def logs(self, job_id: str) -> list[str]:
        return [v.decode() for v in self.r.lrange(self.key("job", job_id, "logs"), 0, -1)]

    def request_cancel(self, job_id: str) -> JobState:
        """Cancel a queued job now, or ask the worker of a running one to stop (it records how the job ended);
        one atomic step, so a job claimed meanwhile is never marked cancelled under a worker that runs it.
        Returns the state the job was in."""
        out = str(self._run("cancel", job_id))
        if out == "missing":
            raise JobNotFound(job_id)
        if out.startswith("final:"):
            raise TransitionError(f"job {job_id} is already {out.removeprefix('final:')}")
        return JobState(out)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(self.key("job", job_id, "cancel")))

    def counts(self) -> dict[JobState, int]:
        return {s: int(self.r.scard(self.key("state", s.value))) for s in JobState}

    def announce(self, name: str, info: Mapping[str, str], *, ttl_s: float) -> None:
        """A worker says it is alive (and what it runs on); forgotten after ``ttl_s`` without a repeat."""
        pipe = self.r.pipeline()
        pipe.set(self.key("worker", name), json.dumps({"name": name, **info}), px=int(ttl_s * 1000))
        pipe.zadd(self.key("workers"), {name: time.time() + ttl_s})
        pipe.execute()

    def workers(self) -> list[dict[str, str]]:
        """Live workers, by name (the ``workers`` zset holds each one's expiry time)."""
        index = self.key("workers")
        self.r.zremrangebyscore(index, "-inf", time.time())
        names = sorted(n.decode() for n in self.r.zrange(index, 0, -1))
        if not names:
            return []
        return [json.loads(v) for v in self.r.mget([self.key("worker", n) for n in names]) if v is not None]

    def queue_depth(self) -> int:
        return int(self.r.llen(self.key("queue")))
