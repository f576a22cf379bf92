// people.js — follow / unfollow and close friends. There is no search endpoint: the lists
// come from /me/following, /me/followers, /me/close-friends, and a box looks up one handle.

import { avatar, el, errorText, icon, toast } from './ui.js';

const MAX_PAGES = 10;

export class People {
  constructor(dialog, client, { onChanged }) {
    this.dialog = dialog;
    this.client = client;
    this.onChanged = onChanged;
    this.users = new Map(); // id → User
    this.following = new Set();
    this.followers = new Set();
    this.closeFriends = new Set();
    this.found = null;
    this._build();
  }

  _build() {
    this.lookup = el('input', { type: 'search', id: 'people-lookup', autocomplete: 'off',
      autocapitalize: 'none', spellcheck: 'false', placeholder: 'handle, e.g. bob' });
    this.lookupError = el('p', { class: 'error', role: 'alert' });
    this.foundBox = el('div', { class: 'found' });
    this.lists = el('div', { class: 'people-lists', 'aria-busy': 'true' });
    const form = el('form', { class: 'row nowrap lookup', role: 'search', onsubmit: (e) => this._find(e) },
      el('label', { for: 'people-lookup', class: 'visually-hidden' }, 'Find a user by handle'),
      this.lookup, el('button', { type: 'submit' }, 'Find'));
    this.dialog.append(el('div', { class: 'people' },
      el('div', { class: 'sheet-head' },
        el('h2', { id: 'people-title' }, 'People'),
        el('button', { type: 'button', class: 'icon-button', 'aria-label': 'Close',
          onclick: () => this.dialog.close() }, icon('close'))),
      form, this.lookupError, this.foundBox, this.lists));
  }

  async open() {
    if (!this.dialog.open) this.dialog.showModal();
    this.lookup.focus();
    await this.reload();
  }

  async reload() {
    this.lists.setAttribute('aria-busy', 'true');
    try {
      const [following, followers, close] = await Promise.all(
        ['/me/following', '/me/followers', '/me/close-friends'].map((p) => this._all(p)));
      this.following = new Set(following.map((u) => u.id));
      this.followers = new Set(followers.map((u) => u.id));
      this.closeFriends = new Set(close.map((u) => u.id));
      for (const u of [...following, ...followers, ...close]) this.users.set(u.id, u);
      this.order = { following, followers, close };
      this._render();
    } catch (err) {
      this.lists.replaceChildren(el('p', { class: 'error' }, errorText(err)));
    }
    this.lists.setAttribute('aria-busy', 'false');
  }

  async _all(path) {
    const out = [];
    let cursor = null;
    for (let page = 0; page < MAX_PAGES; page += 1) {
      const q = `?limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const res = await this.client.get(path + q);
      out.push(...res.items);
      cursor = res.next_cursor;
      if (!cursor) break;
    }
    return out;
  }

  async _find(e) {
    e.preventDefault();
    const handle = this.lookup.value.trim().replace(/^@/, '').toLowerCase();
    this.lookupError.textContent = '';
    this.found = null;
    this.foundBox.replaceChildren();
    if (!handle) return;
    try {
      const user = await this.client.get(`/users/${encodeURIComponent(handle)}`);
      this.users.set(user.id, user);
      this.found = user;
      this._renderFound();
    } catch (err) {
      this.lookupError.textContent = err.status === 404 ? `No user called "${handle}".` : errorText(err);
    }
  }

  _render() {
    const section = (title, users, empty) => el('section', {},
      el('h3', {}, `${title} (${users.length})`),
      users.length ? el('ul', { class: 'people-list' }, users.map((u) => this._row(u, title !== 'Followers')))
        : el('p', { class: 'muted' }, empty));
    const { following, followers, close } = this.order;
    this.lists.replaceChildren(
      section('Following', following.filter((u) => this.following.has(u.id)), 'You follow nobody yet.'),
      section('Followers', followers, 'Nobody follows you yet.'),
      section('Close friends', close.filter((u) => this.closeFriends.has(u.id)),
        'Mark followers as close friends to share "Close friends" stories with them.'));
    this._renderFound();
  }

  _renderFound() {
    if (!this.found) return this.foundBox.replaceChildren();
    this.foundBox.replaceChildren(el('h3', {}, 'Found'),
      el('ul', { class: 'people-list' }, this._row(this.found, true)));
  }

  _row(user, noteFollower) {
    if (user.id === this.client.user?.id) {
      return el('li', {}, avatar(user, 'sm'), el('span', { class: 'grow' }, user.handle),
        el('span', { class: 'muted' }, 'That’s you'));
    }
    const following = this.following.has(user.id);
    const close = this.closeFriends.has(user.id);
    return el('li', { dataset: { user: user.handle } }, avatar(user, 'sm'),
      el('span', { class: 'grow' }, user.handle,
        noteFollower && this.followers.has(user.id) ? el('span', { class: 'muted small' }, ' · follows you') : null),
      el('button', { type: 'button', class: following ? '' : 'primary',
        'aria-pressed': String(following), 'aria-label': `${following ? 'Unfollow' : 'Follow'} ${user.handle}`,
        dataset: { testid: `follow-${user.handle}` },
        onclick: () => this._toggle('following', user, !following) }, following ? 'Following' : 'Follow'),
      el('button', { type: 'button', class: `star${close ? ' on' : ''}`, 'aria-pressed': String(close),
        'aria-label': `${close ? 'Remove' : 'Add'} ${user.handle} ${close ? 'from' : 'to'} close friends`,
        title: 'Close friend', dataset: { testid: `close-friend-${user.handle}` },
        onclick: () => this._toggle('close-friends', user, !close) }, close ? '★' : '☆'));
  }

  async _toggle(kind, user, on) {
    try {
      await this.client.request(on ? 'PUT' : 'DELETE', `/me/${kind}/${encodeURIComponent(user.id)}`);
      const set = kind === 'following' ? this.following : this.closeFriends;
      const list = kind === 'following' ? this.order.following : this.order.close;
      if (on) {
        set.add(user.id);
        if (!list.some((u) => u.id === user.id)) list.unshift(user);
      } else set.delete(user.id);
      toast(kind === 'following'
        ? `${on ? 'Following' : 'Unfollowed'} ${user.handle}`
        : `${user.handle} ${on ? 'added to' : 'removed from'} close friends`);
      this._render();
      if (kind === 'following') this.onChanged?.();
    } catch (err) { toast(errorText(err), 'error'); }
  }
}
