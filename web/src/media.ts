// Media: the credit balance, uploads straight to the presigned URL with progress, the file list,
// downloads and deletes. Every intent's result arrives as a notification; results are matched to
// their request by request_id (kept for a while in case one arrives before its waiter).

import { Api, ApiError } from './api';
import type { Notification } from './feed';

export interface MediaFile {
  file_path: string;
  file_name: string;
  media_type: string;
  file_size: number;
  request_id: string;
  created_at: string;
}

type Waiter = { types: string[]; resolve: (n: Notification) => void; reject: (e: Error) => void; timer: number };

const RESULT_TIMEOUT_MS = 60_000;

export class Media {
  private waiters = new Map<string, Waiter>();
  private recent = new Map<string, Notification[]>();

  constructor(private readonly api: Api) {}

  /** Every notification of the feed passes here. */
  deliver(n: Notification): void {
    const id = typeof n.payload?.request_id === 'string' ? n.payload.request_id : null;
    if (!id || !n.event_type.startsWith('media.')) return;
    const waiter = this.waiters.get(id);
    if (waiter && waiter.types.includes(n.event_type)) {
      this.waiters.delete(id);
      window.clearTimeout(waiter.timer);
      waiter.resolve(n);
      return;
    }
    const list = this.recent.get(id) ?? [];
    list.push(n);
    this.recent.set(id, list);
    if (this.recent.size > 200) this.recent.delete(this.recent.keys().next().value as string);
  }

  /** The first of `types` for request `id`. */
  private result(id: string, types: string[]): Promise<Notification> {
    const early = this.recent.get(id)?.find((n) => types.includes(n.event_type));
    if (early) return Promise.resolve(early);
    return new Promise((resolve, reject) => {
      const timer = window.setTimeout(() => {
        this.waiters.delete(id);
        reject(new Error('No answer arrived in time; the result will still appear in your notifications.'));
      }, RESULT_TIMEOUT_MS);
      this.waiters.set(id, { types, resolve, reject, timer });
    });
  }

  balance(): Promise<{ balance: number }> {
    return this.api.get('/api/v1/credits');
  }

  files(): Promise<{ files: MediaFile[] }> {
    return this.api.get('/api/v1/media/files');
  }

  /** Intent → signed URL (notification) → PUT with progress → upload-complete → confirmed. */
  async upload(file: File, progress: (fraction: number) => void, step: (text: string) => void): Promise<Notification> {
    const type = file.type || 'application/octet-stream';
    step('Asking for an upload URL…');
    const { request_id } = await this.api.post<{ request_id: string }>('/api/v1/media/upload-intent', {
      file_name: file.name,
      media_type: type,
      file_size: file.size,
    });
    const signed = await this.result(request_id, ['media.upload_ready', 'media.upload_rejected']);
    if (signed.event_type === 'media.upload_rejected') {
      throw new Error(`Upload refused: ${String(signed.payload.reason ?? 'rejected')}`);
    }
    step('Uploading…');
    await put(String(signed.payload.upload_url), file, type, progress);
    step('Checking the upload…');
    await this.api.post('/api/v1/media/upload-complete', { request_id });
    const done = await this.result(request_id, ['media.upload_confirmed', 'media.upload_failed', 'media.upload_expired']);
    if (done.event_type !== 'media.upload_confirmed') {
      throw new Error(done.event_type === 'media.upload_expired' ? 'The upload expired.' : 'The upload failed; the credit was refunded.');
    }
    return done;
  }

  /** Intent → signed URL (notification) → the bytes, saved under the file's name. */
  async download(file: MediaFile): Promise<void> {
    const { request_id } = await this.api.post<{ request_id: string }>('/api/v1/media/download-intent', {
      file_path: file.file_path,
    });
    const ready = await this.result(request_id, ['media.download_ready', 'media.download_rejected']);
    if (ready.event_type === 'media.download_rejected') {
      throw new Error(`Download refused: ${String(ready.payload.reason ?? 'rejected')}`);
    }
    const response = await fetch(String(ready.payload.download_url));
    if (!response.ok) throw new ApiError(response.status, 'storage', `the storage answered ${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement('a');
    link.href = url;
    link.download = file.file_name;
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  async remove(file: MediaFile): Promise<void> {
    const { request_id } = await this.api.post<{ request_id: string }>('/api/v1/media/delete-intent', {
      file_path: file.file_path,
    });
    const done = await this.result(request_id, ['media.file_deleted', 'media.delete_rejected']);
    if (done.event_type === 'media.delete_rejected') {
      throw new Error(`Delete refused: ${String(done.payload.reason ?? 'rejected')}`);
    }
  }
}

/** PUT to a presigned URL with upload progress (fetch has none for request bodies). */
function put(url: string, file: File, type: string, progress: (fraction: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', url);
    xhr.setRequestHeader('Content-Type', type);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) progress(e.loaded / e.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        progress(1);
        resolve();
      } else {
        reject(new Error(`The storage refused the upload (${xhr.status}).`));
      }
    };
    xhr.onerror = () => reject(new Error('The upload could not reach the storage.'));
    xhr.send(file);
  });
}
