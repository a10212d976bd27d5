// The chat page: wires the auth form, the keys and rooms panels, the socket and the view.
// Chatting needs no API key: the socket connects with a single-use ticket (socket.js).

import { auth, getToken, tickets } from './api.js';
import { ChatView } from './chat.js';
import { describeError } from './errors.js';
import { KeysPanel } from './keys.js';
import { RoomsPanel } from './rooms.js';
import { ChatSocket, wireRoomId } from './socket.js';
import { UsagePanel } from './usage.js';
import { $, confirmButton, storageGet, storageSet } from './ui.js';

const LOGGED_OUT = 'chat.loggedOut';
// Error codes that refuse a new frame without ending the answer being streamed.
const NON_ENDING_ERRORS = new Set([
  'bad_frame', 'busy', 'too_long', 'unknown_command', 'bad_argument', 'translation_unavailable',
]);

const state = {
  user: null,
  ready: false, // the current socket got its init frame
  pending: 0, // chat messages / retries sent whose answer has not started yet
  pendingClear: false,
  resyncAfterReply: false,
  afterInit: null,
  retryTarget: null,
  countdown: null,
};

const view = new ChatView($('messages'));
const authLost = () => showAuth('Please log in again.');
const socket = new ChatSocket({
  getTicket: () => tickets.create(), // a fresh single-use ticket for every (re)connect
  onFrame: handleFrame,
  onState: handleSocketState,
  onAuthLost: authLost,
});
const keysPanel = new KeysPanel({ onAuthLost: authLost });
const roomsPanel = new RoomsPanel({ onSwitch: onRoomSwitched, onAuthLost: authLost });
const usagePanel = new UsagePanel({ onAuthLost: authLost });

// -- screens -------------------------------------------------------------------------------

function showAuth(message = '') {
  socket.close();
  state.user = null;
  keysPanel.reset();
  roomsPanel.reset();
  usagePanel.reset();
  view.clear();
  $('app-view').hidden = true;
  $('auth-view').hidden = false;
  $('auth-error').textContent = message;
  $('auth-email').focus();
}

async function enterApp(me) {
  state.user = me || {};
  const userId = state.user.id ?? state.user.user_id ?? state.user.email ?? 'me';
  $('user-email').textContent = state.user.email || '';
  keysPanel.setUser(userId);
  roomsPanel.setUser(userId);
  $('auth-view').hidden = true;
  $('app-view').hidden = false;
  roomsPanel.render();
  connect(true); // the chat needs no API key: the socket opens with a ticket for this user
  $('composer-input').focus();
  await Promise.all([keysPanel.refresh(), roomsPanel.refresh(), usagePanel.refresh()]);
}

async function afterLogin() {
  storageSet(LOGGED_OUT, null);
  const me = await auth.me();
  $('auth-password').value = '';
  await enterApp(me);
}

function bindAuth() {
  const form = $('auth-form');
  const credentials = () => {
    const email = $('auth-email').value.trim();
    const password = $('auth-password').value;
    if (!email || !password) {
      $('auth-error').textContent = 'Enter your email and a password.';
      return null;
    }
    return { email, password };
  };
  const run = async (action) => {
    const creds = credentials();
    if (!creds) return;
    $('auth-error').textContent = '';
    form.setAttribute('aria-busy', 'true');
    try {
      await action(creds.email, creds.password);
      await afterLogin();
    } catch (err) {
      $('auth-error').textContent = err && err.message ? err.message : 'That did not work.';
    } finally {
      form.removeAttribute('aria-busy');
    }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); run(auth.login); });
  $('register-button').addEventListener('click', () => run(auth.register));
  $('logout-button').addEventListener('click', async () => {
    socket.close();
    await auth.logout();
    storageSet(LOGGED_OUT, '1');
    showAuth('');
  });
}

// -- room selection ------------------------------------------------------------------------

function onRoomSwitched() {
  closeSidebarOnNarrow();
  if (state.user) connect(true);
}

function connect(fresh) {
  resetChatState();
  if (fresh) view.clear();
  showNotice('Loading the conversation…');
  socket.connect(roomsPanel.current);
}

function resetChatState() {
  state.ready = false;
  state.pending = 0;
  state.pendingClear = false;
  state.resyncAfterReply = false;
  state.retryTarget = null;
}

// -- socket events -------------------------------------------------------------------------

function handleSocketState(st, info) {
  stopCountdown();
  if (st === 'connecting') {
    state.ready = false;
    setConn('connecting', 'Connecting…');
  } else if (st === 'open') {
    setConn('connecting', 'Connected, loading…');
  } else if (st === 'waiting') {
    state.ready = false;
    if (view.isStreaming()) view.finishAnswer('interrupted');
    startCountdown(info.at);
    showNotice('Connection lost. Reconnecting automatically; unsent text stays in the box.');
  } else if (st === 'closed') {
    state.ready = false;
    setConn('closed', 'Not connected');
  }
  updateControls();
}

function handleFrame(frame) {
  if (frame.init) return onInit(frame);
  if (frame.error) return onError(frame);
  const text = typeof frame.msg === 'string' ? frame.msg : '';
  if (frame.is_user) {
    view.addUser(text); // sent from another tab or device
  } else if (!frame.finish) {
    if (!view.isStreaming()) onAnswerStart();
    view.appendDelta(text);
  } else if (view.isStreaming()) {
    if (text) view.appendDelta(text);
    view.finishAnswer('done');
    announce('Answer complete.');
    roomsSoon();
    usagePanel.soon();
  } else if (text) {
    onCommandReply(text);
  } else {
    state.pending = Math.max(0, state.pending - 1); // an empty answer
  }
  updateControls();
}

function onInit(frame) {
  let items = [];
  try {
    const parsed = JSON.parse(typeof frame.msg === 'string' && frame.msg ? frame.msg : '[]');
    if (Array.isArray(parsed)) items = parsed;
  } catch { items = []; }
  resetChatState();
  state.ready = true;
  view.showHistory(items);
  hideNotice();
  setConn('open', 'Connected');
  const after = state.afterInit;
  state.afterInit = null;
  if (after) after();
  roomsSoon();
  updateControls();
}

function onAnswerStart() {
  state.pending = Math.max(0, state.pending - 1);
  if (state.retryTarget) {
    state.retryTarget.remove(); // the retried answer replaces the old one
    state.retryTarget = null;
  }
  view.startAnswer();
  $('messages').dataset.streaming = 'true';
}

function onError(frame) {
  const desc = describeError(frame);
  if (view.isStreaming() && !NON_ENDING_ERRORS.has(desc.code)) {
    view.finishAnswer('error');
  } else if (!view.isStreaming()) {
    state.pending = Math.max(0, state.pending - 1);
  }
  if (state.retryTarget) {
    state.retryTarget.classList.remove('retrying');
    state.retryTarget = null;
  }
  state.pendingClear = false;
  state.resyncAfterReply = false;
  view.addError(desc);
  announce(desc.title);
  updateControls();
}

function onCommandReply(text) {
  if (state.retryTarget) {
    state.retryTarget.classList.remove('retrying');
    state.retryTarget = null;
    state.pending = Math.max(0, state.pending - 1);
  }
  if (state.pendingClear) {
    state.pendingClear = false;
    view.clear();
  }
  if (state.resyncAfterReply) {
    // The history changed on the server: reload it, then show the reply.
    state.resyncAfterReply = false;
    state.afterInit = () => view.addNote(text);
    roomsSoon();
    socket.reconnectNow();
    return;
  }
  view.addNote(text);
}

// -- sending -------------------------------------------------------------------------------

function sendText(raw, { echo = true } = {}) {
  const text = raw.trim();
  if (!text) return false;
  const frame = { msg: text, translate: false, chat_room_id: wireRoomId(roomsPanel.current) };
  if (!state.ready || !socket.send(frame)) {
    showNotice('Not connected: nothing was sent. Your text is still in the box.');
    return false;
  }
  if (text.startsWith('/')) onCommandSent(text, echo);
  else {
    view.addUser(text);
    state.pending += 1;
  }
  updateControls();
  return true;
}

function onCommandSent(text, echo) {
  const name = text.split(/\s+/)[0].toLowerCase();
  if (echo && name !== '/stop') view.addCommand(text);
  if (name === '/stop') {
    state.pending = 0;
  } else if (name === '/retry') {
    state.retryTarget = view.lastOfRole('assistant');
    if (state.retryTarget) state.retryTarget.classList.add('retrying');
    state.pending += 1;
  } else if (name === '/clear' || name === '/reset') {
    state.pendingClear = true;
  } else if (['/pop', '/poplastmessage', '/deletechatroom'].includes(name)) {
    state.resyncAfterReply = true;
  }
}

function bindComposer() {
  const input = $('composer-input');
  const submit = () => { if (sendText(input.value)) { input.value = ''; autosize(); } };
  $('composer').addEventListener('submit', (e) => { e.preventDefault(); submit(); input.focus(); });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey && !e.isComposing) {
      e.preventDefault();
      submit();
    } else if (e.key === 'Escape' && isBusy()) {
      e.preventDefault();
      stop();
    }
  });
  input.addEventListener('input', autosize);
  $('stop-button').addEventListener('click', () => { stop(); input.focus(); });
  $('retry-button').addEventListener('click', () => sendText('/retry', { echo: false }));
  confirmButton($('clear-button'), 'Confirm clear?', () => { sendText('/clear', { echo: false }); });
  function autosize() {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, window.innerHeight * 0.4)}px`;
  }
}

function stop() {
  sendText('/stop', { echo: false });
}

// -- status, controls ----------------------------------------------------------------------

function isBusy() {
  return view.isStreaming() || state.pending > 0;
}

function updateControls() {
  const ready = state.ready && socket.isOpen();
  const busy = isBusy();
  $('send-button').disabled = !ready;
  $('stop-button').hidden = !busy;
  $('stop-button').disabled = !ready;
  $('retry-button').disabled = !ready || busy || !view.hasMessages();
  $('clear-button').disabled = !ready || busy;
  $('messages').dataset.streaming = view.isStreaming() ? 'true' : 'false';
  $('messages').setAttribute('aria-busy', view.isStreaming() ? 'true' : 'false');
}

function setConn(st, text) {
  const status = $('conn-status');
  status.dataset.state = st;
  status.textContent = text;
  $('conn-dot').dataset.state = st;
  $('reconnect-button').hidden = st !== 'waiting';
}

function startCountdown(at) {
  const tick = () => {
    const seconds = Math.max(0, Math.ceil((at - Date.now()) / 1000));
    setConn('waiting', `Connection lost. Reconnecting in ${seconds} s…`);
  };
  tick();
  state.countdown = setInterval(tick, 1000);
}

function stopCountdown() {
  if (state.countdown !== null) clearInterval(state.countdown);
  state.countdown = null;
}

function showNotice(text) {
  const notice = $('chat-notice');
  notice.textContent = text;
  notice.hidden = false;
}

function hideNotice() {
  $('chat-notice').hidden = true;
}

function announce(text) {
  const region = $('sr-status');
  region.textContent = '';
  setTimeout(() => { region.textContent = text; }, 50);
}

let roomsTimer = null;
function roomsSoon() {
  clearTimeout(roomsTimer);
  roomsTimer = setTimeout(() => { if (state.user) roomsPanel.refresh(); }, 400);
}

// -- layout --------------------------------------------------------------------------------

function bindLayout() {
  const toggle = $('menu-toggle');
  const sidebar = $('sidebar');
  toggle.addEventListener('click', () => {
    const open = !sidebar.classList.contains('open');
    sidebar.classList.toggle('open', open);
    toggle.setAttribute('aria-expanded', String(open));
    if (open) sidebar.querySelector('button, input')?.focus();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && sidebar.classList.contains('open')) {
      closeSidebarOnNarrow();
      toggle.focus();
    }
  });
  $('reconnect-button').addEventListener('click', () => socket.reconnectNow());
}

function closeSidebarOnNarrow() {
  $('sidebar').classList.remove('open');
  $('menu-toggle').setAttribute('aria-expanded', 'false');
}

// -- boot ----------------------------------------------------------------------------------

async function boot() {
  window.__chatBooted = true;
  bindAuth();
  bindComposer();
  bindLayout();
  updateControls();
  $('boot-loading').hidden = true;
  if (storageGet(LOGGED_OUT) && !getToken()) {
    showAuth('');
    return;
  }
  try {
    await enterApp(await auth.me());
  } catch (err) {
    showAuth(err && err.status && err.status !== 401 ? err.message : '');
  }
}

boot().catch((err) => {
  const box = $('boot-error');
  box.textContent = `The page failed to start: ${err && err.message ? err.message : err}`;
  box.hidden = false;
});
