// The web app in a real browser against the running stack: three people sign up, message each
// other, upload/download/delete a file, and one reloads the page while messages stream in.

import { readFileSync, readdirSync, statSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test, expect, type Browser, type BrowserContext, type Page, type TestInfo } from '@playwright/test';

const run = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const password = 'correct horse battery 42';
const email = (name: string) => `${name}-${run}@example.com`;

test.describe.configure({ mode: 'serial' });

/** The stack's settings (.local/stack.env, written by ./taskw start). */
function stackEnv(): Record<string, string> {
  const text = readFileSync(fileURLToPath(new URL('../../.local/stack.env', import.meta.url)), 'utf8');
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0 && !line.startsWith('#')) env[line.slice(0, at)] = line.slice(at + 1);
  }
  return env;
}

let ann: Page;
let bob: Page;
let cy: Page;
const contexts: BrowserContext[] = [];

async function open(browser: Browser): Promise<Page> {
  const context = await browser.newContext({ acceptDownloads: true });
  contexts.push(context);
  return context.newPage();
}

async function shot(page: Page, info: TestInfo, name: string): Promise<void> {
  const dir = join(info.project.outputDir, 'screenshots');
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`), fullPage: true });
}

const feed = (page: Page) => page.getByTestId('feed');
const item = (page: Page, text: string) => feed(page).locator('.text').getByText(text, { exact: true });

async function signUp(page: Page, address: string): Promise<void> {
  await page.goto('/');
  await page.getByRole('button', { name: 'Sign up', exact: true }).click();
  await page.getByLabel('E-mail', { exact: true }).fill(address);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.getByTestId('who')).toHaveText(address);
  await expect(page.getByTestId('feed-state')).toHaveText('live');
}

async function send(page: Page, message: string, to?: string): Promise<void> {
  await page.getByLabel('Message', { exact: true }).fill(message);
  if (to) {
    await page.getByLabel('One person').check();
    await page.getByLabel('Find a person (e-mail)').fill(to.slice(0, 8));
    await expect(page.getByLabel('Recipient', { exact: true }).locator('option', { hasText: to })).toHaveCount(1);
    await page.getByLabel('Recipient', { exact: true }).selectOption({ label: to });
  } else {
    await page.getByLabel('Everyone').check();
  }
  await page.getByRole('button', { name: 'Send' }).click();
  await expect(page.locator('#message-status')).toHaveText('Sent.');
}

test.beforeAll(async ({ browser }) => {
  ann = await open(browser);
  bob = await open(browser);
  cy = await open(browser);
});

test.afterAll(async () => {
  await Promise.all(contexts.map((c) => c.close()));
});

test('sign up: each person is signed in and sees their sign-in notification', async ({}, info) => {
  await ann.goto('/');
  await expect(ann.getByRole('heading', { name: 'Log in' })).toBeVisible();
  await shot(ann, info, '01-sign-in');
  for (const [page, name] of [[ann, 'ann'], [bob, 'bob'], [cy, 'cy']] as const) {
    await signUp(page, email(name));
    await expect(item(page, `Signed in as ${email(name)} (email)`)).toHaveCount(1);
  }
});

test('a login after logging out produces a new login notification', async () => {
  await ann.getByRole('button', { name: 'Log out' }).click();
  await expect(ann.getByRole('heading', { name: 'Log in' })).toBeVisible();
  await ann.getByLabel('E-mail', { exact: true }).fill(email('ann'));
  await ann.getByLabel('Password', { exact: true }).fill(password);
  await ann.locator('#signin-submit').click();
  await expect(ann.getByTestId('who')).toHaveText(email('ann'));
  // the sign-up's and this login's
  await expect(item(ann, `Signed in as ${email('ann')} (email)`)).toHaveCount(2);
  // a wrong password is refused with the identity provider's message
  const other = await open(ann.context().browser()!);
  await other.goto('/');
  await other.getByLabel('E-mail', { exact: true }).fill(email('ann'));
  await other.getByLabel('Password', { exact: true }).fill('not the password');
  await other.locator('#signin-submit').click();
  await expect(other.getByRole('alert')).toContainText(/credentials are invalid/i);
});

test('a broadcast reaches everyone', async ({}, info) => {
  const text = `hello everyone ${run}`;
  await send(ann, text);
  for (const page of [ann, bob, cy]) {
    await expect(feed(page).locator('.text', { hasText: text })).toHaveCount(1);
  }
  await shot(bob, info, '02-feed');
});

test('a direct message reaches only its recipient (and its sender)', async () => {
  const secret = `psst ${run}`;
  const after = `after the direct message ${run}`;
  await send(bob, secret, email('ann'));
  await expect(item(ann, `${email('bob')} → you: ${secret}`)).toHaveCount(1);
  await expect(feed(bob).locator('.text', { hasText: secret })).toHaveCount(1);
  // Same sender, same partition, commit order: once cy has the later broadcast, the direct
  // message would have arrived before it if cy could see it.
  await send(bob, after);
  await expect(feed(cy).locator('.text', { hasText: after })).toHaveCount(1);
  await expect(feed(cy).locator('.text', { hasText: secret })).toHaveCount(0);
});

test('upload from the page, list, download the same bytes, credits down by one, delete', async ({}, info) => {
  const credits = ann.getByTestId('credits');
  await expect(credits).toHaveText('10');
  // a real PNG (1×1, red)
  const png = Buffer.from(
    'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==',
    'base64',
  );
  await ann.getByLabel(/^File/).setInputFiles({ name: 'pixel.png', mimeType: 'image/png', buffer: png });
  await ann.getByRole('button', { name: 'Upload' }).click();
  await expect(ann.getByTestId('upload-status')).toHaveText('Uploaded pixel.png.', { timeout: 60_000 });
  await expect(ann.locator('#upload-progress')).toHaveJSProperty('value', 100);
  const row = ann.getByTestId('files').locator('li', { hasText: 'pixel.png' });
  await expect(row).toHaveCount(1);
  await expect(credits).toHaveText('9');
  await expect(item(ann, 'Uploaded pixel.png')).toHaveCount(1);
  await shot(ann, info, '03-media');

  const [download] = await Promise.all([
    ann.waitForEvent('download'),
    ann.getByRole('button', { name: 'Download pixel.png' }).click(),
  ]);
  expect(download.suggestedFilename()).toBe('pixel.png');
  expect(readFileSync(await download.path())).toEqual(png);
  await expect(item(ann, 'Download of pixel.png ready')).toHaveCount(1);

  await ann.getByRole('button', { name: 'Delete pixel.png' }).click();
  await expect(row).toHaveCount(0);
  await expect(item(ann, 'Deleted pixel.png')).toHaveCount(1);
  await expect(credits).toHaveText('9');
});

test('a refused upload shows its error and costs nothing', async () => {
  await ann.getByLabel(/^File/).setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hi') });
  await ann.getByRole('button', { name: 'Upload' }).click();
  await expect(ann.getByRole('alert')).toContainText('media_type');
  await expect(ann.getByTestId('upload-status')).toHaveText('Upload refused.');
  await expect(ann.getByTestId('credits')).toHaveText('9');
});

test('a reload in the middle of a stream of messages loses nothing and repeats nothing', async () => {
  const count = 40;
  let burstDone = false;
  // bob's page posts the burst with his own session (the same calls the app makes)
  const burst = bob
    .evaluate(
      async ({ run, count }) => {
        const config = await (await fetch('/app-config.json')).json();
        const session = await (await fetch(`${config.auth_url}/sessions/whoami?tokenize_as=gateway`, { credentials: 'include' })).json();
        for (let i = 1; i <= count; i++) {
          const response = await fetch('/api/v1/events/message', {
            method: 'POST',
            headers: { Authorization: `Bearer ${session.tokenized}`, 'Content-Type': 'application/json' },
            body: JSON.stringify({ message: `burst ${run} #${i}`, visibility: 'broadcast' }),
          });
          if (response.status !== 202) throw new Error(`post ${i}: ${response.status}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      },
      { run, count },
    )
    .then(() => {
      burstDone = true;
    });
  const burstItems = feed(ann).locator('.text', { hasText: `burst ${run} #` });
  await expect.poll(() => burstItems.count()).toBeGreaterThanOrEqual(5);
  const seenBefore = await burstItems.count();
  expect(burstDone, 'the burst must still be running when the page reloads').toBe(false);
  expect(seenBefore).toBeLessThan(count);
  await ann.reload();
  await expect(ann.getByTestId('feed-state')).toHaveText('live');
  await burst;
  for (let i = 1; i <= count; i++) {
    await expect(item(ann, `${email('bob')}: burst ${run} #${i}`)).toHaveCount(1);
  }
  // and in cursor order: newest first in the list, so #count is above #1
  const texts = await burstItems.allTextContents();
  expect(texts.map((t) => Number(t.split('#').pop()))).toEqual(Array.from({ length: count }, (_, i) => count - i));
});

test('works at phone width', async ({}, info) => {
  await ann.setViewportSize({ width: 390, height: 844 });
  await expect(ann.getByRole('heading', { name: 'Notifications' })).toBeVisible();
  const overflow = await ann.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow).toBeLessThanOrEqual(0);
  await shot(ann, info, '04-phone');
});

test('the bundle holds no secret of the stack, and pages carry a content security policy', async ({ request }) => {
  const secrets = [
    'JWT_SECRET',
    'LOGIN_WEBHOOK_SECRET',
    'MEDIA_WEBHOOK_SECRET',
    'S3_ACCESS_KEY_ID',
    'S3_SECRET_ACCESS_KEY',
    'API_KEY_PEPPER',
    'SUBSTRATE_SECRETS__KEYS',
  ]
    .map((name) => [name, process.env[name] ?? stackEnv()[name]] as const)
    .filter((entry): entry is readonly [string, string] => !!entry[1] && entry[1].length >= 8);
  expect(secrets.length, 'the stack environment is loaded').toBeGreaterThanOrEqual(5);
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else files.push(path);
    }
  };
  walk(fileURLToPath(new URL('../dist', import.meta.url)));
  expect(files.some((f) => f.endsWith('.js'))).toBe(true);
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    for (const [name, value] of secrets) {
      expect(text.includes(value), `${name} in ${file}`).toBe(false);
    }
  }
  const page = await request.get('/');
  expect(page.status()).toBe(200);
  expect(page.headers()['content-security-policy']).toContain("default-src 'self'");
  const config = await (await request.get('/app-config.json')).json();
  expect(Object.keys(config)).toEqual(['auth_url']);
});
