// Sign-up, login and logout through Ory Kratos' browser flows (JSON over fetch, its cookies on
// the same site), and the session as a short-lived JWT for the gateway from Kratos' tokenizer.
// The page never sees a password hash, a cookie value or any server secret.

export interface Identity {
  id: string;
  email: string;
}

interface UiText {
  text: string;
  type: string;
}

interface Flow {
  id: string;
  ui: {
    action: string;
    messages?: UiText[];
    nodes: { attributes: { name?: string; value?: unknown }; messages?: UiText[] }[];
  };
}

export class AuthError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AuthError';
  }
}

/** The gateway token template configured in Kratos (session.whoami.tokenizer.templates). */
const TEMPLATE = 'gateway';

export class Auth {
  private jwt: { token: string; exp: number } | null = null;

  constructor(private readonly base: string) {}

  /** The signed-in identity, or null. */
  async whoami(): Promise<Identity | null> {
    const response = await this.fetch('/sessions/whoami', { method: 'GET' });
    if (response.status === 401 || response.status === 403) return null;
    if (!response.ok) throw new AuthError(`the identity provider answered ${response.status}`);
    const session = await response.json();
    return { id: session.identity.id, email: session.identity.traits.email };
  }

  /** A JWT for the gateway, renewed a minute before it expires (or when `refresh`). */
  async token(refresh = false): Promise<string> {
    const now = Date.now() / 1000;
    if (!refresh && this.jwt && this.jwt.exp - now > 60) return this.jwt.token;
    const response = await this.fetch(`/sessions/whoami?tokenize_as=${TEMPLATE}`, { method: 'GET' });
    if (!response.ok) {
      this.jwt = null;
      throw new AuthError(response.status === 401 ? 'not signed in' : `the identity provider answered ${response.status}`);
    }
    const session = await response.json();
    const token = String(session.tokenized ?? '');
    if (!token) throw new AuthError('the identity provider returned no token');
    this.jwt = { token, exp: expiryOf(token) };
    return token;
  }

  async signUp(email: string, password: string): Promise<Identity> {
    const flow = await this.startFlow('registration');
    await this.submit(flow, { method: 'password', csrf_token: csrf(flow), traits: { email }, password });
    return this.signedIn();
  }

  async logIn(email: string, password: string): Promise<Identity> {
    const flow = await this.startFlow('login');
    await this.submit(flow, { method: 'password', csrf_token: csrf(flow), identifier: email, password });
    return this.signedIn();
  }

  async logOut(): Promise<void> {
    this.jwt = null;
    const response = await this.fetch('/self-service/logout/browser', { method: 'GET' });
    if (response.status === 401) return; // no session
    if (!response.ok) throw new AuthError(`logout failed (${response.status})`);
    const { logout_token } = await response.json();
    const done = await this.fetch(`/self-service/logout?token=${encodeURIComponent(logout_token)}`, { method: 'GET' });
    if (!done.ok && done.status !== 204) throw new AuthError(`logout failed (${done.status})`);
  }

  private async signedIn(): Promise<Identity> {
    const identity = await this.whoami();
    if (!identity) throw new AuthError('signed in, but the session was not kept (are cookies blocked?)');
    return identity;
  }

  private async startFlow(kind: 'login' | 'registration'): Promise<Flow> {
    const response = await this.fetch(`/self-service/${kind}/browser`, { method: 'GET' });
    if (response.ok) return response.json();
    const body = await response.json().catch(() => null);
    if (body?.error?.id === 'session_already_available') {
      // A session exists already (another tab): log it out first, then start again.
      await this.logOut();
      return this.startFlow(kind);
    }
    throw new AuthError(body?.error?.reason ?? body?.error?.message ?? `could not start ${kind} (${response.status})`);
  }

  private async submit(flow: Flow, body: Record<string, unknown>): Promise<void> {
    const response = await fetch(flow.ui.action, {
      method: 'POST',
      credentials: 'include',
      headers: { Accept: 'application/json', 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (response.ok) return;
    const answer = await response.json().catch(() => null);
    const texts: string[] = [];
    for (const m of answer?.ui?.messages ?? []) if (m.type === 'error') texts.push(m.text);
    for (const node of answer?.ui?.nodes ?? []) {
      for (const m of node.messages ?? []) if (m.type === 'error') texts.push(m.text);
    }
    if (!texts.length && answer?.error) texts.push(answer.error.reason ?? answer.error.message);
    throw new AuthError(texts.length ? texts.join(' ') : `the identity provider answered ${response.status}`);
  }

  private fetch(path: string, init: RequestInit): Promise<Response> {
    return fetch(this.base + path, {
      ...init,
      credentials: 'include',
      headers: { Accept: 'application/json', ...(init.headers ?? {}) },
    });
  }
}

function csrf(flow: Flow): string {
  const node = flow.ui.nodes.find((n) => n.attributes.name === 'csrf_token');
  return String(node?.attributes.value ?? '');
}

/** The `exp` claim of a JWT (seconds); 0 when unreadable, which makes the next call renew it. */
function expiryOf(token: string): number {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return Number(JSON.parse(atob(payload)).exp) || 0;
  } catch {
    return 0;
  }
}
