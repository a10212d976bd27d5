// The API keys panel: list, create (secret shown once), enable/disable, delete, and pick the
// key the chat connects with (the choice is remembered per user in localStorage).

import { keys as keysApi } from './api.js';
import { copyText } from './render.js';
import { $, el, confirmButton, formatDate, storageGet, storageSet } from './ui.js';

export class KeysPanel {
  /** @param {{onSelect: (accessKey: string|null) => void, onAuthLost: () => void}} opts */
  constructor({ onSelect, onAuthLost }) {
    this.onSelect = onSelect;
    this.onAuthLost = onAuthLost;
    this.items = [];
    this.selected = null;
    this.storageKey = 'chat.key';
    this.list = $('key-list');
    this.error = $('keys-error');
    $('new-key-form').addEventListener('submit', (e) => { e.preventDefault(); this.create(); });
    $('copy-secret').addEventListener('click', () => this.copySecret());
    $('dismiss-secret').addEventListener('click', () => this.hideSecret());
  }

  setUser(userId) {
    this.storageKey = `chat.key:${userId}`;
  }

  reset() {
    this.items = [];
    this.selected = null;
    this.list.replaceChildren();
    this.hideSecret();
    this.error.textContent = '';
  }

  isActive(key) {
    return (key.status || 'active') === 'active';
  }

  /** Reload the list; keeps or repairs the selection. Returns the list. */
  async refresh() {
    try {
      this.items = await keysApi.list();
      this.error.textContent = '';
    } catch (err) {
      this.fail(err);
      return this.items;
    }
    const remembered = this.selected || storageGet(this.storageKey);
    const usable = this.items.filter((k) => this.isActive(k));
    const keep = usable.find((k) => k.access_key === remembered);
    const next = keep ? keep.access_key : (usable[0] ? usable[0].access_key : null);
    this.render(next);
    if (next !== this.selected) this.select(next);
    return this.items;
  }

  select(accessKey) {
    this.selected = accessKey;
    if (accessKey) storageSet(this.storageKey, accessKey);
    for (const radio of this.list.querySelectorAll('input[type="radio"]')) {
      radio.checked = radio.value === accessKey;
    }
    this.onSelect(accessKey);
  }

  render(selected) {
    const rows = this.items.map((key) => this.renderKey(key, selected));
    if (!rows.length) {
      rows.push(el('li', { className: 'muted small', 'data-testid': 'no-keys' },
        'No API key yet: create one to start chatting.'));
    }
    this.list.replaceChildren(...rows);
  }

  renderKey(key, selected) {
    const active = this.isActive(key);
    const id = `key-${key.id}`;
    const radio = el('input', {
      type: 'radio', name: 'chat-key', id, value: key.access_key,
      'data-testid': 'key-select', disabled: !active,
    });
    radio.checked = key.access_key === selected;
    radio.addEventListener('change', () => { if (radio.checked) this.select(key.access_key); });
    const name = key.user_memo ? key.user_memo : '(no memo)';
    const label = el('label', { for: id, className: 'key-name' }, name);
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
      el('div', { className: 'key-line' }, radio, label, status),
      el('div', { className: 'key-line' }, access),
      el('div', { className: 'key-line' }, created, toggle, del));
  }

  async create() {
    const memoInput = $('new-key-memo');
    try {
      const created = await keysApi.create(memoInput.value.trim());
      memoInput.value = '';
      this.showSecret(created);
      if (!this.selected && created && created.access_key) storageSet(this.storageKey, created.access_key);
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
      if (this.selected === key.access_key) this.selected = null;
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
