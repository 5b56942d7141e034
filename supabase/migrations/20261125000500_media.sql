-- Media sagas: credits with a ledger (every change keyed by request and reason, so a redelivered
-- message never changes a balance twice), the files users own (soft delete), saga state and
-- durable deadlines (TTL expiry, move timeouts) that fire after a restart if they fell due while
-- the service was down.

CREATE TABLE IF NOT EXISTS public.credits (
  user_id    uuid        PRIMARY KEY,
  balance    integer     NOT NULL CHECK (balance >= 0),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.credit_ledger (
  id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id    uuid        NOT NULL,
  request_id uuid        NOT NULL,
  reason     text        NOT NULL CHECK (reason IN ('grant', 'upload', 'refund')),
  delta      integer     NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (request_id, reason)
);
CREATE INDEX IF NOT EXISTS credit_ledger_user_idx ON public.credit_ledger (user_id, created_at);

CREATE TABLE IF NOT EXISTS public.media_files (
  id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  request_id  uuid        NOT NULL UNIQUE,
  user_id     uuid        NOT NULL,
  file_path   text        NOT NULL UNIQUE,
  file_name   text        NOT NULL,
  media_type  text        NOT NULL,
  file_size   bigint      NOT NULL,
  status      text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deleted')),
  created_at  timestamptz NOT NULL DEFAULT now(),
  deleted_at  timestamptz
);
CREATE INDEX IF NOT EXISTS media_files_user_idx ON public.media_files (user_id) WHERE status = 'active';

CREATE TABLE IF NOT EXISTS public.media_sagas (
  request_id     uuid        PRIMARY KEY,
  user_id        uuid        NOT NULL,
  state          text        NOT NULL,
  file_name      text        NOT NULL,
  media_type     text        NOT NULL,
  file_size      bigint      NOT NULL,
  upload_path    text,
  permanent_path text,
  retry_count    integer     NOT NULL DEFAULT 0,
  reason         text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.media_deadlines (
  request_id uuid        NOT NULL,
  kind       text        NOT NULL CHECK (kind IN ('upload_ttl', 'move_timeout')),
  due_at     timestamptz NOT NULL,
  fired_at   timestamptz,
  PRIMARY KEY (request_id, kind)
);
CREATE INDEX IF NOT EXISTS media_deadlines_due_idx ON public.media_deadlines (due_at)
  WHERE fired_at IS NULL;

-- Users read their own balance and their active files; services write.
ALTER TABLE public.credits ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.credit_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.media_files ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.media_sagas ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.media_deadlines ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS credits_owner_read ON public.credits;
CREATE POLICY credits_owner_read ON public.credits
  FOR SELECT TO authenticated USING (user_id = auth.uid());
DROP POLICY IF EXISTS credit_ledger_owner_read ON public.credit_ledger;
CREATE POLICY credit_ledger_owner_read ON public.credit_ledger
  FOR SELECT TO authenticated USING (user_id = auth.uid());
DROP POLICY IF EXISTS media_files_owner_read ON public.media_files;
CREATE POLICY media_files_owner_read ON public.media_files
  FOR SELECT TO authenticated USING (user_id = auth.uid() AND status = 'active');

GRANT SELECT ON public.credits, public.credit_ledger, public.media_files TO authenticated;
GRANT ALL ON public.credits, public.credit_ledger, public.media_files, public.media_sagas,
  public.media_deadlines TO service_role;

-- Deducts one credit for an upload request when the balance allows it, in one call: new users
-- first get `starting` credits (a `grant` ledger row keyed by their id); a request already
-- charged keeps its earlier approval. Concurrent calls for one request cannot both charge: the
-- second one's ledger insert violates (request_id, reason) and its whole call rolls back.
CREATE OR REPLACE FUNCTION public.media_debit(p_request uuid, p_user uuid, p_starting integer)
RETURNS TABLE (approved boolean, balance integer)
LANGUAGE plpgsql AS $$
DECLARE
  v_balance integer;
BEGIN
  INSERT INTO public.credits (user_id, balance) VALUES (p_user, p_starting)
    ON CONFLICT (user_id) DO NOTHING;
  IF FOUND THEN
    INSERT INTO public.credit_ledger (user_id, request_id, reason, delta)
      VALUES (p_user, p_user, 'grant', p_starting) ON CONFLICT DO NOTHING;
  END IF;
  IF EXISTS (SELECT 1 FROM public.credit_ledger l
             WHERE l.request_id = p_request AND l.reason = 'upload') THEN
    SELECT c.balance INTO v_balance FROM public.credits c WHERE c.user_id = p_user;
    RETURN QUERY SELECT true, v_balance;
    RETURN;
  END IF;
  UPDATE public.credits c SET balance = c.balance - 1, updated_at = now()
    WHERE c.user_id = p_user AND c.balance >= 1
    RETURNING c.balance INTO v_balance;
  IF NOT FOUND THEN
    -- A concurrent call for the same request may have charged it while this one waited for
    -- the row (this statement sees what that call committed).
    SELECT c.balance INTO v_balance FROM public.credits c WHERE c.user_id = p_user;
    RETURN QUERY SELECT EXISTS (SELECT 1 FROM public.credit_ledger l
                                WHERE l.request_id = p_request AND l.reason = 'upload'),
                        v_balance;
    RETURN;
  END IF;
  INSERT INTO public.credit_ledger (user_id, request_id, reason, delta)
    VALUES (p_user, p_request, 'upload', -1);
  RETURN QUERY SELECT true, v_balance;
END
$$;

-- Gives back the credit of a charged request, once: false when it was not charged or is already
-- refunded.
CREATE OR REPLACE FUNCTION public.media_refund(p_request uuid)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  v_user uuid;
BEGIN
  SELECT l.user_id INTO v_user FROM public.credit_ledger l
    WHERE l.request_id = p_request AND l.reason = 'upload';
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO public.credit_ledger (user_id, request_id, reason, delta)
    VALUES (v_user, p_request, 'refund', 1) ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  UPDATE public.credits SET balance = balance + 1, updated_at = now() WHERE user_id = v_user;
  RETURN true;
END
$$;
