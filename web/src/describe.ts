// One line of text per notification, from its type and payload (rendered as text, never HTML).

import type { Notification } from './feed';

const str = (v: unknown): string => (typeof v === 'string' ? v : v == null ? '' : JSON.stringify(v));

/** The last segment of a storage path (files/<user>/<request>/<name>). */
export const baseName = (path: unknown): string => str(path).split('/').pop() ?? '';

export function title(n: Notification, self: string, emailOf: (id: string | null) => string | undefined): string {
  const p = n.payload ?? {};
  switch (n.event_type) {
    case 'identity.login':
      return `Signed in as ${str(p.email) || 'you'}${p.provider ? ` (${str(p.provider)})` : ''}`;
    case 'user.message': {
      const from = n.sender_id === self ? 'You' : str(p.sender_email) || emailOf(n.sender_id) || 'Someone';
      if (n.visibility === 'direct') {
        const to = n.recipient_id === self ? 'you' : emailOf(n.recipient_id) ?? 'someone';
        return `${from} → ${to}: ${str(p.message)}`;
      }
      return `${from}: ${str(p.message)}`;
    }
    case 'media.upload_ready':
      return `Upload of ${baseName(p.file_path)} approved`;
    case 'media.upload_rejected':
      return `Upload of ${str(p.file_name)} refused: ${str(p.reason)}`;
    case 'media.upload_confirmed':
      return `Uploaded ${str(p.file_name)}`;
    case 'media.upload_expired':
      return `Upload expired; the credit was refunded`;
    case 'media.upload_failed':
      return `Upload failed (${str(p.reason) || 'storage'}); the credit was refunded`;
    case 'media.download_ready':
      return `Download of ${baseName(p.file_path)} ready`;
    case 'media.download_rejected':
      return `Download refused: ${str(p.reason)}`;
    case 'media.file_deleted':
      return `Deleted ${baseName(p.file_path)}`;
    case 'media.delete_rejected':
      return `Delete refused: ${str(p.reason)}`;
    default:
      return `${n.event_type}: ${str(p.message ?? p.text ?? p)}`;
  }
}

export function kind(n: Notification): string {
  if (n.event_type === 'user.message') return n.visibility === 'direct' ? 'Direct message' : 'Message';
  if (n.event_type === 'identity.login') return 'Login';
  if (n.event_type.startsWith('media.')) return 'Media';
  return n.event_type.split('.')[0];
}
