-- The W3C trace context of the upload intent that started a media saga: the saga's timers (the
-- upload TTL, the move timeout and its retries) fire in the same trace as the request.
ALTER TABLE public.media_sagas ADD COLUMN IF NOT EXISTS traceparent text;

COMMENT ON COLUMN public.media_sagas.traceparent IS
    'W3C traceparent of the upload intent; deadlines fire as part of its trace';
