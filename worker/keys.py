"""Redis key names, item states and how internal states show to users.

Every key rcbatch writes is named here, so a newcomer can list what lives in Redis:

    rcb:batch:{bid}            HASH  the batch record (name, state, total, bucket_url, ...)
    rcb:batch:{bid}:order      LIST  item ids in input order (the manifest's order)
    rcb:batch:{bid}:pending    LIST  item ids waiting for a submission slot
    rcb:batch:{bid}:counts     HASH  public state -> number of items
    rcb:batch:{bid}:manifest_pending  STR  held while a debounced manifest refresh is on its way
    rcb:item:{bid}:{iid}       HASH  one item (see worker/state.py for its fields)
    rcb:active                 ZSET  batches that are not finished, by creation time
    rcb:batches                ZSET  every batch, by creation time
    rcb:names                  HASH  batch name -> batch id (so a name resumes its batch)
    rcb:due                    ZSET  "{bid}/{iid}" -> time by which its next step is overdue
    rcb:inflight               ZSET  "{bid}/{iid}" -> lease expiry of its in-flight slot
    rcb:polls                  ZSET  "{seq} {bid}/{iid}" -> time its next poll is planned for
    rcb:round:{tick}           STR   held while a round of that tick is on its way
    rcb:rate                   HASH  the shared submit token bucket
    rcb:cooldown               STR   submissions wait until this time (after a 429)
    rcb:durations:{model}      LIST  recent remote job durations, for poll pacing
    rcb:refill-times:{model}   LIST  recent times from a freed slot's job end to the end of
                                     the refill that took the slot, for poll pacing
    rcb:scout:{model}:{n}      STR   held while a poll asks the API about a model not yet timed
    rcb:scout:{model}:oldest   STR   submission time of the model's oldest job not yet timed
    rcb:untimed-by-age:{model} ZSET  "{bid}/{iid}" -> submission time, waiting for the timing
    rcb:tokens                 STR   counter for dispatch tokens
    rcb:clock                  STR   lease of the worker that is the cluster's clock now (its
                                     token: host:pid:random; worker/lease.py, worker/tasks.py)
    rcb:schedule:{name}:since  STR   when a recurring run was first seen (worker/schedules.py)
    rcb:schedule:{name}:{time} STR   taken by the one run of that firing
    rcb:tombstone:{bid}        HASH  what is left of a finished batch once its records expire
                                     (worker/retention.py); expires TOMBSTONE_KEEP later
    rcb:retention:sweep        STR   held for an hour by the process that swept for batches
                                     finished without an expiry (worker/retention.py)
"""

from __future__ import annotations

PREFIX = "rcb"
ACTIVE = f"{PREFIX}:active"
BATCHES = f"{PREFIX}:batches"
NAMES = f"{PREFIX}:names"
DUE = f"{PREFIX}:due"
INFLIGHT = f"{PREFIX}:inflight"
POLLS = f"{PREFIX}:polls"
RATE = f"{PREFIX}:rate"
COOLDOWN = f"{PREFIX}:cooldown"
TOKENS = f"{PREFIX}:tokens"
#: the worker-clock lease: its holder sends the reconcile and schedules nudges
CLOCK = f"{PREFIX}:clock"

# Internal item states, in the order an item moves through them.
PENDING = "pending"            # waiting for a slot
CLAIMED = "claimed"            # holds a slot; a submit task is on its way
SUBMITTING = "submitting"      # the submit HTTP call may be under way (attempt id written)
SUBMITTED = "submitted"        # the API accepted it: request_id known, job queued remotely
RUNNING = "running"            # the remote job is in progress
FETCHING = "fetching"          # the remote job succeeded; outputs are being stored
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
SUBMIT_UNCERTAIN = "submit_uncertain"

TERMINAL = (COMPLETED, FAILED, CANCELLED, SUBMIT_UNCERTAIN)
IN_FLIGHT = (SUBMITTED, RUNNING, FETCHING)

# What `rcbatch status` shows for each internal state (CONTRACT.md's seven counts).
PUBLIC_STATE = {
    PENDING: "pending", CLAIMED: "pending", SUBMITTING: "pending",
    SUBMITTED: "submitted", RUNNING: "running", FETCHING: "running",
    COMPLETED: "completed", FAILED: "failed", CANCELLED: "cancelled",
    SUBMIT_UNCERTAIN: "submit_uncertain",
}
PUBLIC_STATES = ("pending", "submitted", "running", "completed", "failed", "cancelled",
                 "submit_uncertain")
PUBLIC_TERMINAL = ("completed", "failed", "cancelled", "submit_uncertain")

# Batch states.
BATCH_SCHEDULED = "scheduled"
BATCH_RUNNING = "running"
BATCH_PAUSED = "paused"
BATCH_CANCELLED = "cancelled"
BATCH_FINISHED = "finished"

# Why a paused batch is paused (its `pause_kind`): `rcbatch run` exits 3 on an outage.
PAUSE_OUTAGE = "outage"      # the API or the bucket could not be reached (worker/runtime.py)
PAUSE_ACCOUNT = "account"    # the API refused the token or the account
PAUSE_BUDGET = "budget"      # the batch's cost cap is reached


def batch(bid: str) -> str:
    """The batch record's key."""
    return f"{PREFIX}:batch:{bid}"


def order(bid: str) -> str:
    """The list of a batch's item ids in input order."""
    return f"{PREFIX}:batch:{bid}:order"


def pending(bid: str) -> str:
    """The list of a batch's items waiting for a slot."""
    return f"{PREFIX}:batch:{bid}:pending"


def counts(bid: str) -> str:
    """The hash of a batch's counts per public state."""
    return f"{PREFIX}:batch:{bid}:counts"


def manifest_pending(bid: str) -> str:
    """Held while a running batch's debounced manifest refresh is on its way
    (worker/runtime.py sets it, the manifest task clears it)."""
    return f"{PREFIX}:batch:{bid}:manifest_pending"


def item(bid: str, iid: str) -> str:
    """One item's record."""
    return f"{PREFIX}:item:{bid}:{iid}"


def member(bid: str, iid: str) -> str:
    """How an item is named inside the shared sorted sets (due, inflight)."""
    return f"{bid}/{iid}"


def split_member(value: str) -> tuple[str, str]:
    """The (batch id, item id) of a sorted-set member."""
    bid, _, iid = value.partition("/")
    return bid, iid


def durations(model: str) -> str:
    """Recent durations of a model's remote jobs."""
    return f"{PREFIX}:durations:{model}"


def refill_times(model: str) -> str:
    """Recent refill times of a model's remote jobs (worker/state.py `record_duration`)."""
    return f"{PREFIX}:refill-times:{model}"


def waiting_untimed(model: str) -> str:
    """Items (`bid/iid`) waiting for a model to be timed, scored by submission time: woken
    at once, oldest first, when it is."""
    return f"{PREFIX}:untimed-by-age:{model}"


def scout(model: str, n: int | str) -> str:
    """Scout key `n` of a model: taken (until a time) by a poll that may ask the API about a
    model whose durations are not known yet, or "oldest" (worker/polling.py)."""
    return f"{PREFIX}:scout:{model}:{n}"


def poll_round(tick: int) -> str:
    """Held while the round of a tick is on its way (worker/poll_timer.py)."""
    return f"{PREFIX}:round:{tick}"


def schedule_since(name: str) -> str:
    """When a recurring run was first seen: firings before it are not its to run."""
    return f"{PREFIX}:schedule:{name}:since"


def schedule_run(name: str, stamp: str) -> str:
    """Taken (SET NX) by the one run of a recurring run's firing at `stamp`."""
    return f"{PREFIX}:schedule:{name}:{stamp}"


# --- retention (worker/retention.py) ---------------------------------------------------------
RETENTION_SWEEP = f"{PREFIX}:retention:sweep"


def tombstone(bid: str) -> str:
    """What is left of a finished batch once its records expired: id, name, state, counts,
    total, spend, created, finished, expires_at, manifest (worker/retention.py)."""
    return f"{PREFIX}:tombstone:{bid}"
