-- The login loop: when auth.users records a new sign-in, Supabase's pg_net posts the change to
-- the gateway's /webhooks/login. Configure the target once per database:
--   ALTER DATABASE postgres SET substrate.login_webhook_url = 'https://gateway.example/webhooks/login';
--   ALTER DATABASE postgres SET substrate.login_webhook_secret = '<LOGIN_WEBHOOK_SECRET>';
-- Where pg_net or auth.users is missing (vanilla PostgreSQL) the function is installed but no
-- trigger is, and the webhook is called directly by whoever owns sign-in.
CREATE OR REPLACE FUNCTION public.substrate_login_webhook() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  url    text := current_setting('substrate.login_webhook_url', true);
  secret text := current_setting('substrate.login_webhook_secret', true);
BEGIN
  IF url IS NULL OR url = '' THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.last_sign_in_at IS NOT DISTINCT FROM OLD.last_sign_in_at THEN
    RETURN NEW;
  END IF;
  EXECUTE 'SELECT net.http_post(url := $1, body := $2, headers := $3)'
  USING
    url,
    jsonb_build_object(
      'type', TG_OP,
      'table', TG_TABLE_NAME,
      'schema', TG_TABLE_SCHEMA,
      'record', to_jsonb(NEW),
      'old_record', CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) ELSE NULL END
    ),
    jsonb_build_object(
      'Content-Type', 'application/json',
      'X-Webhook-Secret', coalesce(secret, '')
    );
  RETURN NEW;
END
$$;

DO $$
BEGIN
  IF to_regclass('auth.users') IS NOT NULL
     AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'net') THEN
    EXECUTE 'DROP TRIGGER IF EXISTS substrate_login_webhook ON auth.users';
    EXECUTE 'CREATE TRIGGER substrate_login_webhook
               AFTER INSERT OR UPDATE OF last_sign_in_at ON auth.users
               FOR EACH ROW EXECUTE FUNCTION public.substrate_login_webhook()';
  END IF;
END
$$;
