// One chat WebSocket with reconnection (exponential backoff with jitter).
//
// The socket is opened for the signed-in user and a room with a single-use ticket
// (POST /api/user/ws-ticket, then /ws/chatgpt?ticket=…&chat_room_id=…): no API key, and no
// long-lived secret in the URL. A ticket is spent by the connection that presents it, so every
// (re)connect asks for a fresh one first. When the socket drops without us asking, or the ticket
// request fails (other than 401), it retries after 0.5 s, 1 s, 2 s, ... up to 30 s; the server's
// init frame (followed, when an answer is being generated, by the text so far) brings the view
// back in sync, so a half-streamed answer resumes. The backoff restarts from the beginning once
// an init frame has arrived. A 401 on the ticket request means the session is gone: no retry,
// `onAuthLost` is called instead.

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 30000;

export function backoffDelay(attempt, random = Math.random) {
  const ideal = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** attempt);
  return Math.round(ideal * (0.75 + 0.5 * random())); // +-25 % jitter
}

export function wireRoomId(roomId) {
  const text = String(roomId);
  return /^\d{1,15}$/.test(text) ? Number(text) : text;
}

export class ChatSocket {
  /**
   * @param {{getTicket: () => Promise<string>,
   *          onFrame: (frame: object) => void,
   *          onState: (state: string, info: object) => void,
   *          onAuthLost: () => void}} handlers
   * getTicket rejects with an error carrying `status` (401: signed out, no retry).
   * states: 'connecting' (fetching a ticket, then opening), 'open', 'waiting' (retry scheduled;
   *         info.delayMs, info.failedBeforeOpen, info.failures), 'closed' (we closed it).
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.ws = null;
    this.active = false; // connect() was called and close() was not
    this.generation = 0; // bumped by every open() and close(): a late ticket is dropped
    this.roomId = '0';
    this.attempt = 0;
    this.failuresBeforeOpen = 0;
    this.timer = null;
    this.state = 'closed';
    window.addEventListener('online', () => {
      if (this.state === 'waiting') this.reconnectNow();
    });
  }

  url(ticket) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const query = new URLSearchParams({ ticket, chat_room_id: String(this.roomId) });
    return `${scheme}://${location.host}/ws/chatgpt?${query}`;
  }

  /** Open (or re-open) the socket for this room, dropping any previous one. */
  connect(roomId) {
    this.active = true;
    this.roomId = String(roomId);
    this.attempt = 0;
    this.failuresBeforeOpen = 0;
    this.open();
  }

  /** Close on purpose: no reconnection. */
  close() {
    this.active = false;
    this.generation += 1;
    this.clearTimer();
    this.dropSocket();
    this.setState('closed', {});
  }

  reconnectNow() {
    if (!this.active) return;
    this.clearTimer();
    this.open();
  }

  /** Send a frame; false when the socket is not open (nothing was sent). */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  isOpen() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  // -- internals ---------------------------------------------------------------------------

  async open() {
    this.clearTimer();
    this.dropSocket();
    if (!this.active) return;
    this.generation += 1;
    const generation = this.generation;
    this.setState('connecting', { attempt: this.attempt });
    let ticket;
    try {
      ticket = await this.handlers.getTicket();
    } catch (err) {
      if (generation !== this.generation) return; // closed or re-opened meanwhile
      if (err && err.status === 401) {
        this.close();
        this.handlers.onAuthLost();
        return;
      }
      this.failuresBeforeOpen += 1;
      this.scheduleReconnect(true, undefined);
      return;
    }
    if (generation !== this.generation) return; // the ticket expires unused
    this.openWith(ticket);
  }

  openWith(ticket) {
    const ws = new WebSocket(this.url(ticket));
    this.ws = ws;
    let opened = false;
    ws.addEventListener('open', () => {
      if (this.ws !== ws) return;
      opened = true;
      this.failuresBeforeOpen = 0;
      this.setState('open', {});
    });
    ws.addEventListener('message', (event) => {
      if (this.ws !== ws) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (!frame || typeof frame !== 'object') return;
      if (frame.init) this.attempt = 0; // a healthy session: restart the backoff
      this.handlers.onFrame(frame);
    });
    ws.addEventListener('close', (event) => {
      if (this.ws !== ws) return; // replaced or closed on purpose
      this.ws = null;
      if (!opened) this.failuresBeforeOpen += 1;
      this.scheduleReconnect(!opened, event.code);
    });
  }

  scheduleReconnect(failedBeforeOpen, code) {
    const delayMs = backoffDelay(this.attempt);
    this.attempt += 1;
    this.timer = setTimeout(() => { this.timer = null; this.open(); }, delayMs);
    this.setState('waiting', {
      delayMs, failedBeforeOpen, code, failures: this.failuresBeforeOpen,
      at: Date.now() + delayMs,
    });
  }

  dropSocket() {
    const ws = this.ws;
    this.ws = null;
    if (ws && (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)) {
      try { ws.close(1000, 'client closed'); } catch { /* already closing */ }
    }
  }

  clearTimer() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  setState(state, info) {
    this.state = state;
    this.handlers.onState(state, info);
  }
}
