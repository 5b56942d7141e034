// The caller's notifications: the newest page of history, then the stream from exactly that
// point (the cursor is commit-ordered, so nothing in between is lost or repeated; see
// docs/realtime.md). EventSource cannot send a header, so each connection opens with a short-lived
// ticket; after any error the page reconnects with a fresh ticket from the last cursor it saw.

import { Api } from './api';

export interface Notification {
  cursor: string;
  id: number;
  event_id: string;
  event_type: string;
  payload: Record<string, unknown>;
  visibility: 'broadcast' | 'direct';
  recipient_id: string | null;
  sender_id: string | null;
  created_at: string;
}

interface Page {
  notifications: Notification[];
  cursor: string | null;
}

export type FeedState = 'connecting' | 'live' | 'reconnecting' | 'stopped';

/** Above every cursor: `before` this reads the newest page. */
const NEWEST = '18446744073709551615-0';
/** Below every cursor: `after` this the stream starts from the first row. */
const OLDEST = '0-0';
const PAGE = 50;

export class Feed {
  private source: EventSource | null = null;
  private last: string | null = null;
  private oldest: string | null = null;
  private retry = 0;
  private timer: number | undefined;
  private stopped = false;

  constructor(
    private readonly api: Api,
    /** New rows (stream) in cursor order. */
    private readonly onLive: (n: Notification) => void,
    /** Older rows (history), newest first. */
    private readonly onHistory: (rows: Notification[]) => void,
    private readonly onState: (state: FeedState) => void,
  ) {}

  /** Reads the newest page, then follows the stream from its newest row. */
  async start(): Promise<void> {
    this.onState('connecting');
    const page = await this.api.get<Page>(`/api/v1/notifications?before=${NEWEST}&limit=${PAGE}`);
    this.onHistory(page.notifications);
    this.last = page.notifications[0]?.cursor ?? OLDEST;
    this.oldest = page.notifications.at(-1)?.cursor ?? null;
    await this.connect();
  }

  /** The page before the oldest row shown; false when there is none. */
  async older(): Promise<boolean> {
    if (!this.oldest) return false;
    const page = await this.api.get<Page>(`/api/v1/notifications?before=${this.oldest}&limit=${PAGE}`);
    this.onHistory(page.notifications);
    this.oldest = page.notifications.at(-1)?.cursor ?? null;
    return page.notifications.length === PAGE;
  }

  /** The newest cursor delivered so far. */
  get newest(): string | null {
    return this.last === OLDEST ? null : this.last;
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
    this.onState('stopped');
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    let ticket: string;
    try {
      ({ ticket } = await this.api.post<{ ticket: string }>('/api/v1/notifications/ticket', {}));
    } catch {
      this.reconnectLater();
      return;
    }
    if (this.stopped) return;
    const url = `/api/v1/notifications/stream?ticket=${encodeURIComponent(ticket)}&after=${encodeURIComponent(this.last ?? OLDEST)}`;
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => {
      this.retry = 0;
      this.onState('live');
    };
    source.addEventListener('notification', (event) => {
      const message = event as MessageEvent<string>;
      const row = JSON.parse(message.data) as Notification;
      this.last = message.lastEventId || row.cursor;
      this.onLive(row);
    });
    source.onerror = () => {
      // Never let EventSource retry on its own: its ticket may have expired. Resume from the
      // last cursor with a new ticket.
      source.close();
      if (this.source === source) this.source = null;
      this.reconnectLater();
    };
  }

  private reconnectLater(): void {
    if (this.stopped) return;
    this.onState('reconnecting');
    const delay = Math.min(15000, 500 * 2 ** this.retry++);
    this.timer = window.setTimeout(() => void this.connect(), delay);
  }
}
