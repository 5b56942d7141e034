-- Secrets never travel. Rule actions keep only their public part in public.rules.actions (and so
-- in dispatch requests, retry and dead-letter topics); the secret part of each HTTP action (its
-- URL, webhook signing secrets and headers) is sealed by esctl with AES-256-GCM under a key from
-- configuration and stored here, one row per (rule, version, action), the key id beside it so the
-- key can be rotated (`esctl secrets rotate`). The dispatcher opens them; the database never sees
-- a key or a plaintext. Everything in substrate_private is out of reach of anon and
-- authenticated; service_role may read the ciphertexts, not the login webhook secret.
CREATE SCHEMA IF NOT EXISTS substrate_private;
REVOKE ALL ON SCHEMA substrate_private FROM PUBLIC;
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    EXECUTE 'REVOKE ALL ON SCHEMA substrate_private FROM anon';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    EXECUTE 'REVOKE ALL ON SCHEMA substrate_private FROM authenticated';
  END IF;
END
$$;
GRANT USAGE ON SCHEMA substrate_private TO service_role;

-- A request of rule version v uses the row of the highest rule_version <= v for its action
-- index (enabling or disabling a rule makes a version without new secrets). Rows of older
-- versions are kept so requests still in retry topics deliver; `esctl secrets prune` removes the
-- ones superseded long ago. The associated data of each ciphertext binds it to
-- (rule_id, rule_version, action_index): a row copied elsewhere does not open.
CREATE TABLE IF NOT EXISTS substrate_private.action_secrets (
  rule_id      uuid        NOT NULL,
  rule_version integer     NOT NULL,
  action_index integer     NOT NULL CHECK (action_index >= 0),
  key_id       text        NOT NULL CHECK (key_id ~ '^[A-Za-z0-9._-]{1,64}$'),
  nonce        bytea       NOT NULL CHECK (length(nonce) = 12),
  ciphertext   bytea       NOT NULL CHECK (length(ciphertext) > 16),
  created_at   timestamptz NOT NULL DEFAULT now(),
  rotated_at   timestamptz,
  PRIMARY KEY (rule_id, rule_version, action_index)
);

CREATE INDEX IF NOT EXISTS action_secrets_key_idx ON substrate_private.action_secrets (key_id);

REVOKE ALL ON substrate_private.action_secrets FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON substrate_private.action_secrets TO service_role;

-- Settings only the database owner and SECURITY DEFINER functions read (not service_role).
CREATE TABLE IF NOT EXISTS substrate_private.settings (
  name       text        PRIMARY KEY,
  value      text        NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);

REVOKE ALL ON substrate_private.settings FROM PUBLIC, service_role;
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    EXECUTE 'REVOKE ALL ON substrate_private.action_secrets, substrate_private.settings FROM anon';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    EXECUTE 'REVOKE ALL ON substrate_private.action_secrets, substrate_private.settings FROM authenticated';
  END IF;
END
$$;

-- The login webhook secret moves from a database setting (which every role can read with
-- current_setting) into substrate_private.settings. Set it with
--   esctl secrets set-login-webhook-secret        (reads SUBSTRATE_WEBHOOKS__LOGIN_SECRET)
-- or, as the database owner:
--   INSERT INTO substrate_private.settings (name, value) VALUES ('login_webhook_secret', '<secret>')
--   ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
DO $$
DECLARE
  old text := nullif(current_setting('substrate.login_webhook_secret', true), '');
BEGIN
  IF old IS NOT NULL THEN
    INSERT INTO substrate_private.settings (name, value) VALUES ('login_webhook_secret', old)
    ON CONFLICT (name) DO NOTHING;
    BEGIN
      EXECUTE format('ALTER DATABASE %I RESET substrate.login_webhook_secret', current_database());
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE WARNING 'copied substrate.login_webhook_secret into substrate_private.settings; '
        'reset the database setting as its owner: ALTER DATABASE % RESET substrate.login_webhook_secret',
        current_database();
    END;
  END IF;
END
$$;

-- Same trigger contract as 20261125000200_login_webhook.sql; only where the secret comes from
-- changed. SECURITY DEFINER: it reads the secret with its owner's rights, whoever signs in.
CREATE OR REPLACE FUNCTION public.substrate_login_webhook() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  url    text := current_setting('substrate.login_webhook_url', true);
  secret text;
BEGIN
  IF url IS NULL OR url = '' THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.last_sign_in_at IS NOT DISTINCT FROM OLD.last_sign_in_at THEN
    RETURN NEW;
  END IF;
  SELECT s.value INTO secret FROM substrate_private.settings s WHERE s.name = 'login_webhook_secret';
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

REVOKE ALL ON FUNCTION public.substrate_login_webhook() FROM PUBLIC;

-- How a URL is shown (the same as substrate_secrets::redact_url for ordinary URLs): scheme,
-- host, an explicit port, `/…` and 8 hex digits of the SHA-256 of the whole URL. Used below to
-- rewrite what earlier versions stored in clear; session-local, it does not outlive this file.
CREATE FUNCTION pg_temp.redact_url(url text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN m IS NULL THEN 'invalid-url#' || h
    ELSE lower(m[1]) || '://' || lower(m[2])
         || CASE WHEN m[3] IS NULL
                   OR (lower(m[1]) = 'http' AND m[3] = '80')
                   OR (lower(m[1]) = 'https' AND m[3] = '443') THEN '' ELSE ':' || m[3] END
         || '/…#' || h
  END
  FROM (SELECT regexp_match(url, '^([A-Za-z][A-Za-z0-9+.-]*)://(?:[^@/?#]*@)?(\[[^]]*\]|[^:/?#]*)(?::([0-9]+))?') AS m,
               left(encode(sha256(convert_to(url, 'UTF8')), 'hex'), 8) AS h) parts
$$;

-- dispatch_endpoints: keyed by the SHA-256 of the URL, shown redacted (was: the URL in clear).
ALTER TABLE public.dispatch_endpoints ADD COLUMN IF NOT EXISTS url_hash text;
ALTER TABLE public.dispatch_endpoints ADD COLUMN IF NOT EXISTS endpoint text;
UPDATE public.dispatch_endpoints
   SET url_hash = encode(sha256(convert_to(url, 'UTF8')), 'hex'),
       endpoint = pg_temp.redact_url(url);
ALTER TABLE public.dispatch_endpoints DROP CONSTRAINT IF EXISTS dispatch_endpoints_pkey;
ALTER TABLE public.dispatch_endpoints DROP COLUMN url;
ALTER TABLE public.dispatch_endpoints ALTER COLUMN url_hash SET NOT NULL;
ALTER TABLE public.dispatch_endpoints ALTER COLUMN endpoint SET NOT NULL;
ALTER TABLE public.dispatch_endpoints ADD PRIMARY KEY (url_hash);
ALTER TABLE public.dispatch_endpoints
  ADD CONSTRAINT dispatch_endpoints_url_hash_check CHECK (url_hash ~ '^[0-9a-f]{64}$');

-- dispatch_attempts: targets of HTTP sinks were URLs in clear; error texts could quote them.
UPDATE public.dispatch_attempts
   SET target = pg_temp.redact_url(target)
 WHERE sink IN ('webhook', 'slack', 'discord') AND target !~ '/…#[0-9a-f]{8}$';
UPDATE public.dispatch_attempts
   SET error = regexp_replace(error, '([A-Za-z][A-Za-z0-9+.-]*://)(?:[^@/?#\s]*@)?([^/?#\s)]+)[^\s)]*', '\1\2/…', 'g')
 WHERE error ~ '[A-Za-z][A-Za-z0-9+.-]*://';
