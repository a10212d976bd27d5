// The conversation view: a list of messages, one of which may be an answer being streamed.
// User text is shown as plain text; answers, command replies and notes as sanitized Markdown.

import { renderMarkdownInto, renderPlainInto } from './render.js';

const ROLE_LABELS = {
  user: 'You', assistant: 'Assistant', command: 'Command', note: 'Server', error: 'Error',
};

/** 20260101120000 (UTC, YYYYMMDDHHMMSS) -> Date, or null. */
export function parseTimestamp(value) {
  const s = String(value ?? '');
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$/.exec(s);
  if (!m) return null;
  const date = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]));
  return Number.isNaN(date.getTime()) ? null : date;
}

export class ChatView {
  constructor(list) {
    this.list = list;
    this.streaming = null; // {li, body, text}
    this.renderQueued = false;
  }

  clear() {
    this.list.replaceChildren();
    this.streaming = null;
  }

  /** The init frame's history: [{content, is_user, timestamp, tokens}, ...], oldest first. */
  showHistory(items) {
    this.clear();
    const fragment = document.createDocumentFragment();
    for (const item of items) {
      if (!item || typeof item.content !== 'string') continue;
      const role = item.is_user ? 'user' : 'assistant';
      fragment.append(this.makeItem(role, item.content, parseTimestamp(item.timestamp)));
    }
    this.list.append(fragment);
    this.scrollToEnd(true);
  }

  addUser(text) { return this.append(this.makeItem('user', text, new Date())); }

  addCommand(text) { return this.append(this.makeItem('command', text, new Date())); }

  addNote(markdown) { return this.append(this.makeItem('note', markdown, new Date())); }

  addError({ code, title, message, detail }) {
    const li = this.makeItem('error', '', new Date());
    li.dataset.errorCode = code;
    const body = li.querySelector('.msg-body');
    const strong = document.createElement('p');
    strong.className = 'error-title';
    strong.textContent = title;
    body.append(strong);
    if (message) {
      const p = document.createElement('p');
      p.textContent = message;
      body.append(p);
    }
    if (detail) {
      const details = document.createElement('details');
      const summary = document.createElement('summary');
      summary.textContent = 'Details';
      const pre = document.createElement('p');
      pre.textContent = detail;
      details.append(summary, pre);
      body.append(details);
    }
    return this.append(li);
  }

  isStreaming() { return this.streaming !== null; }

  /** Begin an answer (optionally with the text so far, when resuming). */
  startAnswer(text = '') {
    const li = this.makeItem('assistant', '', new Date());
    li.dataset.state = 'streaming';
    li.setAttribute('aria-busy', 'true');
    this.append(li);
    this.streaming = { li, body: li.querySelector('.msg-body'), text: '' };
    if (text) this.appendDelta(text);
    return li;
  }

  appendDelta(delta) {
    if (!this.streaming) this.startAnswer();
    this.streaming.text += delta;
    this.queueRender();
  }

  /** End the streamed answer; `state` is 'done' or 'error'. */
  finishAnswer(state = 'done') {
    const s = this.streaming;
    if (!s) return null;
    this.streaming = null;
    renderMarkdownInto(s.body, s.text);
    s.li.dataset.state = state;
    s.li.removeAttribute('aria-busy'); // screen readers now read the whole answer once
    this.scrollToEnd(false);
    return s.li;
  }

  lastOfRole(role) {
    const items = this.list.querySelectorAll(`li[data-role="${role}"]`);
    return items.length ? items[items.length - 1] : null;
  }

  hasMessages() {
    return this.list.querySelector('li[data-role="user"], li[data-role="assistant"]') !== null;
  }

  // -- internals ---------------------------------------------------------------------------

  queueRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      const s = this.streaming;
      if (!s) return;
      const stick = this.nearEnd();
      renderMarkdownInto(s.body, s.text);
      if (stick) this.scrollToEnd(true);
    });
  }

  makeItem(role, text, date) {
    const li = document.createElement('li');
    li.className = `msg msg-${role}`;
    li.dataset.role = role;
    li.setAttribute('data-testid', 'message');
    const head = document.createElement('div');
    head.className = 'msg-head';
    const who = document.createElement('span');
    who.className = 'msg-who';
    who.textContent = ROLE_LABELS[role] || role;
    head.append(who);
    if (date) {
      const time = document.createElement('time');
      time.dateTime = date.toISOString();
      time.textContent = date.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
      head.append(time);
    }
    const body = document.createElement('div');
    body.className = 'msg-body';
    body.setAttribute('data-testid', 'message-body');
    if (role === 'user' || role === 'command') renderPlainInto(body, text);
    else if (role !== 'error') renderMarkdownInto(body, text);
    li.append(head, body);
    return li;
  }

  append(li) {
    const stick = this.nearEnd();
    this.list.append(li);
    if (stick || li.dataset.role === 'user') this.scrollToEnd(true);
    return li;
  }

  nearEnd() {
    const el = this.list;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  }

  scrollToEnd(force) {
    if (force || this.nearEnd()) this.list.scrollTop = this.list.scrollHeight;
  }
}
