// Body of the after-login web hook: the payload a Supabase Database Webhook sends for an update of
// auth.users that sets last_sign_in_at, which the gateway's POST /webhooks/login turns into an
// `identity.login` event with id UUIDv5(<user id>/<last_sign_in_at>). The sign-in time is the
// session's authenticated_at, so Kratos' retries of one login carry the same event id.
function(ctx)
  local identity = ctx.identity;
  local methods = ctx.session.authentication_methods;
  local last = if std.length(methods) > 0 then methods[std.length(methods) - 1] else { method: 'password' };
  local provider =
    if last.method == 'password' then 'email'
    else if std.objectHas(last, 'provider') && last.provider != '' then last.provider
    else last.method;
  local user = {
    id: identity.id,
    aud: 'authenticated',
    role: 'authenticated',
    email: identity.traits.email,
    created_at: identity.created_at,
    updated_at: identity.updated_at,
    raw_app_meta_data: { provider: provider, providers: [provider] },
    raw_user_meta_data: {},
  };
  {
    type: 'UPDATE',
    table: 'users',
    schema: 'auth',
    record: user { last_sign_in_at: ctx.session.authenticated_at },
    // Kratos keeps no previous sign-in time; null marks this one as new, as for a first sign-in.
    old_record: user { last_sign_in_at: null },
  }
