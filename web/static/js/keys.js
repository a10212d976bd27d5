// The API keys panel: list, create (secret shown once), enable/disable, delete. The keys are for
// scripts and other clients (HMAC REST calls, the original socket URL); this page's chat does not
// use one: it connects with a single-use ticket for the signed-in user (see socket.js).

import { keys as keysApi } from './api.js';
import { copyText } from './render.js';
import { $, el, confirmButton, formatDate, storageSet } from './ui.js';

export class KeysPanel {
  /** @param {{onAuthLost: () => void}} opts */
  constructor({ onAuthLost }) {
    this.onAuthLost = onAuthLost;
    this.items = [];
    this.list = $('key-list');
    this.error = $('keys-error');
    $('new-key-form').addEventListener('submit', (e) => { e.preventDefault(); this.create(); });
    $('copy-secret').addEventListener('click', () => this.copySecret());
    $('dismiss-secret').addEventListener('click', () => this.hideSecret());
  }

  setUser(userId) {
    // Earlier versions of the page remembered the key the chat used: no longer needed.
    storageSet(`chat.key:${userId}`, null);
  }

  reset() {
    this.items = [];
    this.list.replaceChildren();
    this.hideSecret();
    this.error.textContent = '';
  }

  isActive(key) {
    return (key.status || 'active') === 'active';
  }

  /** Reload the list. Returns it. */
  async refresh() {
    try {
      this.items = await keysApi.list();
      this.error.textContent = '';
    } catch (err) {
      this.fail(err);
      return this.items;
    }
    this.render();
    return this.items;
  }

  render() {
    const rows = this.items.map((key) => this.renderKey(key));
    if (!rows.length) {
      rows.push(el('li', { className: 'muted small', 'data-testid': 'no-keys' }, 'No API keys.'));
    }
    this.list.replaceChildren(...rows);
  }

  renderKey(key) {
    const active = this.isActive(key);
    const name = key.user_memo ? key.user_memo : '(no memo)';
    const label = el('span', { className: 'key-name', 'data-testid': 'key-name' }, name);
    const access = el('code', { className: 'key-access', title: key.access_key }, key.access_key);
    const status = el('span', {
      className: `badge ${active ? 'ok' : 'off'}`, 'data-testid': 'key-status',
    }, active ? 'active' : 'disabled');
    const created = el('span', { className: 'muted small' }, formatDate(key.created_at));
    const toggle = el('button', { type: 'button', 'data-testid': 'key-toggle' },
      active ? 'Disable' : 'Enable');
    toggle.setAttribute('aria-label', `${active ? 'Disable' : 'Enable'} key ${name}`);
    toggle.addEventListener('click', () => this.setStatus(key, active ? 'disabled' : 'active'));
    const del = el('button', { type: 'button', className: 'danger', 'data-testid': 'key-delete' },
      'Delete');
    del.setAttribute('aria-label', `Delete key ${name}`);
    confirmButton(del, 'Confirm delete?', () => this.remove(key));
    return el('li', { className: 'key-item', 'data-testid': 'key-item', 'data-access-key': key.access_key },
      el('div', { className: 'key-line' }, label, status),
      el('div', { className: 'key-line' }, access),
      el('div', { className: 'key-line' }, created, toggle, del));
  }

  async create() {
    const memoInput = $('new-key-memo');
    try {
      const created = await keysApi.create(memoInput.value.trim());
      memoInput.value = '';
      this.showSecret(created);
      await this.refresh();
    } catch (err) {
      this.fail(err);
    }
  }

  async setStatus(key, status) {
    try {
      await keysApi.update(key.id, key.user_memo || '', status);
      await this.refresh();
    } catch (err) {
      this.fail(err);
    }
  }

  async remove(key) {
    try {
      await keysApi.remove(key.id);
      await this.refresh();
    } catch (err) {
      this.fail(err);
    }
  }

  showSecret(created) {
    $('new-access-key').value = (created && created.access_key) || '';
    $('new-secret-key').value = (created && created.secret_key) || '';
    $('copy-feedback').textContent = '';
    $('new-secret').hidden = false;
    $('new-secret-key').focus();
    $('new-secret-key').select();
  }

  hideSecret() {
    $('new-secret-key').value = ''; // shown once: not kept in the page either
    $('new-access-key').value = '';
    $('new-secret').hidden = true;
  }

  async copySecret() {
    const ok = await copyText($('new-secret-key').value);
    $('copy-feedback').textContent = ok
      ? 'Secret copied to the clipboard.'
      : 'Could not copy: select the secret and copy it by hand.';
  }

  fail(err) {
    if (err && err.status === 401) { this.onAuthLost(); return; }
    this.error.textContent = err && err.message ? err.message : 'Something went wrong.';
  }
}
