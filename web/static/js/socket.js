// One chat WebSocket with reconnection (exponential backoff with jitter).
//
// The socket is opened for (access key, room). When it drops without us asking, it reconnects
// after 0.5 s, 1 s, 2 s, ... up to 30 s; the server's init frame (followed, when an answer is
// being generated, by the text so far) brings the view back in sync, so a half-streamed answer
// resumes. The backoff restarts from the beginning once an init frame has arrived.

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
   * @param {{onFrame: (frame: object) => void,
   *          onState: (state: string, info: object) => void}} handlers
   * states: 'connecting', 'open', 'waiting' (reconnect scheduled; info.delayMs, info.failedBeforeOpen,
   *         info.failures), 'closed' (we closed it).
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.ws = null;
    this.accessKey = null;
    this.roomId = '0';
    this.attempt = 0;
    this.failuresBeforeOpen = 0;
    this.timer = null;
    this.state = 'closed';
    window.addEventListener('online', () => {
      if (this.state === 'waiting') this.reconnectNow();
    });
  }

  url() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const key = encodeURIComponent(this.accessKey);
    const room = encodeURIComponent(String(this.roomId));
    return `${scheme}://${location.host}/ws/chatgpt/${key}?chat_room_id=${room}`;
  }

  /** Open (or re-open) the socket for this key and room, dropping any previous one. */
  connect(accessKey, roomId) {
    this.accessKey = accessKey;
    this.roomId = String(roomId);
    this.attempt = 0;
    this.failuresBeforeOpen = 0;
    this.open();
  }

  /** Close on purpose: no reconnection. */
  close() {
    this.clearTimer();
    this.dropSocket();
    this.setState('closed', {});
  }

  reconnectNow() {
    if (!this.accessKey) return;
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

  open() {
    this.clearTimer();
    this.dropSocket();
    if (!this.accessKey) return;
    const ws = new WebSocket(this.url());
    this.ws = ws;
    let opened = false;
    this.setState('connecting', { attempt: this.attempt });
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
