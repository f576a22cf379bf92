// ui.js — tiny DOM helpers shared by the views.

/** el('button', {class: 'x', onclick: fn, dataset: {testid: 'y'}}, 'text', child, …) */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const PALETTE = ['#e4405f', '#f77737', '#fcaf45', '#5851db', '#2a9d8f', '#8338ec', '#3a86ff', '#e76f51'];

/** A round avatar: the user's picture, or their initial on a colour picked from the handle. */
export function avatar(user, size = 'md') {
  const handle = user?.handle || '?';
  if (user?.avatar_url) {
    return el('img', { class: `avatar ${size}`, src: user.avatar_url, alt: '' });
  }
  let hash = 0;
  for (const ch of handle) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const node = el('span', { class: `avatar ${size}`, 'aria-hidden': 'true' }, handle[0].toUpperCase());
  node.style.background = PALETTE[hash % PALETTE.length];
  return node;
}

/** "now", "5m", "3h", "2d" since an RFC 3339 time. */
export function ago(iso, now = Date.now()) {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return 'now';
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** m:ss */
export function clock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/** A short message in the polite live region. */
export function toast(text, kind = 'info', ms = 3500) {
  const box = document.getElementById('toasts');
  const node = el('div', { class: `toast ${kind}` }, text);
  box.append(node);
  // A manual popover sits in the top layer, so toasts show above an open modal dialog;
  // re-showing it puts it above a dialog opened since.
  if (box.showPopover) {
    if (box.matches(':popover-open')) box.hidePopover();
    box.showPopover();
  }
  setTimeout(() => {
    node.remove();
    if (!box.children.length && box.matches?.(':popover-open')) box.hidePopover();
  }, ms);
}

/** The message to show for an error (ApiError carries the problem+json detail). */
export function errorText(err) {
  if (!err) return 'Something went wrong.';
  if (err.name === 'AbortError') return 'Cancelled.';
  const fields = (err.errors || []).map((e) => `${e.field}: ${e.detail}`).join('; ');
  return fields && !err.message.includes(fields) ? `${err.message} (${fields})` : err.message;
}

export const AUDIENCES = [
  ['followers', 'Followers'],
  ['close_friends', 'Close friends'],
  ['public', 'Public'],
];

export function audienceLabel(value) {
  return (AUDIENCES.find(([v]) => v === value) || [null, value])[1];
}

const ICONS = {
  close: '<path d="M6 6l12 12M18 6L6 18"/>',
  pause: '<path d="M8 5v14M16 5v14" stroke-width="3"/>',
  play: '<path d="M7 4l13 8-13 8z" fill="currentColor"/>',
  sound: '<path d="M4 9h4l5-4v14l-5-4H4z" fill="currentColor"/><path d="M16 9a4 4 0 010 6M18.5 6.5a8 8 0 010 11"/>',
  muted: '<path d="M4 9h4l5-4v14l-5-4H4z" fill="currentColor"/><path d="M16 9l5 6M21 9l-5 6"/>',
  people: '<circle cx="9" cy="8" r="3.5"/><path d="M2.5 20a6.5 6.5 0 0113 0"/><circle cx="17" cy="9" r="2.5"/><path d="M16 14.2a5 5 0 016 5.8"/>',
  signout: '<path d="M10 4H5v16h5M15 8l4 4-4 4M19 12H9"/>',
  share: '<path d="M4 12v7h16v-7M12 3v12M7 8l5-5 5 5"/>',
  eye: '<path d="M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12z"/><circle cx="12" cy="12" r="3"/>',
  camera: '<rect x="2.5" y="6" width="13" height="12" rx="2"/><path d="M15.5 10.5L21.5 7v10l-6-3.5z"/>',
  image: '<rect x="3" y="4" width="18" height="16" rx="2"/><circle cx="9" cy="10" r="2"/><path d="M21 16l-5-5-9 9"/>',
};

/** An inline SVG icon (decorative: the button around it carries the label). */
export function icon(name) {
  const span = document.createElement('span');
  span.className = 'icon';
  span.setAttribute('aria-hidden', 'true');
  span.innerHTML = `<svg viewBox="0 0 24 24" width="22" height="22" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">${ICONS[name]}</svg>`;
  return span;
}
