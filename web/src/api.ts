// The gateway's HTTP API on this page's own origin. Every refusal becomes an ApiError carrying the
// status and the JSON error body ({"error": {"code", "message", "field"}}) the gateway answers.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  static async from(response: Response): Promise<ApiError> {
    let code = 'http_' + response.status;
    let message = response.statusText || 'request failed';
    let field: string | undefined;
    try {
      const body = await response.json();
      if (body && typeof body.error === 'object' && body.error) {
        code = String(body.error.code ?? code);
        message = String(body.error.message ?? message);
        field = body.error.field ? String(body.error.field) : undefined;
      }
    } catch {
      // not JSON: keep the status line
    }
    const retry = Number(response.headers.get('Retry-After'));
    return new ApiError(response.status, code, message, field, Number.isFinite(retry) && retry > 0 ? retry : undefined);
  }
}

/** A sentence a person can act on, for every refusal the API gives. */
export function describe(error: unknown): string {
  if (!(error instanceof ApiError)) {
    if (error instanceof TypeError) return 'The server could not be reached. Check your connection and try again.';
    return error instanceof Error ? error.message : String(error);
  }
  const detail = error.field ? `${error.field}: ${error.message}` : error.message;
  const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : ' Try again in a moment.';
  switch (error.status) {
    case 400:
      return `Not accepted — ${detail}`;
    case 401:
      return 'Your session has ended. Please log in again.';
    case 403:
      return `Not allowed — ${error.message}`;
    case 404:
      return `Not found — ${error.message}`;
    case 408:
      return `The request took too long to arrive.${wait}`;
    case 409:
      return `Conflict (${error.code}) — ${error.message}`;
    case 413:
      return `Too large — ${detail}`;
    case 415:
      return `Unsupported format — ${error.message}`;
    case 422:
      return `Not accepted (${error.code}) — ${error.message}`;
    case 429:
      return `Too many requests.${wait}`;
    case 503:
      return `The service is busy or unavailable.${wait}`;
    default:
      return `Request failed (${error.status} ${error.code}) — ${error.message}`;
  }
}

export type TokenSource = (refresh?: boolean) => Promise<string>;

export class Api {
  constructor(
    private readonly token: TokenSource,
    private readonly onUnauthorized: () => void,
  ) {}

  async get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  async post<T>(path: string, body: unknown, headers: Record<string, string> = {}): Promise<T> {
    return this.request<T>('POST', path, body, headers);
  }

  private async request<T>(method: string, path: string, body?: unknown, extra: Record<string, string> = {}): Promise<T> {
    // One retry with a fresh token: the cached one may have just expired.
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { ...extra, Authorization: `Bearer ${await this.token(attempt > 0)}` };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      const response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (response.ok) return (await response.json()) as T;
      const error = await ApiError.from(response);
      if (error.status === 401 && attempt === 0) continue;
      if (error.status === 401) this.onUnauthorized();
      throw error;
    }
  }
}
