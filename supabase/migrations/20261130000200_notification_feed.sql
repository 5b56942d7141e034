-- The read side's commit-ordered cursor. Every row records the id of the transaction that
-- inserted it (tx). A reader only hands out rows whose tx is below the xmin of its snapshot:
-- every transaction below xmin has ended, so no row can later appear below that point. Rows are
-- ordered by (tx, id); that order never changes once a row is handed out, whatever order
-- concurrent writers commit in. See docs/realtime.md.
ALTER TABLE public.user_notifications
  ADD COLUMN IF NOT EXISTS tx xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE INDEX IF NOT EXISTS user_notifications_feed_idx
  ON public.user_notifications (tx, id);
CREATE INDEX IF NOT EXISTS user_notifications_recipient_feed_idx
  ON public.user_notifications (recipient_id, tx, id) WHERE visibility = 'direct';
CREATE INDEX IF NOT EXISTS user_notifications_sender_feed_idx
  ON public.user_notifications (sender_id, tx, id);
CREATE INDEX IF NOT EXISTS user_notifications_broadcast_feed_idx
  ON public.user_notifications (tx, id) WHERE visibility = 'broadcast';

-- The signal now also names the inserting transaction, so a reader that finds the rows not yet
-- final (an older transaction still open) knows to look again.
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
      json_build_object(
        'first_id', first_id, 'last_id', last_id, 'count', n,
        'tx', pg_current_xact_id()::text
      )::text
    );
  END IF;
  RETURN NULL;
END
$$;

-- How far each user has read (POST /api/v1/notifications/read), as a cursor.
CREATE TABLE IF NOT EXISTS public.notification_reads (
  user_id    uuid        PRIMARY KEY,
  tx         xid8        NOT NULL,
  id         bigint      NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE public.notification_reads ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS notification_reads_own ON public.notification_reads;
CREATE POLICY notification_reads_own ON public.notification_reads
  FOR SELECT TO authenticated USING (user_id = auth.uid());
GRANT SELECT ON public.notification_reads TO authenticated;
GRANT ALL ON public.notification_reads TO service_role;
