-- The gateway's credentials for server-to-server sources, and its idempotency records. Both live
-- in substrate_private, a schema no client-facing role (anon, authenticated) can read.
CREATE SCHEMA IF NOT EXISTS substrate_private;
REVOKE ALL ON SCHEMA substrate_private FROM PUBLIC;
GRANT USAGE ON SCHEMA substrate_private TO service_role;

-- API keys per source (`esctl keys create --source shop --routes purchase`). Only a salted,
-- peppered hash is stored: hash = HMAC-SHA256(pepper, salt || key), the pepper lives in the
-- gateway's configuration (api_keys.pepper), never in the database. `id` is the public part of
-- the key (`esk_<id>_<secret>`): it names the key in logs and in `esctl keys list`.
-- A key is active while revoked_at is NULL and expires_at is NULL or in the future; rotation
-- gives the old key an expires_at, so both work until then.
CREATE TABLE IF NOT EXISTS substrate_private.api_keys (
  id          text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9]{12}$'),
  source      text        NOT NULL CHECK (source ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
  routes      text[]      NOT NULL CHECK (cardinality(routes) > 0),
  salt        bytea       NOT NULL CHECK (length(salt) = 16),
  hash        bytea       NOT NULL CHECK (length(hash) = 32),
  description text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz,
  revoked_at  timestamptz,
  replaced_by text        REFERENCES substrate_private.api_keys (id)
);

CREATE INDEX IF NOT EXISTS api_keys_source_idx ON substrate_private.api_keys (source);

-- Idempotency-Key records: the first answer to (principal, key) for 24 hours. event_ids are
-- chosen when the key is claimed, so a request retried after a gateway crash reuses them and
-- downstream consumers see the same event ids. status is NULL while the request is in progress.
CREATE TABLE IF NOT EXISTS substrate_private.idempotency_keys (
  principal    text        NOT NULL,
  key          text        NOT NULL,
  request_hash bytea       NOT NULL,
  event_ids    uuid[]      NOT NULL,
  status       integer,
  response     jsonb,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (principal, key)
);

CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx
  ON substrate_private.idempotency_keys (created_at);

REVOKE ALL ON ALL TABLES IN SCHEMA substrate_private FROM PUBLIC, anon, authenticated;
GRANT ALL ON substrate_private.api_keys, substrate_private.idempotency_keys TO service_role;
