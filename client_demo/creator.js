// creator.js — the creator's panel on their own story item: live view count, seen-by list
// (GET /stories/{id}/viewers, then grown by story.viewed), reactions and replies as they come.

import { ago, avatar, el, errorText, icon, toast } from './ui.js';

export class CreatorPanel {
  constructor(client, { onPause, onDelete }) {
    this.client = client;
    this.onPause = onPause;
    this.onDelete = onDelete;
    this.counts = new Map(); // item id → latest view count from any source
    this.viewers = new Map(); // user id → {user, seen_at, reaction} for the shown item
    this.replies = [];
    this.item = null;
    this._build();
    client.addEventListener('story.view_count', (e) => this._count(e.detail.item_id, e.detail.view_count));
    client.addEventListener('story.viewed', (e) => this._viewed(e.detail));
    client.addEventListener('story.reaction', (e) => this._reaction(e.detail));
    client.addEventListener('story.reply', (e) => this._reply(e.detail));
  }

  _build() {
    this.countEl = el('span', { dataset: { testid: 'view-count' } }, '0');
    this.toggle = el('button', { type: 'button', class: 'views', 'aria-expanded': 'false',
      'aria-controls': 'seen-by-sheet', onclick: () => this._open(!this.expanded) },
    icon('eye'), this.countEl, el('span', { class: 'views-word' }, ' views'));
    const del = el('button', { type: 'button', class: 'danger', onclick: () => this._delete() }, 'Delete');
    this.list = el('ul', { class: 'people-list', dataset: { testid: 'viewers-list' },
      'aria-label': 'Seen by' });
    this.more = el('button', { type: 'button', class: 'link', hidden: true,
      onclick: () => this._loadViewers(this.cursor) }, 'Show more');
    this.replyList = el('ul', { class: 'replies', 'aria-label': 'Replies' });
    this.sheet = el('div', { class: 'seen-by', id: 'seen-by-sheet', hidden: true },
      el('h3', {}, 'Seen by'), this.list, this.more,
      el('h3', {}, 'Replies'), this.replyList);
    this.root = el('section', { class: 'creator', 'aria-label': 'Your story activity' },
      this.sheet, el('div', { class: 'row' }, this.toggle, del));
  }

  get expanded() { return this.toggle.getAttribute('aria-expanded') === 'true'; }

  _open(on) {
    this.toggle.setAttribute('aria-expanded', String(on));
    this.sheet.hidden = !on;
    this.onPause(on);
  }

  /** Show the panel for one own item (the viewer calls this as the item is shown). */
  show(item) {
    if (this.item?.id === item.id) return;
    this.item = item;
    this.viewers = new Map();
    this.replies = [];
    this.cursor = null;
    if (item.view_count !== null && item.view_count !== undefined) {
      this.counts.set(item.id, Math.max(item.view_count, this.counts.get(item.id) || 0));
    }
    this._renderCount();
    this._renderViewers();
    this._renderReplies();
    this._loadViewers(null);
    this._loadReplies();
  }

  hide() {
    if (this.expanded) this._open(false);
    this.item = null;
  }

  async _loadViewers(cursor) {
    const id = this.item.id;
    const q = cursor ? `?cursor=${encodeURIComponent(cursor)}` : '';
    try {
      const page = await this.client.get(`/stories/${encodeURIComponent(id)}/viewers${q}`);
      if (this.item?.id !== id) return;
      for (const v of page.items) if (!this.viewers.has(v.user.id)) this.viewers.set(v.user.id, v);
      // Counts only grow; a live event may already have gone past this answer.
      if (!cursor && Number.isInteger(page.count)) this.counts.set(id, Math.max(page.count, this.counts.get(id) || 0));
      this.cursor = page.next_cursor;
      this._renderCount();
      this._renderViewers();
    } catch (err) {
      if (this.item?.id === id && err.status !== 404) toast(errorText(err), 'error');
    }
  }

  async _loadReplies() {
    const id = this.item.id;
    try {
      const page = await this.client.get(`/stories/${encodeURIComponent(id)}/replies`);
      if (this.item?.id !== id) return;
      const live = this.replies;
      this.replies = [...page.items, ...live.filter((r) => !page.items.some((p) => same(p, r)))];
      this._renderReplies();
    } catch { /* the replies list is an extension; the live events still work */ }
  }

  // ---- live events -----------------------------------------------------------

  _count(itemId, n) {
    if (!Number.isInteger(n)) return;
    this.counts.set(itemId, n);
    if (this.item?.id === itemId) this._renderCount();
  }

  _viewed({ item_id: itemId, viewer, seen_at: seenAt, view_count: n }) {
    this._count(itemId, n);
    if (this.item?.id !== itemId || !viewer) return;
    const old = this.viewers.get(viewer.id);
    this.viewers.set(viewer.id, { user: viewer, seen_at: seenAt, reaction: old?.reaction || null });
    this._renderViewers();
  }

  _reaction({ item_id: itemId, user, emoji, ts }) {
    if (this.item?.id !== itemId || !user) return;
    const old = this.viewers.get(user.id);
    this.viewers.set(user.id, { user, seen_at: old?.seen_at || ts, reaction: emoji });
    this._renderViewers();
  }

  _reply({ item_id: itemId, user, text, ts }) {
    if (this.item?.id !== itemId || !user) return;
    this.replies.push({ item_id: itemId, user, text, created_at: ts });
    this._renderReplies();
  }

  // ---- rendering -----------------------------------------------------------

  _renderCount() {
    const n = this.counts.get(this.item?.id) ?? 0;
    this.countEl.textContent = String(n);
    this.toggle.querySelector('.views-word').textContent = n === 1 ? ' view' : ' views';
    this.toggle.setAttribute('aria-label', `Seen by ${n} ${n === 1 ? 'person' : 'people'}`);
  }

  _renderViewers() {
    const rows = [...this.viewers.values()]
      .sort((a, b) => Date.parse(b.seen_at || 0) - Date.parse(a.seen_at || 0))
      .map((v) => el('li', { dataset: { user: v.user.handle } }, avatar(v.user, 'sm'),
        el('span', { class: 'grow' }, v.user.handle),
        v.reaction ? el('span', { class: 'reaction', 'aria-label': `reacted ${v.reaction}` }, v.reaction) : null,
        v.seen_at ? el('time', { class: 'muted', datetime: v.seen_at }, ago(v.seen_at)) : null));
    this.list.replaceChildren(...(rows.length ? rows : [el('li', { class: 'muted' }, 'No views yet')]));
    this.more.hidden = !this.cursor;
  }

  _renderReplies() {
    const rows = this.replies.map((r) => el('li', {}, avatar(r.user, 'sm'),
      el('span', { class: 'grow' }, el('strong', {}, r.user.handle), ' ', r.text)));
    this.replyList.replaceChildren(...(rows.length ? rows : [el('li', { class: 'muted' }, 'No replies yet')]));
  }

  async _delete() {
    const item = this.item;
    if (!item || !confirm('Delete this item from your story?')) return;
    try {
      await this.client.del(`/stories/${encodeURIComponent(item.id)}`);
      toast('Deleted from your story');
      this.item = null;
      this.onDelete(item);
    } catch (err) { toast(errorText(err), 'error'); }
  }
}

function same(a, b) {
  return a.user.id === b.user.id && a.text === b.text;
}
