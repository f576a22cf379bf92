// live.js — "Go live": camera preview, 3-2-1, record over WebRTC to the server, stop → story item.
//
// POST /captures {sdp, type: "offer", caption?, audience?} → {id, sdp, type: "answer",
// max_duration_ms}; POST /captures/{id}/stop → StoryItem; DELETE /captures/{id} discards.
// The offer is non-trickle: we wait for ICE gathering to complete before sending it.

import { AUDIENCES, clock, el, errorText, icon, toast } from './ui.js';

const ICE_WAIT_MS = 4000;

export class LiveCapture {
  constructor(dialog, client, { onPosted }) {
    this.dialog = dialog;
    this.client = client;
    this.onPosted = onPosted;
    this.state = 'idle'; // idle → preview → countdown → connecting → recording → stopping
    this._build();
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); this._cancel(); });
    dialog.addEventListener('close', () => this._teardown());
    client.addEventListener('capture.finished', (e) => {
      if (e.detail.capture_id === this.captureId) this._finished(e.detail.item);
    });
    client.addEventListener('capture.failed', (e) => {
      if (e.detail.capture_id === this.captureId) this._fail(e.detail.detail || 'The capture failed.');
    });
  }

  _build() {
    this.video = el('video', { class: 'live-preview', muted: true, autoplay: true, playsinline: true,
      'aria-label': 'Camera preview' });
    this.overlay = el('div', { class: 'countdown', 'aria-live': 'assertive' });
    this.timer = el('div', { class: 'rec-timer', hidden: true, role: 'timer', 'aria-live': 'off' });
    this.caption = el('input', { type: 'text', maxlength: '2200', placeholder: 'Caption (optional)',
      'aria-label': 'Caption' });
    this.audience = el('select', { 'aria-label': 'Who can see it' },
      AUDIENCES.map(([v, label]) => el('option', { value: v }, label)));
    this.error = el('p', { class: 'error', role: 'alert' });
    this.startBtn = el('button', { type: 'button', class: 'record', disabled: true,
      'aria-label': 'Start recording', onclick: () => this._start() });
    this.stopBtn = el('button', { type: 'button', class: 'record recording', hidden: true,
      dataset: { testid: 'stop-capture' }, 'aria-label': 'Stop recording', onclick: () => this._stop() });
    const closeBtn = el('button', { type: 'button', class: 'icon-button', 'aria-label': 'Cancel',
      onclick: () => this._cancel() }, icon('close'));
    this.dialog.append(el('div', { class: 'live-frame' },
      this.video, this.overlay,
      el('div', { class: 'live-top' }, el('h2', { id: 'live-title' }, 'Go live'), this.timer, closeBtn),
      el('div', { class: 'live-bottom' },
        this.options = el('div', { class: 'row nowrap' }, this.caption, this.audience),
        this.error,
        el('div', { class: 'row center' }, this.startBtn, this.stopBtn))));
  }

  async open() {
    if (!this.dialog.open) this.dialog.showModal();
    this._setState('idle');
    this.error.textContent = '';
    this.overlay.textContent = '';
    try {
      if (!navigator.mediaDevices?.getUserMedia) throw new Error('This browser cannot use the camera here (it needs https or localhost).');
      this.stream = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: 'user', aspectRatio: { ideal: 9 / 16 },
          width: { ideal: 720 }, height: { ideal: 1280 } },
        audio: true,
      });
      if (!this.dialog.open) return this._stopTracks();
      this.video.srcObject = this.stream;
      this._setState('preview');
      this.startBtn.focus();
    } catch (err) {
      this.error.textContent = err.name === 'NotAllowedError'
        ? 'Camera permission was denied. Allow the camera and try again.'
        : err.name === 'NotFoundError' ? 'No camera or microphone found.' : errorText(err);
    }
  }

  _setState(state) {
    this.state = state;
    this.startBtn.hidden = state === 'recording' || state === 'stopping' || state === 'connecting';
    this.startBtn.disabled = state !== 'preview';
    this.stopBtn.hidden = !(state === 'recording' || state === 'stopping' || state === 'connecting');
    this.stopBtn.disabled = state !== 'recording';
    this.caption.disabled = this.audience.disabled = state !== 'preview';
    this.options.hidden = state !== 'preview' && state !== 'idle';
    this.timer.hidden = state !== 'recording' && state !== 'stopping';
    this.dialog.dataset.state = state;
  }

  async _start() {
    if (this.state !== 'preview') return;
    this._setState('countdown');
    for (const n of [3, 2, 1]) {
      this.overlay.textContent = String(n);
      await sleep(1000);
      if (this.state !== 'countdown') return;
    }
    this.overlay.textContent = '';
    this._setState('connecting');
    this.timer.hidden = false;
    this.timer.textContent = 'Connecting…';
    this.done = false;
    try {
      await this._negotiate();
    } catch (err) {
      if (!this.dialog.open) return this._abandon();
      this._abandon();
      this._fail(errorText(err), 'preview');
      return;
    }
    if (!this.dialog.open) return this._abandon(); // cancelled while connecting
    this._setState('recording');
    this.startedAt = performance.now();
    this._tick();
  }

  async _negotiate() {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    for (const track of this.stream.getTracks()) {
      if (track.kind === 'video') track.contentHint = 'detail';
      const tr = pc.addTransceiver(track, { direction: 'sendonly', streams: [this.stream] });
      if (track.kind === 'video') {
        preferH264(tr);
        await keepResolution(tr.sender);
      }
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceComplete(pc);
    const body = { sdp: pc.localDescription.sdp, type: 'offer', audience: this.audience.value };
    const caption = this.caption.value.trim();
    if (caption) body.caption = caption;
    const answer = await this.client.post('/captures', body);
    this.captureId = answer.id;
    this.maxMs = answer.max_duration_ms || 15000;
    await pc.setRemoteDescription({ type: answer.type || 'answer', sdp: answer.sdp });
    for (const s of pc.getSenders()) if (s.track?.kind === 'video') await keepResolution(s);
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'failed' && this.state === 'recording') {
        this._fail('The connection to the server was lost.');
      }
    });
  }

  _tick() {
    if (this.state !== 'recording' && this.state !== 'stopping') return;
    const elapsed = performance.now() - this.startedAt;
    this.timer.replaceChildren(el('span', { class: 'rec-dot' }), ` ${clock(elapsed)} / ${clock(this.maxMs)}`);
    this.timer.style.setProperty('--done', String(Math.min(1, elapsed / this.maxMs)));
    if (elapsed >= this.maxMs && this.state === 'recording') {
      this._stop(); // the server finished it at the cap; stop answers with that item
      return;
    }
    this.raf = requestAnimationFrame(() => this._tick());
  }

  async _stop() {
    if (this.state !== 'recording' || !this.captureId) return;
    this._setState('stopping');
    this.timer.textContent = 'Saving…';
    const id = this.captureId;
    try {
      const item = await this.client.post(`/captures/${encodeURIComponent(id)}/stop`, {});
      this._finished(item);
    } catch (err) {
      if (this.captureId === id) this._fail(errorText(err));
    }
  }

  _finished(item) {
    // The /stop answer and the capture.finished event both bring the item: act once.
    if (!item || this.done || item.id === this.lastFinishedId) return;
    this.done = true;
    this.lastFinishedId = item.id;
    this.client.noteOwnItem(item);
    this.captureId = null;
    toast('Your live clip was added to your story');
    this.dialog.close();
    this.onPosted?.(item);
  }

  _fail(message, state = 'preview') {
    this.captureId = null;
    this._closePeer();
    this.error.textContent = message;
    this._setState(this.stream ? state : 'idle');
  }

  async _cancel() {
    const id = this.captureId;
    this.captureId = null;
    if (id && this.state !== 'stopping') {
      this.client.del(`/captures/${encodeURIComponent(id)}`).catch(() => {});
    }
    if (this.dialog.open) this.dialog.close();
  }

  /** Discard a capture the server may have started for an offer we no longer want. */
  _abandon() {
    const id = this.captureId;
    this.captureId = null;
    this._closePeer();
    if (id) this.client.del(`/captures/${encodeURIComponent(id)}`).catch(() => {});
  }

  _closePeer() {
    cancelAnimationFrame(this.raf);
    this.pc?.close();
    this.pc = null;
  }

  _stopTracks() {
    for (const t of this.stream?.getTracks() || []) t.stop();
    this.stream = null;
    this.video.srcObject = null;
  }

  _teardown() {
    if (this.captureId && this.state === 'recording') {
      this.client.del(`/captures/${encodeURIComponent(this.captureId)}`).catch(() => {});
    }
    this.captureId = null;
    this.done = false;
    this._closePeer();
    this._stopTracks();
    this._setState('idle');
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Put H.264 first when the browser can send it (the server records H.264 as is). */
function preferH264(transceiver) {
  if (typeof transceiver.setCodecPreferences !== 'function') return;
  for (const caps of [RTCRtpSender.getCapabilities?.('video'), RTCRtpReceiver.getCapabilities?.('video')]) {
    if (!caps?.codecs) continue;
    const h264 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === 'video/h264');
    if (!h264.length) return;
    try {
      transceiver.setCodecPreferences([...h264, ...caps.codecs.filter((c) => !h264.includes(c))]);
      return;
    } catch { /* some versions want the receiver's list: try that */ }
  }
}

/** Tell the encoder to drop frame rate, not resolution, when bandwidth is short. */
async function keepResolution(sender) {
  try {
    const params = sender.getParameters();
    params.degradationPreference = 'maintain-resolution';
    await sender.setParameters(params);
  } catch { /* not supported before negotiation in some browsers */ }
}

function iceComplete(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== 'complete') return;
      pc.removeEventListener('icegatheringstatechange', done);
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => { pc.removeEventListener('icegatheringstatechange', done); resolve(); }, ICE_WAIT_MS);
    pc.addEventListener('icegatheringstatechange', done);
  });
}
