// tray.js — the row of rings: "Your story" first, then followed creators in PROTOCOL order.
// Rings are kept by owner id and moved rather than rebuilt, so focus survives live updates.

import { avatar, el } from './ui.js';

export class TrayView {
  /** @param {HTMLUListElement} list  @param {{onOpen(entry), onAdd()}} handlers */
  constructor(list, { onOpen, onAdd }) {
    this.list = list;
    this.onOpen = onOpen;
    this.onAdd = onAdd;
    this.nodes = new Map(); // owner id → <li>
  }

  render(entries, me) {
    if (!me) return;
    const own = entries.find((e) => e.owner.id === me.id);
    const others = entries.filter((e) => e.owner.id !== me.id);
    const wanted = [this._ownNode(me, own), ...others.map((e) => this._ringNode(e))];
    const keep = new Set(wanted);
    for (const [id, node] of this.nodes) {
      if (!keep.has(node)) { node.remove(); this.nodes.delete(id); }
    }
    // Reorder with as few moves as possible (a moved focused node keeps focus in Chromium
    // only when it is not re-inserted, so skip nodes already in place).
    wanted.forEach((node, i) => {
      if (this.list.children[i] !== node) this.list.insertBefore(node, this.list.children[i] || null);
    });
    this.list.setAttribute('aria-busy', 'false');
  }

  _ownNode(me, entry) {
    const key = `own:${me.id}:${entry ? 'ring' : 'add'}`;
    let li = this.nodes.get(key);
    if (!li) {
      li = entry ? this._buildOwnRing(me) : this._buildOwnAdd(me);
      this.nodes.set(key, li);
    }
    if (entry) this._update(li, entry, 'Your story');
    return li;
  }

  _buildOwnAdd(me) {
    return el('li', { class: 'tray-item own' },
      el('button', {
        type: 'button', class: 'ring none', dataset: { testid: 'add-story' },
        'aria-label': 'Your story: add a photo or video', onclick: () => this.onAdd(),
      }, avatar(me, 'lg'), el('span', { class: 'plus', 'aria-hidden': 'true' }, '+')),
      el('span', { class: 'tray-name' }, 'Your story'));
  }

  _buildOwnRing(me) {
    const li = this._buildRing(me);
    li.classList.add('own');
    li.append(el('button', {
      type: 'button', class: 'plus-button', 'aria-label': 'Add to your story',
      dataset: { testid: 'add-story' }, onclick: () => this.onAdd(),
    }, '+'));
    return li;
  }

  _ringNode(entry) {
    let li = this.nodes.get(entry.owner.id);
    if (!li) {
      li = this._buildRing(entry.owner);
      this.nodes.set(entry.owner.id, li);
    }
    this._update(li, entry, entry.owner.handle);
    return li;
  }

  _buildRing(owner) {
    const button = el('button', {
      type: 'button', class: 'ring', dataset: { testid: `ring-${owner.handle}` },
    }, avatar(owner, 'lg'));
    return el('li', { class: 'tray-item' }, button, el('span', { class: 'tray-name' }, ''));
  }

  _update(li, entry, name) {
    const button = li.querySelector('.ring');
    const unseen = !!entry.has_unseen;
    button.dataset.unseen = String(unseen);
    button.classList.toggle('unseen', unseen);
    button.classList.toggle('seen', !unseen);
    const n = entry.item_count;
    button.setAttribute('aria-label',
      `${name === 'Your story' ? 'Your story' : `${entry.owner.handle}'s story`}, ` +
      `${n} ${n === 1 ? 'item' : 'items'}${unseen ? ', new' : ''}`);
    button.onclick = () => this.onOpen(entry);
    li.querySelector('.tray-name').textContent = name;
  }
}
