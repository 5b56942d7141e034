-- Media saga progress: when the upload URL expires, when the upload and the permanent object
-- arrived (the move saga joins the two), and the states a saga can be in. `signed` and
-- `received` are in flight; `rejected`, `confirmed`, `expired` and `failed` are terminal.

ALTER TABLE public.media_sagas
  ADD COLUMN IF NOT EXISTS expires_at  timestamptz,
  ADD COLUMN IF NOT EXISTS received_at timestamptz,
  ADD COLUMN IF NOT EXISTS ready_at    timestamptz,
  ADD COLUMN IF NOT EXISTS finished_at timestamptz;

ALTER TABLE public.media_sagas DROP CONSTRAINT IF EXISTS media_sagas_state_check;
ALTER TABLE public.media_sagas ADD CONSTRAINT media_sagas_state_check
  CHECK (state IN ('signed', 'rejected', 'received', 'confirmed', 'expired', 'failed'));

-- The deployment a deadline belongs to (media-saga's `topic_prefix`): instances sharing a
-- database but not topics fire only their own deadlines.
ALTER TABLE public.media_deadlines ADD COLUMN IF NOT EXISTS scope text NOT NULL DEFAULT '';
DROP INDEX IF EXISTS public.media_deadlines_due_idx;
CREATE INDEX IF NOT EXISTS media_deadlines_scope_due_idx ON public.media_deadlines (scope, due_at)
  WHERE fired_at IS NULL;

CREATE INDEX IF NOT EXISTS media_sagas_user_idx ON public.media_sagas (user_id, created_at);
