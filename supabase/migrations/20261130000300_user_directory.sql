-- The people a user can address a direct message to: everyone who has signed in, with the e-mail
-- of their last sign-in. Filled from the identity.login notifications the notification-writer
-- inserts (a sign-up signs in too), so it needs no access to the identity provider's own store
-- and works the same with Kratos locally and with Supabase Auth. The gateway serves it as
-- GET /api/v1/users?q= to signed-in users.
CREATE TABLE IF NOT EXISTS public.user_directory (
  user_id         uuid        PRIMARY KEY,
  email           text        NOT NULL,
  first_seen_at   timestamptz NOT NULL DEFAULT now(),
  last_sign_in_at timestamptz NOT NULL DEFAULT now()
);

-- Prefix search on the e-mail, case-insensitive.
CREATE INDEX IF NOT EXISTS user_directory_email_idx
  ON public.user_directory (lower(email) text_pattern_ops);

CREATE OR REPLACE FUNCTION public.user_directory_record_sign_in() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  address text := NULLIF(btrim(NEW.payload->>'email'), '');
BEGIN
  IF NEW.recipient_id IS NOT NULL AND address IS NOT NULL THEN
    INSERT INTO public.user_directory AS d (user_id, email)
    VALUES (NEW.recipient_id, address)
    ON CONFLICT (user_id) DO UPDATE
      SET email = EXCLUDED.email, last_sign_in_at = now();
  END IF;
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION public.user_directory_record_sign_in() FROM PUBLIC;

-- Per row, but only login rows reach the function: the WHEN clause is evaluated without a call,
-- so message and media rows pay nothing measurable.
DROP TRIGGER IF EXISTS user_directory_sign_in ON public.user_notifications;
CREATE TRIGGER user_directory_sign_in
  AFTER INSERT ON public.user_notifications
  FOR EACH ROW WHEN (NEW.event_type = 'identity.login')
  EXECUTE FUNCTION public.user_directory_record_sign_in();

-- Users who signed in before this migration.
INSERT INTO public.user_directory (user_id, email, first_seen_at, last_sign_in_at)
SELECT DISTINCT ON (recipient_id) recipient_id, btrim(payload->>'email'), created_at, created_at
FROM public.user_notifications
WHERE event_type = 'identity.login' AND recipient_id IS NOT NULL
  AND NULLIF(btrim(payload->>'email'), '') IS NOT NULL
ORDER BY recipient_id, id DESC
ON CONFLICT (user_id) DO NOTHING;

-- On Supabase the browser may read it directly, like the seed's front end reads its tables.
ALTER TABLE public.user_directory ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS user_directory_signed_in ON public.user_directory;
CREATE POLICY user_directory_signed_in ON public.user_directory
  FOR SELECT TO authenticated USING (true);
GRANT SELECT ON public.user_directory TO authenticated;
GRANT ALL ON public.user_directory TO service_role;
