// Body of the after-registration web hook: a sign-up signs the user in (the `session` hook that
// follows), as Supabase Auth does with e-mail confirmation off, and Supabase's Database Webhook
// reports it as an INSERT into auth.users with last_sign_in_at set. The gateway's POST
// /webhooks/login turns that into the user's first `identity.login` event; its id is
// UUIDv5(<user id>/<created_at>), so Kratos' retries of one sign-up carry the same event id.
function(ctx)
  local identity = ctx.identity;
  {
    type: 'INSERT',
    table: 'users',
    schema: 'auth',
    record: {
      id: identity.id,
      aud: 'authenticated',
      role: 'authenticated',
      email: identity.traits.email,
      created_at: identity.created_at,
      updated_at: identity.updated_at,
      last_sign_in_at: identity.created_at,
      raw_app_meta_data: { provider: 'email', providers: ['email'] },
      raw_user_meta_data: {},
    },
    old_record: null,
  }
