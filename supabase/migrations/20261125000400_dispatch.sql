-- The dispatcher's audit log: one row per delivery attempt, success or failure. A request
-- redelivered after a crash is attempted (and logged) again under the same request_id.
CREATE TABLE IF NOT EXISTS public.dispatch_attempts (
  id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  request_id   uuid        NOT NULL,
  event_id     text        NOT NULL,
  rule_id      uuid        NOT NULL,
  rule_version integer     NOT NULL,
  sink         text        NOT NULL,
  target       text        NOT NULL,
  attempt      integer     NOT NULL CHECK (attempt > 0),
  outcome      text        NOT NULL
               CHECK (outcome IN ('delivered', 'retry', 'failed', 'disabled', 'skipped')),
  http_status  integer,
  error        text,
  latency_ms   integer     NOT NULL,
  attempted_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS dispatch_attempts_request_idx ON public.dispatch_attempts (request_id);
CREATE INDEX IF NOT EXISTS dispatch_attempts_rule_time_idx
  ON public.dispatch_attempts (rule_id, attempted_at DESC);

ALTER TABLE public.dispatch_attempts ENABLE ROW LEVEL SECURITY;
GRANT ALL ON public.dispatch_attempts TO service_role;

-- Endpoints the dispatcher stopped sending to (an endpoint answered 410 Gone). Operators
-- re-enable them with `esctl endpoints enable <url>`.
CREATE TABLE IF NOT EXISTS public.dispatch_endpoints (
  url         text        PRIMARY KEY,
  disabled    boolean     NOT NULL DEFAULT true,
  reason      text,
  disabled_at timestamptz,
  updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE public.dispatch_endpoints ENABLE ROW LEVEL SECURITY;
GRANT ALL ON public.dispatch_endpoints TO service_role;
