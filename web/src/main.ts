import './style.css';
import { Api, ApiError, describe } from './api';
import { Auth, Identity } from './auth';
import { kind, title } from './describe';
import { Feed, FeedState, Notification } from './feed';
import { Media, MediaFile } from './media';

const $ = <T extends HTMLElement>(id: string): T => {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} missing`);
  return node as T;
};

const errorBox = $('error');
function showError(error: unknown): void {
  errorBox.textContent = describe(error);
  errorBox.hidden = false;
}
function clearError(): void {
  errorBox.hidden = true;
  errorBox.textContent = '';
}

/** The unread count's cap (GET /api/v1/notifications/unread). */
const UNREAD_CAP = 10_000;

interface Person {
  id: string;
  email: string;
}

class App {
  private me: Identity | null = null;
  private feed: Feed | null = null;
  private readonly api: Api;
  private readonly media: Media;
  private readonly people = new Map<string, string>();
  private signup = false;
  private unread = 0;

  constructor(private readonly auth: Auth) {
    this.api = new Api(
      (refresh) => auth.token(refresh),
      () => void this.signedOut('Your session has ended. Please log in again.'),
    );
    this.media = new Media(this.api);
    this.bind();
  }

  async boot(): Promise<void> {
    try {
      const me = await this.auth.whoami();
      if (me) await this.signedIn(me);
      else this.showSignIn();
    } catch (error) {
      this.showSignIn();
      showError(error);
    }
  }

  private bind(): void {
    $('mode-login').addEventListener('click', () => this.setMode(false));
    $('mode-signup').addEventListener('click', () => this.setMode(true));
    $<HTMLFormElement>('signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      void this.submitSignIn();
    });
    $('logout').addEventListener('click', () => void this.logOut());
    $<HTMLFormElement>('message-form').addEventListener('submit', (e) => {
      e.preventDefault();
      void this.send();
    });
    for (const radio of document.querySelectorAll<HTMLInputElement>('input[name=visibility]')) {
      radio.addEventListener('change', () => {
        const direct = this.visibility() === 'direct';
        $('recipient-box').hidden = !direct;
        if (direct) void this.findPeople();
      });
    }
    let debounce: number | undefined;
    $('recipient-search').addEventListener('input', () => {
      window.clearTimeout(debounce);
      debounce = window.setTimeout(() => void this.findPeople(), 200);
    });
    $<HTMLFormElement>('upload-form').addEventListener('submit', (e) => {
      e.preventDefault();
      void this.upload();
    });
    $('mark-read').addEventListener('click', () => void this.markRead());
    $('older').addEventListener('click', () => void this.older());
  }

  // ---- account ----

  private setMode(signup: boolean): void {
    this.signup = signup;
    $('mode-login').setAttribute('aria-pressed', String(!signup));
    $('mode-signup').setAttribute('aria-pressed', String(signup));
    $('signin-title').textContent = signup ? 'Sign up' : 'Log in';
    $('signin-submit').textContent = signup ? 'Create account' : 'Log in';
    $('password').setAttribute('autocomplete', signup ? 'new-password' : 'current-password');
  }

  private showSignIn(): void {
    this.setMode(false);
    $('signin').hidden = false;
    $('app').hidden = true;
    $('account').hidden = true;
    $<HTMLInputElement>('email').focus();
  }

  private async submitSignIn(): Promise<void> {
    clearError();
    const email = $<HTMLInputElement>('email').value.trim();
    const password = $<HTMLInputElement>('password').value;
    if (!email.includes('@')) return showError(new Error('Enter your e-mail address.'));
    if (password.length < 8) return showError(new Error('The password needs at least 8 characters.'));
    const button = $<HTMLButtonElement>('signin-submit');
    button.disabled = true;
    try {
      const me = this.signup ? await this.auth.signUp(email, password) : await this.auth.logIn(email, password);
      $<HTMLInputElement>('password').value = '';
      await this.signedIn(me);
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  }

  private async signedIn(me: Identity): Promise<void> {
    this.me = me;
    this.people.set(me.id, me.email);
    $('who').textContent = me.email;
    $('account').hidden = false;
    $('signin').hidden = true;
    $('app').hidden = false;
    $('feed').replaceChildren();
    this.unread = 0;
    this.feed = new Feed(
      this.api,
      (n) => this.live(n),
      (rows) => this.history(rows),
      (state) => this.feedState(state),
    );
    await Promise.all([
      this.feed.start().catch(showError),
      this.refreshMedia().catch(showError),
      this.refreshUnread().catch(showError),
    ]);
  }

  private async logOut(): Promise<void> {
    clearError();
    try {
      await this.auth.logOut();
    } catch (error) {
      showError(error);
    }
    this.signedOut();
  }

  private signedOut(message?: string): void {
    this.feed?.stop();
    this.feed = null;
    this.me = null;
    this.showSignIn();
    if (message) showError(new Error(message));
  }

  // ---- notifications ----

  private item(n: Notification): HTMLLIElement {
    const li = document.createElement('li');
    li.className = `note ${n.event_type.replace(/\W/g, '-')}`;
    li.dataset.cursor = n.cursor;
    li.dataset.type = n.event_type;
    const tag = document.createElement('span');
    tag.className = 'tag';
    tag.textContent = kind(n);
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = title(n, this.me?.id ?? '', (id) => (id ? this.people.get(id) : undefined));
    const time = document.createElement('time');
    time.dateTime = n.created_at;
    time.textContent = new Date(n.created_at).toLocaleTimeString();
    li.append(tag, text, time);
    return li;
  }

  private learn(n: Notification): void {
    const email = n.payload?.sender_email ?? (n.event_type === 'identity.login' ? n.payload?.email : undefined);
    const id = n.event_type === 'identity.login' ? n.recipient_id : n.sender_id;
    if (typeof email === 'string' && id) this.people.set(id, email);
  }

  private live(n: Notification): void {
    this.learn(n);
    $('feed').prepend(this.item(n));
    this.media.deliver(n);
    this.setUnread(this.unread + 1);
    if (n.event_type.startsWith('media.')) void this.refreshMedia().catch(showError);
  }

  private history(rows: Notification[]): void {
    const list = $('feed');
    for (const n of rows) {
      this.learn(n);
      this.media.deliver(n);
      list.append(this.item(n));
    }
  }

  private feedState(state: FeedState): void {
    $('feed-state').textContent = state;
  }

  private setUnread(count: number): void {
    this.unread = count;
    // the API counts up to 10,000
    $('unread').textContent = count >= UNREAD_CAP ? `${UNREAD_CAP.toLocaleString('en')}+` : String(count);
  }

  private async refreshUnread(): Promise<void> {
    const { unread } = await this.api.get<{ unread: number }>('/api/v1/notifications/unread');
    this.setUnread(unread);
  }

  private async markRead(): Promise<void> {
    const newest = this.feed?.newest;
    if (!newest) return;
    try {
      const { unread } = await this.api.post<{ unread: number }>('/api/v1/notifications/read', { up_to: newest });
      this.setUnread(unread);
    } catch (error) {
      showError(error);
    }
  }

  private async older(): Promise<void> {
    try {
      const more = await this.feed?.older();
      $<HTMLButtonElement>('older').disabled = !more;
    } catch (error) {
      showError(error);
    }
  }

  // ---- messages ----

  private visibility(): 'broadcast' | 'direct' {
    return document.querySelector<HTMLInputElement>('input[name=visibility]:checked')?.value === 'direct'
      ? 'direct'
      : 'broadcast';
  }

  private async findPeople(): Promise<void> {
    const q = $<HTMLInputElement>('recipient-search').value.trim();
    try {
      const { users } = await this.api.get<{ users: Person[] }>(`/api/v1/users?q=${encodeURIComponent(q)}&limit=50`);
      const select = $<HTMLSelectElement>('recipient');
      const keep = select.value;
      const options = users
        .filter((u) => u.id !== this.me?.id)
        .map((u) => {
          this.people.set(u.id, u.email);
          const option = document.createElement('option');
          option.value = u.id;
          option.textContent = u.email;
          return option;
        });
      if (!options.length) {
        const none = document.createElement('option');
        none.value = '';
        none.textContent = q ? 'Nobody matches' : 'Nobody else has signed in yet';
        options.push(none);
      }
      select.replaceChildren(...options);
      if (keep && options.some((o) => o.value === keep)) select.value = keep;
    } catch (error) {
      showError(error);
    }
  }

  private async send(): Promise<void> {
    clearError();
    const status = $('message-status');
    const text = $<HTMLTextAreaElement>('message');
    const message = text.value.trim();
    if (!message) return showError(new Error('Write a message first.'));
    const visibility = this.visibility();
    const body: Record<string, unknown> = { message, visibility };
    if (visibility === 'direct') {
      const recipient = $<HTMLSelectElement>('recipient').value;
      if (!recipient) return showError(new Error('Pick the person to send it to.'));
      body.recipient_id = recipient;
    }
    status.textContent = 'Sending…';
    try {
      await this.api.post('/api/v1/events/message', body, { 'Idempotency-Key': crypto.randomUUID() });
      text.value = '';
      status.textContent = 'Sent.';
    } catch (error) {
      status.textContent = '';
      showError(error);
    }
  }

  // ---- media ----

  private async refreshMedia(): Promise<void> {
    const [{ balance }, { files }] = await Promise.all([this.media.balance(), this.media.files()]);
    $('credits').textContent = String(balance);
    this.renderFiles(files);
  }

  private renderFiles(files: MediaFile[]): void {
    $('files-empty').hidden = files.length > 0;
    $('files').replaceChildren(
      ...files.map((file) => {
        const li = document.createElement('li');
        li.dataset.path = file.file_path;
        const name = document.createElement('span');
        name.className = 'name';
        name.textContent = file.file_name;
        const meta = document.createElement('span');
        meta.className = 'meta';
        meta.textContent = `${size(file.file_size)} · ${file.media_type}`;
        const download = document.createElement('button');
        download.type = 'button';
        download.textContent = 'Download';
        download.setAttribute('aria-label', `Download ${file.file_name}`);
        download.addEventListener('click', () => void this.run(download, () => this.media.download(file)));
        const remove = document.createElement('button');
        remove.type = 'button';
        remove.textContent = 'Delete';
        remove.setAttribute('aria-label', `Delete ${file.file_name}`);
        remove.addEventListener('click', () =>
          void this.run(remove, async () => {
            await this.media.remove(file);
            await this.refreshMedia();
          }),
        );
        li.append(name, meta, download, remove);
        return li;
      }),
    );
  }

  private async run(button: HTMLButtonElement, work: () => Promise<void>): Promise<void> {
    clearError();
    button.disabled = true;
    try {
      await work();
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  }

  private async upload(): Promise<void> {
    clearError();
    const input = $<HTMLInputElement>('file');
    const file = input.files?.[0];
    if (!file) return showError(new Error('Choose a file first.'));
    const bar = $<HTMLProgressElement>('upload-progress');
    const status = $('upload-status');
    bar.value = 0;
    bar.hidden = false;
    try {
      await this.media.upload(
        file,
        (f) => (bar.value = Math.round(f * 100)),
        (text) => (status.textContent = text),
      );
      status.textContent = `Uploaded ${file.name}.`;
      input.value = '';
      await this.refreshMedia();
    } catch (error) {
      status.textContent = error instanceof ApiError ? 'Upload refused.' : 'Upload not completed.';
      bar.hidden = true;
      showError(error);
      await this.refreshMedia().catch(() => undefined);
    }
  }
}

function size(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

async function main(): Promise<void> {
  let authUrl: string | null = null;
  try {
    const config = await (await fetch('/app-config.json', { cache: 'no-cache' })).json();
    authUrl = config.auth_url ?? null;
  } catch {
    // handled below
  }
  if (!authUrl) {
    showError(new Error('The server has no identity provider configured (gateway.web.auth_url).'));
    return;
  }
  await new App(new Auth(authUrl.replace(/\/+$/, ''))).boot();
}

void main();
