// REST client for the chat page: auth, socket tickets, API keys, rooms.
// Errors come back as {"status","msg","detail","code"}; they are thrown as ApiError with a
// human-readable message, never raw JSON.

const TOKEN_KEY = 'chat.jwt';

export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code || '';
    this.detail = detail || '';
  }
}

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY); } catch { return null; }
}

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch { /* storage unavailable: the HttpOnly cookie still carries the session */ }
}

function fallbackMessage(status) {
  if (status === 0) return 'Cannot reach the server. Check your connection and try again.';
  if (status === 401) return 'Please log in again.';
  if (status === 403) return 'You are not allowed to do that.';
  if (status === 404) return 'Not found.';
  if (status === 409) return 'That already exists.';
  if (status === 413) return 'That is too long.';
  if (status === 422 || status === 400) return 'Some fields are not valid.';
  if (status === 429) return 'Too many requests. Wait a moment and try again.';
  if (status >= 500) return 'The server had a problem. Try again in a moment.';
  return `Request failed (HTTP ${status}).`;
}

function textOf(value) {
  if (value == null) return '';
  if (typeof value === 'string') return value;
  // A validation detail may be a list of {loc, msg}: keep only what a person can read.
  if (Array.isArray(value)) return value.map(textOf).filter(Boolean).join('; ');
  if (typeof value === 'object') {
    if (typeof value.msg === 'string') return value.msg;
    if (typeof value.message === 'string') return value.message;
    return '';
  }
  return String(value);
}

export async function request(method, path, body, { timeoutMs = 0 } = {}) {
  const headers = { Accept: 'application/json' };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, credentials: 'same-origin' };
  if (timeoutMs > 0 && typeof AbortSignal.timeout === 'function') {
    init.signal = AbortSignal.timeout(timeoutMs); // a hung request fails like a network error
  }
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', fallbackMessage(0));
  }
  let raw;
  try {
    raw = await response.text();
  } catch { // the body was cut off (or timed out)
    throw new ApiError(0, 'network', fallbackMessage(0));
  }
  let data = null;
  if (raw) {
    try { data = JSON.parse(raw); } catch { data = null; }
  }
  if (!response.ok) {
    const msg = textOf(data && data.msg) || fallbackMessage(response.status);
    throw new ApiError(response.status, data && data.code, msg, textOf(data && data.detail));
  }
  return data;
}

function bearerFrom(data) {
  const value = data && (data.Authorization || data.authorization || data.access_token);
  if (typeof value !== 'string') return null;
  return value.replace(/^Bearer\s+/i, '');
}

export const auth = {
  async register(email, password) {
    const data = await request('POST', '/api/auth/register/email', { email, password });
    setToken(bearerFrom(data));
    return data;
  },
  async login(email, password) {
    const data = await request('POST', '/api/auth/login/email', { email, password });
    setToken(bearerFrom(data));
    return data;
  },
  me() {
    return request('GET', '/api/user/me');
  },
  async logout() {
    // Ask the server to drop the HttpOnly cookie; a server without this route is fine.
    try { await request('POST', '/api/auth/logout'); } catch { /* ignore */ }
    setToken(null);
  },
};

const enc = encodeURIComponent;
const TICKET_TIMEOUT_MS = 15000;

export const tickets = {
  /** A single-use ticket for one chat socket of the signed-in user (valid a few seconds). */
  async create() {
    const data = await request('POST', '/api/user/ws-ticket', undefined, { timeoutMs: TICKET_TIMEOUT_MS });
    const ticket = data && data.ticket;
    if (typeof ticket !== 'string' || !ticket) {
      throw new ApiError(0, 'bad_ticket', 'The server sent no socket ticket.');
    }
    return ticket;
  },
};

export const keys = {
  async list() {
    const data = await request('GET', '/api/user/apikeys'); // a plain JSON list of keys
    return Array.isArray(data) ? data : [];
  },
  create(userMemo) {
    return request('POST', '/api/user/apikeys', { user_memo: userMemo });
  },
  update(id, userMemo, status) {
    return request('PUT', `/api/user/apikeys/${enc(id)}`, { user_memo: userMemo, status });
  },
  remove(id) {
    return request('DELETE', `/api/user/apikeys/${enc(id)}`);
  },
};

export const usage = {
  /** GET /api/user/usage: rows of {day, key_id, model, requests, prompt_tokens, answer_tokens}. */
  async list(days) {
    const data = await request('GET', `/api/user/usage?days=${enc(days)}`);
    return (data && Array.isArray(data.usage)) ? data : { usage: [], until: '' };
  },
};

export const rooms = {
  async list() {
    const data = await request('GET', '/api/user/chatrooms');
    return Array.isArray(data) ? data : (data && (data.chat_rooms || data.items)) || [];
  },
  rename(chatRoomId, name) {
    return request('PUT', `/api/user/chatrooms/${enc(chatRoomId)}`, { name });
  },
  remove(chatRoomId) {
    return request('DELETE', `/api/user/chatrooms/${enc(chatRoomId)}`);
  },
};
