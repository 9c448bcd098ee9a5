-- The benchq job queue. The state machine these tables hold is described in
-- docs/state-machine.md; every transition is one guarded statement in
-- coordinator/src/queue.rs.

CREATE TABLE jobs (
    id                  uuid        PRIMARY KEY,
    -- Insertion order: Lease hands out the oldest queued job first.
    seq                 bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- The batch (called job_id by the tools that drive benchmarks).
    batch_id            uuid        NOT NULL,
    -- Position of the job within its batch.
    position            integer     NOT NULL CHECK (position >= 0),
    tenant_id           text        NOT NULL,
    scenario_id         text        NOT NULL CHECK (scenario_id <> ''),
    model               text        NOT NULL,
    provider            text        NOT NULL,
    mcp_server          text        NOT NULL,
    tool_server         text        NOT NULL,
    tool_server_version text        NOT NULL,
    skill_file          text        NOT NULL,
    skill_id            text        NOT NULL,
    skill_version       text        NOT NULL,
    skill_source        text        NOT NULL,
    skill_sha256        text        NOT NULL,
    namespace_slot      integer     NOT NULL CHECK (namespace_slot >= 0),
    parallel            integer     NOT NULL CHECK (parallel >= 1),
    max_attempts        integer     NOT NULL CHECK (max_attempts >= 1),
    -- How long one attempt may run.
    timeout_seconds     integer     NOT NULL CHECK (timeout_seconds >= 1),

    state               text        NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'passed', 'failed', 'errored',
                                         'cancelled')),
    -- Attempts used so far; the running attempt when state = 'running'. An
    -- interrupted attempt (agent shut down) gives its attempt back.
    attempt             integer     NOT NULL DEFAULT 0,
    -- The current lease: set exactly while the job runs.
    lease_token         uuid        UNIQUE,
    leased_at           timestamptz,
    lease_expires_at    timestamptz,
    heartbeat_at        timestamptz,
    -- An operator asked for the job to stop. Stored, so the request survives
    -- restarts and is seen by the agent's next heartbeat.
    cancel_requested_at timestamptz,

    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,

    CHECK (namespace_slot < parallel),
    CHECK (attempt >= 0 AND attempt <= max_attempts),
    CHECK ((state = 'running') = (lease_token IS NOT NULL)),
    CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)),
    CHECK ((state = 'running') = (leased_at IS NOT NULL)),
    CHECK ((state IN ('passed', 'failed', 'errored', 'cancelled')) = (finished_at IS NOT NULL)),
    UNIQUE (batch_id, position)
);

-- Never two running jobs in one namespace of one tenant, whoever asks.
CREATE UNIQUE INDEX jobs_one_running_per_slot
    ON jobs (tenant_id, namespace_slot) WHERE state = 'running';

-- Lease: the oldest queued job of a slot.
CREATE INDEX jobs_queued_by_slot ON jobs (namespace_slot, seq) WHERE state = 'queued';

CREATE INDEX jobs_by_batch ON jobs (batch_id, position);

-- The reaper: running jobs by lease expiry.
CREATE INDEX jobs_running_by_expiry ON jobs (lease_expires_at) WHERE state = 'running';

-- One row per lease handed out: who ran the job, when, and how it ended.
CREATE TABLE attempts (
    lease_token  uuid        PRIMARY KEY,
    job_id       uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- The job's attempt number for this lease. An interrupted lease gives its
    -- number back, so the next lease has the same one.
    attempt      integer     NOT NULL CHECK (attempt >= 1),
    agent_id     text        NOT NULL,
    -- The credential that took the lease (empty without authentication):
    -- only it may heartbeat or complete the lease.
    credential   text        NOT NULL DEFAULT '',
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text        CHECK (outcome IN ('PASSED', 'FAILED', 'ERROR', 'CANCELLED',
                                                'INTERRUPTED', 'RECLAIMED')),
    exit_code    integer,
    duration_ms  bigint      CHECK (duration_ms >= 0),
    error        text,
    output_tail  text,
    metrics      jsonb,
    CHECK ((outcome IS NULL) = (finished_at IS NULL))
);

CREATE INDEX attempts_by_job ON attempts (job_id, started_at);

-- A job has at most one attempt in progress: the one of its current lease.
CREATE UNIQUE INDEX attempts_one_open_per_job ON attempts (job_id) WHERE outcome IS NULL;
