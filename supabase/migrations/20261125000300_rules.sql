-- Business rules evaluated by the rule-evaluator. A change is announced on channel
-- rules_changed (the evaluator also resyncs periodically, so a missed notification heals).
-- condition holds the canonical JSON form; condition_text the text form when written as text.
CREATE TABLE IF NOT EXISTS public.rules (
  id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  name           text        NOT NULL UNIQUE,
  description    text,
  enabled        boolean     NOT NULL DEFAULT true,
  topics         text[]      NOT NULL CHECK (cardinality(topics) > 0),
  event_types    text[]      NOT NULL DEFAULT '{}',
  condition      jsonb       NOT NULL,
  condition_text text,
  actions        jsonb       NOT NULL CHECK (jsonb_typeof(actions) = 'array'),
  priority       integer     NOT NULL DEFAULT 0,
  version        integer     NOT NULL DEFAULT 1,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS rules_topics_idx ON public.rules USING gin (topics);

ALTER TABLE public.rules ENABLE ROW LEVEL SECURITY;
GRANT ALL ON public.rules TO service_role;

-- Every update is a new version.
CREATE OR REPLACE FUNCTION public.rules_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.version := OLD.version + 1;
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rules_bump_version ON public.rules;
CREATE TRIGGER rules_bump_version BEFORE UPDATE ON public.rules
  FOR EACH ROW EXECUTE FUNCTION public.rules_bump_version();

CREATE OR REPLACE FUNCTION public.rules_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('rules_changed', coalesce(NEW.id, OLD.id)::text);
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS rules_changed ON public.rules;
CREATE TRIGGER rules_changed AFTER INSERT OR UPDATE OR DELETE ON public.rules
  FOR EACH ROW EXECUTE FUNCTION public.rules_changed();
