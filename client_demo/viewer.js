// viewer.js — the full-screen story viewer.
//
// Segmented progress, auto-advance (photos 5 s, videos their length), tap right/left or
// arrow keys for next/previous, hold or Space to pause, Escape or swipe down to close.
// Opens at the first unseen item, marks each item seen as it is shown, then moves on to
// the next creator with unseen items. Others' stories: reply, react, share to my story.
// Own stories: the creator's panel (view count, seen-by, replies, delete).

import { CreatorPanel } from './creator.js';
import { ago, audienceLabel, avatar, el, errorText, icon, toast } from './ui.js';

const PHOTO_MS = 5000;
const HOLD_MS = 220;
const SWIPE_PX = 90;
const REACTIONS = ['❤️', '😂', '😮', '😢', '🔥', '👏'];

export class Viewer {
  constructor(dialog, client) {
    this.dialog = dialog;
    this.client = client;
    this.items = [];
    this.index = 0;
    this.pauses = new Set();
    this.seq = 0;
    this._build();
    this.panel = new CreatorPanel(client, {
      onPause: (on) => this._pause('panel', on),
      onDelete: (item) => this._deleted(item.id),
    });
    this.ownFoot.append(this.panel.root);
    client.addEventListener('story.removed', (e) => this._removed(e.detail.item_id));
    client.addEventListener('story.new', (e) => this._added(e.detail.item));
    document.addEventListener('visibilitychange', () => this._pause('hidden', document.hidden));
  }

  // ---- DOM -----------------------------------------------------------------

  _build() {
    const d = this.dialog;
    this.progress = el('div', { class: 'progress', dataset: { testid: 'progress' },
      role: 'progressbar', 'aria-valuemin': '0' });
    this.who = el('div', { class: 'who' });
    this.pauseBtn = el('button', { type: 'button', class: 'icon-button', 'aria-label': 'Pause',
      'aria-pressed': 'false', onclick: () => this._pause('user', !this.pauses.has('user')) }, icon('pause'));
    this.muteBtn = el('button', { type: 'button', class: 'icon-button', 'aria-label': 'Mute',
      'aria-pressed': 'false', hidden: true, onclick: () => this._toggleMute() }, icon('sound'));
    const closeBtn = el('button', { type: 'button', class: 'icon-button', 'aria-label': 'Close',
      onclick: () => this.close() }, icon('close'));
    this.stage = el('div', { class: 'stage' });
    this.caption = el('p', { class: 'caption' });
    // Tap zones: real buttons, out of the tab order (arrow keys do the same) and never
    // taking focus on a click, so Space keeps meaning "pause".
    this.prevBtn = el('button', { type: 'button', class: 'tap prev', 'aria-label': 'Previous',
      tabindex: '-1', onmousedown: (e) => e.preventDefault() });
    this.nextBtn = el('button', { type: 'button', class: 'tap next', 'aria-label': 'Next',
      tabindex: '-1', onmousedown: (e) => e.preventDefault() });
    this.prevBtn.addEventListener('click', () => this._tap(() => this.prev()));
    this.nextBtn.addEventListener('click', () => this._tap(() => this.next()));

    this.replyInput = el('input', { type: 'text', class: 'reply-input', maxlength: '1000',
      autocomplete: 'off', 'aria-label': 'Reply' });
    const replyForm = el('form', { class: 'reply', onsubmit: (e) => this._reply(e) },
      this.replyInput, el('button', { type: 'submit', class: 'send' }, 'Send'));
    this.replyInput.addEventListener('focus', () => this._pause('typing', true));
    this.replyInput.addEventListener('blur', () => this._pause('typing', false));
    const reactions = el('div', { class: 'reactions', role: 'group', 'aria-label': 'React' },
      REACTIONS.map((emoji) => el('button', { type: 'button', class: 'emoji',
        'aria-label': `React ${emoji}`, onclick: () => this._react(emoji) }, emoji)));
    this.shareBtn = el('button', { type: 'button', class: 'share', 'aria-label': 'Share to my story',
      title: 'Share to my story', onclick: () => this._share() }, icon('share'));
    this.otherFoot = el('div', { class: 'viewer-foot' },
      el('div', { class: 'row nowrap' }, replyForm, this.shareBtn), reactions);
    this.ownFoot = el('div', { class: 'viewer-foot own' });

    this.frame = el('div', { class: 'viewer-frame', tabindex: '-1',
      'aria-keyshortcuts': 'ArrowLeft ArrowRight Space Escape' },
      this.stage, this.prevBtn, this.nextBtn,
      el('div', { class: 'viewer-top' }, this.progress,
        el('div', { class: 'viewer-head' }, this.who, this.muteBtn, this.pauseBtn, closeBtn)),
      el('div', { class: 'viewer-bottom' }, this.caption, this.otherFoot, this.ownFoot));
    d.append(this.frame);

    d.addEventListener('cancel', (e) => { e.preventDefault(); this.close(); });
    d.addEventListener('close', () => this._teardown());
    d.addEventListener('keydown', (e) => this._key(e));
    this._gestures();
  }

  _gestures() {
    let start = null;
    let holdTimer = 0;
    const down = (e) => {
      if (e.button !== 0 || e.target.closest('.viewer-bottom, .viewer-head')) return;
      start = { x: e.clientX, y: e.clientY };
      this._held = false;
      this._swiped = false;
      holdTimer = setTimeout(() => { this._held = true; this._pause('hold', true); }, HOLD_MS);
    };
    const move = (e) => {
      if (!start) return;
      const dy = e.clientY - start.y;
      if (Math.abs(dy) > 10 || Math.abs(e.clientX - start.x) > 10) clearTimeout(holdTimer);
      if (dy > 0) this.frame.style.transform = `translateY(${dy}px)`;
    };
    const up = (e) => {
      if (!start) return;
      clearTimeout(holdTimer);
      const dy = e.clientY - start.y;
      start = null;
      this.frame.style.transform = '';
      this._pause('hold', false);
      if (dy > SWIPE_PX) { this._swiped = true; this.close(); }
    };
    this.frame.addEventListener('pointerdown', down);
    this.frame.addEventListener('pointermove', move);
    this.frame.addEventListener('pointerup', up);
    this.frame.addEventListener('pointercancel', up);
  }

  /** A click on a tap zone navigates, unless it ended a hold or a swipe. */
  _tap(go) {
    if (this._held || this._swiped) { this._held = this._swiped = false; return; }
    go();
  }

  _key(e) {
    if (e.target.closest('input, textarea')) {
      if (e.key === 'Escape') { e.preventDefault(); e.target.blur(); }
      return;
    }
    if (e.key === 'ArrowRight') { e.preventDefault(); this.next(); }
    else if (e.key === 'ArrowLeft') { e.preventDefault(); this.prev(); }
    else if (e.key === ' ' && (!e.target.closest('button') || e.target.closest('.tap'))) {
      e.preventDefault();
      this._pause('user', !this.pauses.has('user'));
    }
  }

  // ---- opening, navigation ----------------------------------------------------

  /** Open at `entry`'s owner (a tray entry), at the first unseen item. */
  open(entry) {
    this.returnFocus = document.activeElement;
    this.visited = new Set();
    this.history = [];
    if (!this.dialog.open) this.dialog.showModal();
    this.frame.focus();
    this._load(entry.owner, 'unseen');
  }

  get isOpen() { return this.dialog.open; }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  _teardown() {
    this.seq += 1;
    cancelAnimationFrame(this.raf);
    this._clearMedia();
    this.pauses.clear();
    this.panel.hide();
    this.returnFocus?.focus?.();
  }

  async _load(owner, at) {
    const seq = ++this.seq;
    this.owner = owner;
    this.visited.add(owner.id);
    this.items = [];
    this._clearMedia();
    this._renderWho(owner, null);
    this.stage.replaceChildren(el('div', { class: 'spinner', 'aria-label': 'Loading' }));
    let res;
    try {
      res = await this.client.get(`/users/${encodeURIComponent(owner.id)}/stories`);
    } catch (err) {
      if (seq !== this.seq) return;
      if (err.status !== 404) toast(errorText(err), 'error');
      return this._nextOwner();
    }
    if (seq !== this.seq) return;
    this.owner = res.owner || owner;
    this.items = res.items || [];
    if (!this.items.length) return this._nextOwner();
    let index = 0;
    if (at === 'last') index = this.items.length - 1;
    else if (res.first_unseen_id) index = Math.max(0, this.items.findIndex((i) => i.id === res.first_unseen_id));
    this._show(index);
  }

  next() {
    if (this.index < this.items.length - 1) this._show(this.index + 1);
    else this._nextOwner();
  }

  prev() {
    if (this.index > 0) this._show(this.index - 1);
    else if (this.history.length) this._load(this.history.pop(), 'last');
    else this._show(0);
  }

  _nextOwner() {
    const me = this.client.user?.id;
    const next = this.client.tray.find((e) => e.has_unseen && e.owner.id !== me &&
      e.owner.id !== this.owner?.id && !this.visited.has(e.owner.id));
    if (!next) return this.close();
    if (this.owner) this.history.push(this.owner);
    this._load(next.owner, 'unseen');
  }

  // ---- showing one item ----------------------------------------------------

  _show(index) {
    const seq = ++this.seq;
    this.index = index;
    const item = this.items[index];
    const own = item.owner.id === this.client.user?.id;
    this._clearMedia();
    this.elapsed = 0;
    this.failed = false;
    this.pauses.delete('hold');
    this._pause('loading', true);
    this._renderProgress();
    this._renderWho(item.owner, item);
    this.caption.textContent = item.caption || '';
    this.caption.hidden = !item.caption;
    this.otherFoot.hidden = own;
    this.ownFoot.hidden = !own;
    this.replyInput.placeholder = `Reply to ${item.owner.handle}…`;
    this.replyInput.setAttribute('aria-label', `Reply to ${item.owner.handle}`);
    if (own) this.panel.show(item);
    else this.panel.hide();

    const alt = item.caption || `${item.media.kind === 'video' ? 'Video' : 'Photo'} by ${item.owner.handle}`;
    const ready = () => {
      if (seq !== this.seq) return;
      this._pause('loading', false);
      this._markSeen(item, own);
    };
    const failed = () => {
      if (seq !== this.seq) return;
      this.failed = true;
      this.stage.replaceChildren(el('p', { class: 'unavailable' }, 'This story is no longer available.'));
      this._pause('loading', false);
    };
    if (item.media.kind === 'video') {
      const video = el('video', { src: item.media.url, poster: item.media.poster_url || undefined,
        playsinline: true, preload: 'auto', 'aria-label': alt });
      video.muted = !!this.muted;
      video.addEventListener('loadeddata', ready, { once: true });
      video.addEventListener('error', failed, { once: true });
      video.addEventListener('ended', () => { if (seq === this.seq) this.next(); });
      this.media = video;
      this.muteBtn.hidden = false;
      this._syncMute();
    } else {
      const img = el('img', { src: item.media.url, alt, decoding: 'async' });
      img.addEventListener('load', ready, { once: true });
      img.addEventListener('error', failed, { once: true });
      this.media = img;
      this.muteBtn.hidden = true;
    }
    this.stage.replaceChildren(this.media);
    this._preload(index + 1);
    this._applyPause();
    cancelAnimationFrame(this.raf);
    this.last = performance.now();
    this.raf = requestAnimationFrame((t) => this._tick(t, seq));
  }

  /** `item` is on screen: report it shown (its view), then update the ring locally. */
  _markSeen(item, own) {
    if (own) return;
    this.client.markSeen(item.id); // also for an item already seen by the read pointer
    if (item.seen) return;
    item.seen = true;
    const nextUnseen = this.items.slice(this.index + 1).find((i) => !i.seen);
    this.client.noteSeen(item.owner.id, nextUnseen ? nextUnseen.id : null);
  }

  _tick(now, seq) {
    if (seq !== this.seq) return;
    const dt = Math.min(now - this.last, 250);
    this.last = now;
    let fraction;
    if (this.media?.tagName === 'VIDEO' && !this.failed) {
      const durMs = this.items[this.index].media.duration_ms || this.media.duration * 1000;
      fraction = durMs > 0 ? (this.media.currentTime * 1000) / durMs : 0;
    } else {
      if (!this.pauses.size) this.elapsed += dt;
      fraction = this.elapsed / PHOTO_MS;
      if (fraction >= 1) return this.next();
    }
    this._fill(Math.min(1, fraction));
    this.raf = requestAnimationFrame((t) => this._tick(t, seq));
  }

  _renderProgress() {
    const segs = this.items.map((_, i) =>
      el('div', { class: 'seg' }, el('div', { class: 'fill', style: `width:${i < this.index ? 100 : 0}%` })));
    this.progress.replaceChildren(...segs);
    this.progress.setAttribute('aria-valuemax', String(this.items.length));
    this.progress.setAttribute('aria-valuenow', String(this.index + 1));
    this.progress.setAttribute('aria-label', `Story ${this.index + 1} of ${this.items.length}`);
  }

  _fill(fraction) {
    const fill = this.progress.children[this.index]?.firstChild;
    if (fill) fill.style.width = `${(fraction * 100).toFixed(2)}%`;
  }

  _renderWho(owner, item) {
    const bits = [avatar(owner, 'sm'), el('strong', {}, owner.handle)];
    if (item) {
      bits.push(el('time', { datetime: item.created_at, class: 'muted' }, ago(item.created_at)));
      if (item.audience === 'close_friends') bits.push(el('span', { class: 'badge cf' }, '★ Close friends'));
      else if (item.owner.id === this.client.user?.id) {
        bits.push(el('span', { class: 'badge' }, audienceLabel(item.audience)));
      }
      if (item.shared_from) bits.push(el('span', { class: 'badge' }, `↻ ${item.shared_from.owner.handle}`));
      if (item.source === 'capture') bits.push(el('span', { class: 'badge' }, 'Live'));
    }
    this.who.replaceChildren(...bits);
  }

  _preload(index) {
    const next = this.items[index];
    if (next && next.media.kind === 'image') new Image().src = next.media.url;
  }

  _clearMedia() {
    if (this.media?.tagName === 'VIDEO') {
      this.media.pause();
      this.media.removeAttribute('src');
      this.media.load();
    }
    this.media = null;
  }

  // ---- pause, mute -----------------------------------------------------------

  _pause(reason, on) {
    if (on) this.pauses.add(reason);
    else this.pauses.delete(reason);
    this._applyPause();
  }

  _applyPause() {
    const userPaused = this.pauses.has('user');
    this.pauseBtn.setAttribute('aria-pressed', String(userPaused));
    this.pauseBtn.setAttribute('aria-label', userPaused ? 'Play' : 'Pause');
    this.pauseBtn.replaceChildren(icon(userPaused ? 'play' : 'pause'));
    this.frame.classList.toggle('paused', this.pauses.size > 0 && !this.pauses.has('loading'));
    const video = this.media?.tagName === 'VIDEO' ? this.media : null;
    if (!video || !this.dialog.open) return;
    const blocking = [...this.pauses].filter((r) => r !== 'loading');
    if (blocking.length) video.pause();
    else if (video.paused && !video.ended) {
      video.play().catch((err) => {
        if (err.name === 'NotAllowedError' && !video.muted) {
          this.muted = true;
          video.muted = true;
          this._syncMute();
          video.play().catch(() => {});
        }
      });
    }
  }

  _toggleMute() {
    this.muted = !this.muted;
    if (this.media?.tagName === 'VIDEO') this.media.muted = this.muted;
    this._syncMute();
  }

  _syncMute() {
    this.muteBtn.setAttribute('aria-pressed', String(!!this.muted));
    this.muteBtn.setAttribute('aria-label', this.muted ? 'Unmute' : 'Mute');
    this.muteBtn.replaceChildren(icon(this.muted ? 'muted' : 'sound'));
  }

  // ---- actions on others' items --------------------------------------------------

  get current() { return this.items[this.index]; }

  async _react(emoji) {
    const item = this.current;
    if (!item) return;
    try {
      await this.client.post(`/stories/${encodeURIComponent(item.id)}/reactions`, { emoji });
      toast(`Sent ${emoji} to ${item.owner.handle}`);
    } catch (err) { toast(errorText(err), 'error'); }
  }

  async _reply(e) {
    e.preventDefault();
    const item = this.current;
    const text = this.replyInput.value.trim();
    if (!item || !text) return;
    try {
      await this.client.post(`/stories/${encodeURIComponent(item.id)}/replies`, { text });
      this.replyInput.value = '';
      this.replyInput.blur();
      toast(`Reply sent to ${item.owner.handle}`);
    } catch (err) { toast(errorText(err), 'error'); }
  }

  async _share() {
    const item = this.current;
    if (!item) return;
    this.shareBtn.disabled = true;
    try {
      const shared = await this.client.post(`/stories/${encodeURIComponent(item.id)}/share`, {});
      this.client.noteOwnItem(shared);
      toast('Shared to your story');
    } catch (err) { toast(errorText(err), 'error'); }
    this.shareBtn.disabled = false;
  }

  // ---- live changes --------------------------------------------------------

  _removed(itemId) {
    if (!this.dialog.open) return;
    const i = this.items.findIndex((it) => it.id === itemId);
    if (i < 0) return;
    this.items.splice(i, 1);
    if (!this.items.length) return this._nextOwner();
    if (i < this.index) { this.index -= 1; this._renderProgress(); }
    else if (i === this.index) this._show(Math.min(i, this.items.length - 1));
    else this._renderProgress();
  }

  _deleted(itemId) {
    const left = this.items.filter((it) => it.id !== itemId).length;
    this.client.noteOwnRemoved(left);
    if (!left) return this.close();
    this._removed(itemId);
  }

  _added(item) {
    if (!this.dialog.open || !item || item.owner.id !== this.owner?.id) return;
    if (this.items.some((it) => it.id === item.id)) return;
    this.items.push(item);
    this._renderProgress();
  }
}
