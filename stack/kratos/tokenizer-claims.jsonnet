// Claims of the `gateway` tokenizer template, shaped like a Supabase access token: Kratos sets
// iss, sub (the identity id), exp (template ttl), iat, nbf, jti and sid; this adds what the gateway
// and Supabase clients read. `sub` cannot be changed here (Kratos overwrites it).
local claims = std.extVar('claims');
local session = std.extVar('session');
local traits = session.identity.traits;

{
  claims: claims {
    aud: 'authenticated',
    role: 'authenticated',
    email: traits.email,
    phone: '',
    app_metadata: { provider: 'email', providers: ['email'] },
    user_metadata: {},
    aal: session.authenticator_assurance_level,
    session_id: session.id,
    is_anonymous: false,
  },
}
