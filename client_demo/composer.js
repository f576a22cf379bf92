// composer.js — post a photo or video: choose, preview, caption, audience, upload with progress.

import { AUDIENCES, el, errorText, icon, toast } from './ui.js';

const MAX_VIDEO_S = 60;

export class Composer {
  constructor(dialog, client, { onPosted }) {
    this.dialog = dialog;
    this.client = client;
    this.onPosted = onPosted;
    this._build();
    dialog.addEventListener('close', () => this._reset());
    dialog.addEventListener('cancel', (e) => { if (this.upload) e.preventDefault(); });
  }

  _build() {
    this.input = el('input', { type: 'file', id: 'upload-input', class: 'visually-hidden',
      accept: 'image/jpeg,image/png,image/webp,image/heic,image/heif,video/mp4,video/quicktime,video/webm',
      dataset: { testid: 'upload-input' }, onchange: () => this._chosen() });
    this.preview = el('div', { class: 'preview', 'aria-live': 'polite' },
      el('p', { class: 'muted' }, 'No photo or video chosen'));
    this.caption = el('textarea', { id: 'composer-caption', rows: '2', maxlength: '2200',
      placeholder: 'Write a caption…' });
    this.audience = el('fieldset', { class: 'audience' }, el('legend', {}, 'Who can see it'),
      AUDIENCES.map(([value, label], i) => el('label', { class: 'choice' },
        el('input', { type: 'radio', name: 'audience', value, checked: i === 0 }), ` ${label}`)));
    this.bar = el('progress', { max: '1', value: '0', 'aria-label': 'Upload progress' });
    this.pct = el('span', { class: 'muted' }, '');
    this.progressRow = el('div', { class: 'upload-progress', hidden: true }, this.bar, this.pct);
    this.error = el('p', { class: 'error', role: 'alert' });
    this.postBtn = el('button', { type: 'submit', class: 'primary', disabled: true,
      dataset: { testid: 'post-button' } }, 'Share to story');
    this.cancelBtn = el('button', { type: 'button', onclick: () => this._cancel() }, 'Cancel');
    const form = el('form', { class: 'composer', onsubmit: (e) => this._post(e) },
      el('div', { class: 'sheet-head' },
        el('h2', { id: 'composer-title' }, 'New story'),
        el('button', { type: 'button', class: 'icon-button', 'aria-label': 'Close',
          onclick: () => this._cancel() }, icon('close'))),
      this.preview,
      el('label', { class: 'button', for: 'upload-input' }, this.input, icon('image'), 'Choose photo or video'),
      el('label', { for: 'composer-caption' }, 'Caption'), this.caption,
      this.audience, this.progressRow, this.error,
      el('div', { class: 'row end' }, this.cancelBtn, this.postBtn));
    this.dialog.append(form);
  }

  open() {
    this._reset();
    if (!this.dialog.open) this.dialog.showModal();
  }

  _reset() {
    this.upload?.abort();
    this.upload = null;
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
    this.file = null;
    this.input.value = '';
    this.caption.value = '';
    this.dialog.querySelector('input[name=audience]').checked = true;
    this.preview.replaceChildren(el('p', { class: 'muted' }, 'No photo or video chosen'));
    this.progressRow.hidden = true;
    this.error.textContent = '';
    this.postBtn.disabled = true;
    this.postBtn.textContent = 'Share to story';
    this.idempotencyKey = null;
  }

  _chosen() {
    const file = this.input.files[0];
    this.error.textContent = '';
    if (!file) return;
    if (this.url) URL.revokeObjectURL(this.url);
    this.file = file;
    this.url = URL.createObjectURL(file);
    this.idempotencyKey = crypto.randomUUID?.() || `${Date.now()}-${Math.random()}`;
    const isVideo = file.type.startsWith('video/');
    let media;
    if (isVideo) {
      media = el('video', { src: this.url, muted: true, autoplay: true, loop: true,
        playsinline: true, 'aria-label': 'Preview of the chosen video' });
      media.addEventListener('loadedmetadata', () => {
        if (media.duration > MAX_VIDEO_S) {
          this.error.textContent = `Videos can be at most ${MAX_VIDEO_S} s long; this one is ${Math.round(media.duration)} s.`;
        }
      });
    } else {
      media = el('img', { src: this.url, alt: 'Preview of the chosen photo' });
    }
    this.preview.replaceChildren(media, el('p', { class: 'file-name muted' },
      `${file.name} · ${(file.size / 1048576).toFixed(1)} MB`));
    this.postBtn.disabled = false;
  }

  async _post(e) {
    e.preventDefault();
    if (!this.file || this.upload) return;
    this.error.textContent = '';
    this.progressRow.hidden = false;
    this.bar.value = 0;
    this.pct.textContent = '0%';
    this.postBtn.disabled = true;
    this.postBtn.textContent = 'Uploading…';
    const audience = this.dialog.querySelector('input[name=audience]:checked').value;
    this.upload = this.client.upload(this.file, { caption: this.caption.value.trim(), audience }, {
      idempotencyKey: this.idempotencyKey,
      onProgress: (fraction) => {
        if (fraction === null) { this.bar.removeAttribute('value'); return; }
        this.bar.value = fraction;
        this.pct.textContent = fraction < 1 ? `${Math.round(fraction * 100)}%` : 'Processing…';
        if (fraction >= 1) this.postBtn.textContent = 'Processing…';
      },
    });
    try {
      const item = await this.upload.promise;
      this.upload = null;
      this.dialog.close();
      toast('Added to your story');
      this.onPosted?.(item);
    } catch (err) {
      this.upload = null;
      this.progressRow.hidden = true;
      this.postBtn.disabled = false;
      this.postBtn.textContent = 'Share to story';
      if (err.name !== 'AbortError') this.error.textContent = errorText(err);
      if (err.status && err.status < 500 && err.status !== 409) this.idempotencyKey = crypto.randomUUID?.() || String(Date.now());
    }
  }

  _cancel() {
    if (this.upload) {
      this.upload.abort();
      return;
    }
    this.dialog.close();
  }
}
