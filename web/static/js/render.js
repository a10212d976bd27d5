// Markdown rendering for chat messages, safely.
//
// Two layers: marked is told to show raw HTML in a message as text (like the chat apps do), and
// the rendered HTML always goes through DOMPurify before it touches the DOM. On top of both, the
// page's Content-Security-Policy forbids inline script.

import { Marked } from '../vendor/marked.esm.js';
import DOMPurify from '../vendor/purify.es.js';
import hljs from '../vendor/highlight.min.js';

const HTML_ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}

function highlight(code, lang) {
  if (lang && hljs.getLanguage(lang)) {
    try {
      return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    } catch { /* fall through to plain text */ }
  }
  return escapeHtml(code);
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    // Raw HTML in a message (block or inline) is shown as text, not interpreted.
    html(token) {
      return escapeHtml(token.text);
    },
    code(token) {
      const lang = (token.lang || '').trim().split(/\s+/)[0].toLowerCase();
      const cls = lang ? ` class="hljs language-${escapeHtml(lang)}"` : ' class="hljs"';
      const label = lang ? ` data-lang="${escapeHtml(lang)}"` : '';
      return `<pre${label}><code${cls}>${highlight(token.text, lang)}</code></pre>\n`;
    },
  },
});

const PURIFY_CONFIG = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'option', 'iframe'],
  FORBID_ATTR: ['style', 'srcset'],
  ALLOW_DATA_ATTR: false,
  ADD_ATTR: ['data-lang'],
};

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

/** Markdown text -> sanitized HTML string. */
export function markdownToSafeHtml(text) {
  const html = marked.parse(String(text || ''), { async: false });
  return DOMPurify.sanitize(html, PURIFY_CONFIG);
}

/** Render Markdown into `element` (replacing its content) and add copy buttons to code blocks. */
export function renderMarkdownInto(element, text) {
  element.innerHTML = markdownToSafeHtml(text);
  for (const pre of element.querySelectorAll('pre')) addCopyButton(pre);
}

/** Plain text (a user's own message): never interpreted as HTML. */
export function renderPlainInto(element, text) {
  element.textContent = String(text || '');
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Older browsers or a denied permission: copy through a temporary selection.
    const area = document.createElement('textarea');
    area.value = text;
    area.setAttribute('readonly', '');
    area.style.position = 'fixed';
    area.style.opacity = '0';
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    area.remove();
    return ok;
  }
}

function addCopyButton(pre) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'copy-code';
  button.textContent = 'Copy';
  button.setAttribute('aria-label', 'Copy code');
  button.addEventListener('click', async () => {
    const code = pre.querySelector('code');
    const ok = await copyText(code ? code.textContent : pre.textContent);
    button.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  });
  pre.append(button);
}
