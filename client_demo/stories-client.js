// stories-client.js — a reusable, dependency-free client for the Stories API v1.
//
//   const client = new StoriesClient();
//   await client.login('alice');           // dev login; the token is kept in localStorage
//   client.addEventListener('tray', e => render(e.detail.items));
//   client.start();                         // WebSocket with reconnect + REST fallback
//
// Events (CustomEvent, `detail` in brackets):
//   'auth' {user|null} · 'connection' {state, attempt, delay} · 'tray' {items}
//   'error' {error} · 'event' {frame} · and one event per server frame type
//   ('story.new', 'story.viewed', 'capture.finished', …) with the frame as detail.
// Connection states: 'offline' (not started / signed out), 'connecting', 'connected',
// 'reconnecting'.

import { CLOSE, LOCAL } from './codes.js';

export const TOKEN_KEY = 'stories.token';

/** An HTTP error; `message` is the problem+json `detail` when the server sent one. */
export class ApiError extends Error {
  constructor(status, problem = null, retryAfterS = null) {
    super(problem?.detail || problem?.title || (status ? `HTTP ${status}` : 'Network error'));
    this.name = 'ApiError';
    this.status = status;
    this.problem = problem;
    this.errors = problem?.errors || [];
    this.retryAfterS = retryAfterS;
  }
}

/** PROTOCOL order: own entry first, then unseen by latest_at desc, then seen by latest_at desc. */
export function sortTray(entries, ownId) {
  const rank = (e) => (e.owner.id === ownId ? 0 : e.has_unseen ? 1 : 2);
  return [...entries].sort(
    (a, b) => rank(a) - rank(b) || Date.parse(b.latest_at) - Date.parse(a.latest_at),
  );
}

/** Exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)). */
export function backoffDelay(attempt, { baseMs = 500, capMs = 30000, random = Math.random } = {}) {
  return Math.floor(random() * Math.min(capMs, baseMs * 2 ** Math.max(0, attempt)));
}

/**
 * What to do after the socket closed with `code`/`reason`:
 * → {reconnect: false, signOut: true} for 4001; else {reconnect: true, delay, countsAsFailure}.
 */
export function closePlan(code, reason, attempt, random = Math.random) {
  if (code === CLOSE.WS_4001_UNAUTHORIZED) return { reconnect: false, signOut: true };
  let suggested = null; // a 1012 (restart) or 1013 (busy) may say how long to wait
  try {
    const ms = JSON.parse(reason || 'null')?.retry_after_ms;
    if (Number.isFinite(ms) && ms >= 0) suggested = Math.min(ms, 300000);
  } catch { /* reason was not JSON */ }
  const busy = code === CLOSE.WS_1013_TRY_AGAIN_LATER && suggested !== null;
  if (code === CLOSE.WS_1012_SERVICE_RESTART || busy) {
    // Service restart, or too many sockets signing in at once: not our fault; come back
    // after a jittered delay, never before the server's suggested wait.
    const delay = suggested === null
      ? 500 + Math.floor(random() * 4500)
      : suggested + Math.floor(random() * Math.max(250, suggested * 0.25));
    return { reconnect: true, delay, countsAsFailure: false };
  }
  // 1008 policy, 1009 too big, 1013 too slow a reader, 1006 network and anything else.
  return { reconnect: true, delay: backoffDelay(attempt, { random }), countsAsFailure: true };
}

export class StoriesClient extends EventTarget {
  constructor({
    baseUrl = '', storage = globalThis.localStorage, wsAuth = 'frame',
    fallbackMs = 3000, pollMs = 20000, pingMs = 25000, healthyMs = 10000,
  } = {}) {
    super();
    this.baseUrl = baseUrl;
    this.storage = storage;
    this.wsAuth = wsAuth; // 'frame' (first frame {"op":"auth"}) or 'query' (?token=)
    this.opts = { fallbackMs, pollMs, pingMs, healthyMs };
    this.token = storage?.getItem(TOKEN_KEY) || null;
    this.user = null;
    this.state = 'offline';
    this.tray = [];
    this._ws = null;
    this._wanted = false;
    this._attempt = 0;
    this._trayVersion = 0;
    this._timers = {};
    this._shown = new Set(); // item ids already reported shown (a view each), this page load
    this._onOnline = () => { if (this._wanted && !this._ws) this._reconnectNow(); };
  }

  // ---- auth ----------------------------------------------------------------

  async login(handle) {
    const res = await this.request('POST', '/auth/dev-login', { handle }, { auth: false });
    this._setToken(res.token);
    this.user = res.user;
    this._emit('auth', { user: this.user });
    return this.user;
  }

  /** The signed-in user from a stored token, or null (a dead token is dropped). */
  async restore() {
    if (!this.token) return null;
    try {
      this.user = await this.request('GET', '/me');
    } catch (err) {
      if (err.status === 401) return null;
      throw err;
    }
    this._emit('auth', { user: this.user });
    return this.user;
  }

  logout() {
    this.stop();
    this._setToken(null);
    this.user = null;
    this.tray = [];
    this._emit('tray', { items: [] });
    this._emit('auth', { user: null });
  }

  _setToken(token) {
    this.token = token;
    this._shown.clear();
    if (token) this.storage?.setItem(TOKEN_KEY, token);
    else this.storage?.removeItem(TOKEN_KEY);
  }

  _unauthorized() {
    if (!this.token) return;
    this.logout();
  }

  // ---- REST ----------------------------------------------------------------

  /** fetch under /api/v1 with the bearer token; JSON in, JSON (or null for 204) out. */
  async request(method, path, body = undefined, { auth = true, headers = {}, signal } = {}) {
    const init = { method, headers: { Accept: 'application/json', ...headers }, signal };
    if (auth && this.token) init.headers.Authorization = `Bearer ${this.token}`;
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(`${this.baseUrl}/api/v1${path}`, init);
    } catch (err) {
      if (err.name === 'AbortError') throw err;
      throw new ApiError(0, { detail: 'Cannot reach the server. Check your connection.' });
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 200) }; }
    }
    if (!res.ok) {
      const err = new ApiError(res.status, data, Number(res.headers.get('Retry-After')) || null);
      if (res.status === 401 && auth) this._unauthorized();
      throw err;
    }
    return data;
  }

  get(path, opts) { return this.request('GET', path, undefined, opts); }
  post(path, body = {}, opts) { return this.request('POST', path, body, opts); }
  put(path, opts) { return this.request('PUT', path, undefined, opts); }
  del(path, opts) { return this.request('DELETE', path, undefined, opts); }

  /**
   * POST /stories with a real upload progress (XMLHttpRequest).
   * → {promise (resolves to the StoryItem), abort()}. onProgress(fraction|null, loaded, total).
   */
  upload(file, { caption, audience, lifetime_h } = {}, { onProgress, idempotencyKey } = {}) {
    const xhr = new XMLHttpRequest();
    const promise = new Promise((resolve, reject) => {
      xhr.open('POST', `${this.baseUrl}/api/v1/stories`);
      xhr.setRequestHeader('Accept', 'application/json');
      if (this.token) xhr.setRequestHeader('Authorization', `Bearer ${this.token}`);
      if (idempotencyKey) xhr.setRequestHeader('Idempotency-Key', idempotencyKey);
      xhr.upload.onprogress = (e) =>
        onProgress?.(e.lengthComputable ? e.loaded / e.total : null, e.loaded, e.total);
      xhr.onload = () => {
        let data = null;
        try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { /* */ }
        if (xhr.status >= 200 && xhr.status < 300) {
          this.noteOwnItem(data);
          resolve(data);
        } else {
          if (xhr.status === 401) this._unauthorized();
          const retry = Number(xhr.getResponseHeader('Retry-After')) || null;
          reject(new ApiError(xhr.status, data, retry));
        }
      };
      xhr.onerror = () => reject(new ApiError(0, { detail: 'The upload failed: network error.' }));
      xhr.onabort = () => reject(new DOMException('Upload cancelled', 'AbortError'));
      const form = new FormData();
      form.append('media', file, file.name || 'media');
      if (caption) form.append('caption', caption);
      if (audience) form.append('audience', audience);
      if (lifetime_h) form.append('lifetime_h', String(lifetime_h));
      xhr.send(form);
    });
    return { promise, abort: () => xhr.abort() };
  }

  // ---- tray state ----------------------------------------------------------

  /** GET /tray — used before the socket is up and while it is down. */
  async refreshTray() {
    const version = this._trayVersion;
    const res = await this.get('/tray');
    // A WebSocket snapshot or delta that arrived meanwhile is newer: keep it.
    if (version !== this._trayVersion) return this.tray;
    this._setTray(res.items || []);
    return this.tray;
  }

  _setTray(items) {
    this.tray = sortTray(items, this.user?.id);
    this._emit('tray', { items: this.tray });
  }

  _upsert(entry) {
    if (!entry?.owner?.id) return;
    this._setTray([...this.tray.filter((e) => e.owner.id !== entry.owner.id), entry]);
  }

  /** Local update after the viewer showed an item: `nextUnseenId` null means all seen. */
  noteSeen(ownerId, nextUnseenId) {
    const entry = this.tray.find((e) => e.owner.id === ownerId);
    if (!entry) return;
    this._upsert({ ...entry, has_unseen: !!nextUnseenId, first_unseen_id: nextUnseenId || null });
  }

  /** Local update after posting/sharing/capturing: the own ring appears at once. */
  noteOwnItem(item) {
    if (!item?.owner || !this.user || item.owner.id !== this.user.id) return;
    const entry = this.tray.find((e) => e.owner.id === item.owner.id);
    this._upsert({
      owner: item.owner, has_unseen: false, first_unseen_id: null,
      item_count: (entry?.item_count || 0) + 1,
      latest_at: entry && entry.latest_at > item.created_at ? entry.latest_at : item.created_at,
    });
  }

  /** Local update after deleting an own item (`left` items remain). */
  noteOwnRemoved(left) {
    if (!this.user) return;
    if (left > 0) {
      const entry = this.tray.find((e) => e.owner.id === this.user.id);
      if (entry) this._upsert({ ...entry, item_count: left });
    } else {
      this._setTray(this.tray.filter((e) => e.owner.id !== this.user.id));
    }
  }

  /**
   * Report an item as shown: WS op when connected, else POST /stories/{id}/seen. The server
   * records a view of this item (seen-by, view count) and moves the read pointer to it, so
   * call it for each item actually displayed, never for one skipped. Once per item: repeats
   * are dropped here (the server would ignore them anyway).
   */
  async markSeen(itemId) {
    if (this._shown.has(itemId)) return;
    this._shown.add(itemId);
    if (this.state === 'connected' && this._ws?.readyState === WebSocket.OPEN) {
      this._ws.send(JSON.stringify({ op: 'seen', item: itemId }));
      return;
    }
    try {
      await this.post(`/stories/${encodeURIComponent(itemId)}/seen`);
    } catch (error) {
      if (error.status !== 404) this._emit('error', { error });
    }
  }

  // ---- WebSocket -----------------------------------------------------------

  /** Connect (and keep reconnecting) until stop(); load the tray over REST meanwhile. */
  start() {
    if (!this.token || this._wanted) return;
    this._wanted = true;
    this._attempt = 0;
    globalThis.addEventListener?.('online', this._onOnline);
    this._connect();
    this._timers.fallback = setTimeout(() => this._fallbackPoll(), this.opts.fallbackMs);
  }

  stop() {
    this._wanted = false;
    this._everConnected = false;
    globalThis.removeEventListener?.('online', this._onOnline);
    for (const t of Object.values(this._timers)) { clearTimeout(t); clearInterval(t); }
    this._timers = {};
    const ws = this._ws;
    this._ws = null;
    if (ws) { this._detach(ws); ws.close(CLOSE.WS_1000_NORMAL_CLOSURE, 'bye'); }
    this._setState('offline');
  }

  _fallbackPoll() {
    clearTimeout(this._timers.fallback);
    if (!this._wanted || this.state === 'connected') return;
    // While the server is unreachable the connection indicator says so: no error toasts.
    this.refreshTray().catch((error) => { if (error.status) this._emit('error', { error }); });
    this._timers.fallback = setTimeout(() => this._fallbackPoll(), this.opts.pollMs);
  }

  _connect() {
    const url = new URL('/ws', this.baseUrl || globalThis.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    if (this.wsAuth === 'query') url.searchParams.set('token', this.token);
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this._scheduleReconnect(LOCAL.WS_1006_ABNORMAL_CLOSURE, '');
      return;
    }
    this._ws = ws;
    this._helloAt = 0;
    ws.onopen = () => {
      if (this.wsAuth === 'frame') ws.send(JSON.stringify({ op: 'auth', token: this.token }));
      this._lastFrameAt = Date.now();
      // No hello within 10 s: treat as dead.
      this._timers.hello = setTimeout(() => {
        if (!this._helloAt) this._drop(ws, LOCAL.WS_4000_CLIENT_GAVE_UP, '');
      }, 10000);
    };
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onclose = (ev) => this._drop(ws, ev.code, ev.reason);
    ws.onerror = () => { /* a close event follows */ };
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    clearTimeout(this._timers.hello);
    clearInterval(this._timers.ping);
  }

  /** The socket is gone (closed, or declared dead): decide whether and when to come back. */
  _drop(ws, code, reason) {
    if (ws !== this._ws) return;
    this._detach(ws);
    this._ws = null;
    if (ws.readyState < WebSocket.CLOSING) ws.close(LOCAL.WS_4000_CLIENT_GAVE_UP, 'client gave up');
    if (!this._wanted) return this._setState('offline');
    if (this._helloAt && Date.now() - this._helloAt >= this.opts.healthyMs) this._attempt = 0;
    this._scheduleReconnect(code, reason);
  }

  _scheduleReconnect(code, reason) {
    const plan = closePlan(code, reason, this._attempt);
    if (plan.signOut) {
      this._emit('connection', { state: 'offline', code });
      this._unauthorized();
      return;
    }
    if (plan.countsAsFailure) this._attempt += 1;
    this._setState('reconnecting', { code, delay: plan.delay });
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => this._connect(), plan.delay);
    if (!this._timers.fallback) this._timers.fallback = setTimeout(() => this._fallbackPoll(), 0);
  }

  _reconnectNow() {
    clearTimeout(this._timers.reconnect);
    this._connect();
  }

  _onMessage(data) {
    this._lastFrameAt = Date.now();
    let parsed;
    try { parsed = JSON.parse(data); } catch { return; }
    for (const frame of Array.isArray(parsed) ? parsed : [parsed]) {
      if (frame && typeof frame.type === 'string') this._onFrame(frame);
    }
  }

  _onFrame(frame) {
    switch (frame.type) {
      case 'hello':
        clearTimeout(this._timers.hello);
        this._helloAt = Date.now();
        this._everConnected = true;
        if (frame.user) this.user = frame.user;
        this.sessionId = frame.session_id;
        this._startPing();
        this._setState('connected');
        break;
      case 'tray.snapshot':
        this._trayVersion += 1;
        this._setTray(frame.items || []);
        break;
      case 'tray.update':
        this._trayVersion += 1;
        this._upsert(frame.entry);
        break;
      case 'tray.remove':
        this._trayVersion += 1;
        this._setTray(this.tray.filter((e) => e.owner.id !== frame.owner_id));
        break;
      default:
        break;
    }
    this._emit(frame.type, frame);
    this._emit('event', { frame });
  }

  _startPing() {
    clearInterval(this._timers.ping);
    const ws = this._ws;
    this._timers.ping = setInterval(() => {
      if (Date.now() - this._lastFrameAt > this.opts.pingMs + 10000) {
        this._drop(ws, LOCAL.WS_4000_CLIENT_GAVE_UP, ''); // nothing heard, not even a pong: dead
      } else if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ op: 'ping' }));
      }
    }, this.opts.pingMs);
  }

  _setState(state, extra = {}) {
    if (state === 'connected') {
      clearTimeout(this._timers.fallback);
      delete this._timers.fallback;
    }
    const changed = state !== this.state;
    this.state = state;
    if (changed || extra.delay !== undefined) {
      this._emit('connection', { state, attempt: this._attempt, ...extra });
    }
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
