-- The unified notification table every result flow writes to and browsers read (REST and
-- Realtime). event_id is unique: redelivered events are inserted once.
CREATE TABLE IF NOT EXISTS public.user_notifications (
  id           bigserial PRIMARY KEY,
  event_id     uuid        NOT NULL UNIQUE,
  event_type   text        NOT NULL CHECK (event_type ~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$'),
  payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
  visibility   text        NOT NULL CHECK (visibility IN ('broadcast', 'direct')),
  recipient_id uuid,
  sender_id    uuid,
  created_at   timestamptz NOT NULL DEFAULT now(),
  CHECK (visibility = 'broadcast' OR recipient_id IS NOT NULL)
);

CREATE INDEX IF NOT EXISTS user_notifications_recipient_idx
  ON public.user_notifications (recipient_id, id DESC) WHERE visibility = 'direct';
CREATE INDEX IF NOT EXISTS user_notifications_sender_idx
  ON public.user_notifications (sender_id, id DESC);
CREATE INDEX IF NOT EXISTS user_notifications_broadcast_idx
  ON public.user_notifications (id DESC) WHERE visibility = 'broadcast';

-- Row level security: broadcast rows for every authenticated user, direct rows for their
-- sender and recipient only. The service role (and the table owner) bypass it.
ALTER TABLE public.user_notifications ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS user_notifications_read ON public.user_notifications;
CREATE POLICY user_notifications_read ON public.user_notifications
  FOR SELECT TO authenticated
  USING (
    visibility = 'broadcast'
    OR recipient_id = auth.uid()
    OR sender_id = auth.uid()
  );

GRANT SELECT ON public.user_notifications TO authenticated;
GRANT ALL ON public.user_notifications TO service_role;
GRANT USAGE, SELECT ON SEQUENCE public.user_notifications_id_seq TO service_role;

-- Realtime signal: one NOTIFY per inserting statement (not per row, so batched inserts stay
-- cheap) carrying the id range, on channel user_notifications.
CREATE OR REPLACE FUNCTION public.user_notifications_signal() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  first_id bigint;
  last_id  bigint;
  n        bigint;
BEGIN
  SELECT min(id), max(id), count(*) INTO first_id, last_id, n FROM inserted;
  IF n > 0 THEN
    PERFORM pg_notify(
      'user_notifications',
      json_build_object('first_id', first_id, 'last_id', last_id, 'count', n)::text
    );
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS user_notifications_signal ON public.user_notifications;
CREATE TRIGGER user_notifications_signal
  AFTER INSERT ON public.user_notifications
  REFERENCING NEW TABLE AS inserted
  FOR EACH STATEMENT EXECUTE FUNCTION public.user_notifications_signal();

-- Supabase Realtime: publish the table when the publication exists (it does on Supabase).
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime')
     AND NOT EXISTS (
       SELECT 1 FROM pg_publication_tables
       WHERE pubname = 'supabase_realtime' AND schemaname = 'public'
         AND tablename = 'user_notifications'
     ) THEN
    ALTER PUBLICATION supabase_realtime ADD TABLE public.user_notifications;
  END IF;
END
$$;
