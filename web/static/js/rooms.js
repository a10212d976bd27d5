// The rooms panel: the user's chat rooms (REST), plus rooms created here that the server has
// not stored yet (a room exists on the server once a message was sent in it).

import { rooms as roomsApi } from './api.js';
import { $, el, confirmButton, formatDate, storageGet, storageSet } from './ui.js';

export function roomLabel(room) {
  if (room && room.name) return room.name;
  const id = room ? String(room.chat_room_id) : '0';
  return id === '0' ? 'Default room' : `Room ${id}`;
}

export class RoomsPanel {
  /** @param {{onSwitch: (roomId: string) => void, onAuthLost: () => void}} opts */
  constructor({ onSwitch, onAuthLost }) {
    this.onSwitch = onSwitch;
    this.onAuthLost = onAuthLost;
    this.serverRooms = [];
    this.localRooms = new Map(); // id -> {chat_room_id, name}
    this.pendingNames = new Map(); // id -> name to set once the server knows the room
    this.current = '0';
    this.storageKey = 'chat.room';
    this.list = $('room-list');
    this.error = $('rooms-error');
    $('new-room-form').addEventListener('submit', (e) => { e.preventDefault(); this.create(); });
  }

  setUser(userId) {
    this.storageKey = `chat.room:${userId}`;
    this.current = storageGet(this.storageKey) || '0';
  }

  reset() {
    this.serverRooms = [];
    this.localRooms.clear();
    this.pendingNames.clear();
    this.list.replaceChildren();
    this.error.textContent = '';
  }

  all() {
    const byId = new Map();
    for (const room of this.serverRooms) byId.set(String(room.chat_room_id), room);
    for (const [id, room] of this.localRooms) if (!byId.has(id)) byId.set(id, room);
    if (!byId.has(this.current)) byId.set(this.current, { chat_room_id: this.current, name: '' });
    return [...byId.values()].sort((a, b) => {
      const x = Number(a.chat_room_id); const y = Number(b.chat_room_id);
      if (Number.isFinite(x) && Number.isFinite(y)) return x - y;
      return String(a.chat_room_id).localeCompare(String(b.chat_room_id));
    });
  }

  currentRoom() {
    return this.all().find((r) => String(r.chat_room_id) === this.current) || null;
  }

  async refresh() {
    try {
      this.serverRooms = await roomsApi.list();
      this.error.textContent = '';
    } catch (err) {
      this.fail(err);
    }
    for (const room of this.serverRooms) {
      const id = String(room.chat_room_id);
      this.localRooms.delete(id);
      const wanted = this.pendingNames.get(id);
      if (wanted !== undefined) {
        this.pendingNames.delete(id);
        if (wanted && wanted !== room.name) await this.rename(id, wanted, { quiet: true });
      }
    }
    this.render();
  }

  switchTo(roomId) {
    const id = String(roomId);
    this.current = id;
    storageSet(this.storageKey, id);
    this.render();
    this.onSwitch(id);
  }

  create() {
    const input = $('new-room-name');
    const name = input.value.trim();
    const numeric = this.all().map((r) => Number(r.chat_room_id)).filter(Number.isFinite);
    const id = String(Math.max(0, ...numeric) + 1);
    this.localRooms.set(id, { chat_room_id: id, name });
    if (name) this.pendingNames.set(id, name);
    input.value = '';
    this.switchTo(id);
  }

  async rename(roomId, name, { quiet = false } = {}) {
    const id = String(roomId);
    try {
      await roomsApi.rename(id, name);
      const room = this.serverRooms.find((r) => String(r.chat_room_id) === id);
      if (room) room.name = name;
    } catch (err) {
      if (err && err.status === 404) {
        // Not stored yet: name it as soon as it is.
        this.pendingNames.set(id, name);
        const local = this.localRooms.get(id) || { chat_room_id: id, name: '' };
        local.name = name;
        this.localRooms.set(id, local);
      } else if (!quiet) {
        this.fail(err);
      }
    }
    this.render();
  }

  async remove(roomId) {
    const id = String(roomId);
    try {
      if (this.serverRooms.some((r) => String(r.chat_room_id) === id)) await roomsApi.remove(id);
    } catch (err) {
      if (!err || err.status !== 404) { this.fail(err); return; }
    }
    this.localRooms.delete(id);
    this.pendingNames.delete(id);
    this.serverRooms = this.serverRooms.filter((r) => String(r.chat_room_id) !== id);
    if (this.current === id) {
      const other = this.all().find((r) => String(r.chat_room_id) !== id);
      this.switchTo(other ? String(other.chat_room_id) : '0');
    } else {
      this.render();
    }
  }

  render() {
    const rows = this.all().map((room) => this.renderRoom(room));
    this.list.replaceChildren(...rows);
    const current = this.currentRoom();
    $('room-title').textContent = roomLabel(current);
  }

  renderRoom(room) {
    const id = String(room.chat_room_id);
    const isCurrent = id === this.current;
    const label = roomLabel(room);
    const open = el('button', {
      type: 'button', className: 'room-open', 'data-testid': 'room-button', 'data-room-id': id,
      'aria-current': isCurrent ? 'true' : false,
    }, el('span', { className: 'room-name' }, label));
    const when = room.last_used_at || room.created_at;
    if (when) open.append(el('span', { className: 'muted small room-when' }, formatDate(when)));
    open.addEventListener('click', () => { if (!isCurrent) this.switchTo(id); });

    const renameBtn = el('button', { type: 'button', className: 'icon', 'data-testid': 'room-rename' }, 'Rename');
    renameBtn.setAttribute('aria-label', `Rename ${label}`);
    const del = el('button', { type: 'button', className: 'icon danger', 'data-testid': 'room-delete' }, 'Delete');
    del.setAttribute('aria-label', `Delete ${label}`);
    confirmButton(del, 'Confirm?', () => this.remove(id));
    const li = el('li', { className: `room-item${isCurrent ? ' current' : ''}`, 'data-testid': 'room-item', 'data-room-id': id },
      open, el('span', { className: 'room-actions' }, renameBtn, del));
    renameBtn.addEventListener('click', () => this.editName(li, room));
    return li;
  }

  editName(li, room) {
    const id = String(room.chat_room_id);
    const input = el('input', {
      type: 'text', maxlength: '100', 'aria-label': 'Room name', 'data-testid': 'room-name-input',
    });
    input.value = room.name || '';
    const form = el('form', { className: 'inline-form' }, input,
      el('button', { type: 'submit' }, 'Save'));
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      if (save && input.value.trim() !== (room.name || '')) await this.rename(id, input.value.trim());
      else this.render();
    };
    form.addEventListener('submit', (e) => { e.preventDefault(); finish(true); });
    input.addEventListener('keydown', (e) => { if (e.key === 'Escape') { e.preventDefault(); finish(false); } });
    li.replaceChildren(form);
    input.focus();
  }

  fail(err) {
    if (err && err.status === 401) { this.onAuthLost(); return; }
    this.error.textContent = err && err.message ? err.message : 'Something went wrong.';
  }
}
