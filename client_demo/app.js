// app.js — wires the client to the screens: sign in, tray, viewer, composer, live, people.

import { Composer } from './composer.js';
import { LiveCapture } from './live.js';
import { People } from './people.js';
import { StoriesClient } from './stories-client.js';
import { TrayView } from './tray.js';
import { avatar, el, errorText, icon, toast } from './ui.js';
import { Viewer } from './viewer.js';

const DEMO_USERS = ['alice', 'bob', 'carol', 'dan', 'erin', 'frank'];
const $ = (id) => document.getElementById(id);

$('open-people').append(icon('people'));
$('sign-out').append(icon('signout'));

const client = new StoriesClient();
window.storiesClient = client; // handy in the console and for tests

const viewer = new Viewer($('viewer'), client);
const composer = new Composer($('composer'), client, { onPosted: () => {} });
const live = new LiveCapture($('live'), client, { onPosted: () => {} });
const people = new People($('people'), client, {
  onChanged: () => client.refreshTray().catch(() => {}),
});
const tray = new TrayView($('tray'), {
  onOpen: (entry) => viewer.open(entry),
  onAdd: () => composer.open(),
});

// ---- sign in -------------------------------------------------------------------

function showLogin() {
  $('main-screen').hidden = true;
  $('login-screen').hidden = false;
  $('login-handle').focus();
}

function showMain() {
  $('login-screen').hidden = true;
  $('main-screen').hidden = false;
  $('me-handle').textContent = client.user.handle;
  $('activity').replaceChildren();
  $('activity-empty').hidden = false;
  $('tray').setAttribute('aria-busy', 'true');
  tray.render(client.tray, client.user);
  client.start();
}

$('demo-users').append(...DEMO_USERS.map((h) => el('button', {
  type: 'button', class: 'chip', 'aria-label': `Use demo user ${h}`,
  onclick: () => { $('login-handle').value = h; $('login-handle').focus(); },
}, h)));

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const handle = $('login-handle').value.trim().replace(/^@/, '').toLowerCase();
  const error = $('login-error');
  error.textContent = '';
  if (!/^[a-z0-9._]{1,30}$/.test(handle)) {
    error.textContent = 'A handle is 1–30 characters: a–z, 0–9, "." and "_".';
    return;
  }
  const button = e.submitter || e.target.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    await client.login(handle);
    showMain();
  } catch (err) {
    error.textContent = errorText(err);
  } finally {
    button.disabled = false;
  }
});

$('sign-out').addEventListener('click', () => client.logout());

client.addEventListener('auth', (e) => {
  if (!e.detail.user) {
    for (const d of document.querySelectorAll('dialog[open]')) d.close();
    showLogin();
  }
});

// ---- tray and connection -------------------------------------------------------------

client.addEventListener('tray', (e) => {
  tray.render(e.detail.items, client.user);
  const others = e.detail.items.filter((t) => t.owner.id !== client.user?.id);
  $('tray-empty').hidden = others.length > 0;
});

const STATUS_TEXT = { connected: 'Connected', connecting: 'Connecting…', reconnecting: 'Reconnecting…' };
client.addEventListener('connection', (e) => {
  const { state, delay } = e.detail;
  const status = $('connection-status');
  status.dataset.state = state === 'connected' ? 'connected' : 'reconnecting';
  status.textContent = STATUS_TEXT[state] || 'Offline';
  status.title = state === 'reconnecting' && delay !== undefined
    ? `Reconnecting in ${Math.ceil(delay / 1000)} s` : '';
});

client.addEventListener('error', (e) => toast(errorText(e.detail.error), 'error'));

// ---- live activity on my stories --------------------------------------------------------

function activity(user, text) {
  $('activity-empty').hidden = true;
  $('activity').prepend(el('li', {}, avatar(user, 'sm'),
    el('span', { class: 'grow' }, el('strong', {}, user.handle), ' ', text),
    el('time', { class: 'muted' }, 'now')));
  while ($('activity').children.length > 30) $('activity').lastChild.remove();
}

client.addEventListener('story.reaction', (e) => {
  const { user, emoji } = e.detail;
  activity(user, `reacted ${emoji} to your story`);
  if (!viewer.isOpen) toast(`${user.handle} reacted ${emoji}`);
});
client.addEventListener('story.reply', (e) => {
  const { user, text } = e.detail;
  activity(user, `replied: “${text}”`);
  if (!viewer.isOpen) toast(`${user.handle} replied: ${text}`);
});
client.addEventListener('capture.failed', (e) => {
  if (!$('live').open) toast(`Live capture failed: ${e.detail.detail || 'unknown error'}`, 'error');
});

// ---- buttons ------------------------------------------------------------------------------

$('go-live').addEventListener('click', () => live.open());
$('new-live').addEventListener('click', () => live.open());
$('new-story').addEventListener('click', () => composer.open());
$('open-people').addEventListener('click', () => people.open());
$('empty-people').addEventListener('click', () => people.open());

// ---- boot ---------------------------------------------------------------------------------

(async () => {
  try {
    if (await client.restore()) return showMain();
  } catch (err) {
    $('login-error').textContent = errorText(err);
  }
  showLogin();
})();
