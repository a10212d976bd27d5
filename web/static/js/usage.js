// The usage panel: tokens (prompt + answer) per UTC day over the last days, drawn as a small
// SVG bar chart by this script (no library), from GET /api/user/usage. Each bar carries
// data-day and data-tokens; its title says the split and the requests.

import { usage as usageApi } from './api.js';
import { $, el } from './ui.js';

const DAYS = 14;
const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 280;
const HEIGHT = 90;
const LABEL = 14; // px under the bars for the first and last day

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

/** The last `count` UTC days up to `until` (YYYY-MM-DD), oldest first. */
function lastDays(until, count) {
  const end = until ? new Date(`${until}T00:00:00Z`) : new Date();
  const days = [];
  for (let i = count - 1; i >= 0; i -= 1) {
    days.push(isoDay(new Date(end.getTime() - i * 86400000)));
  }
  return days;
}

export class UsagePanel {
  /** @param {{onAuthLost: () => void}} opts */
  constructor({ onAuthLost }) {
    this.onAuthLost = onAuthLost;
    this.chart = $('usage-chart');
    this.summary = $('usage-summary');
    this.error = $('usage-error');
    this.timer = null;
    $('usage-refresh').addEventListener('click', () => this.refresh());
  }

  reset() {
    clearTimeout(this.timer);
    this.chart.replaceChildren();
    this.summary.textContent = '';
    this.error.textContent = '';
  }

  /** Refresh a moment after an answer ended (answers in a row refresh once). */
  soon(delayMs = 500) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), delayMs);
  }

  async refresh() {
    let data;
    try {
      data = await usageApi.list(DAYS);
      this.error.textContent = '';
    } catch (err) {
      if (err && err.status === 401) { this.onAuthLost(); return; }
      this.error.textContent = err && err.message ? err.message : 'Usage is not available.';
      return;
    }
    this.render(data);
  }

  render(data) {
    const perDay = new Map();
    for (const row of data.usage) {
      const day = perDay.get(row.day) || { prompt: 0, answer: 0, requests: 0 };
      day.prompt += row.prompt_tokens;
      day.answer += row.answer_tokens;
      day.requests += row.requests;
      perDay.set(row.day, day);
    }
    const days = lastDays(data.until, DAYS);
    const totals = days.map((d) => {
      const v = perDay.get(d);
      return v ? v.prompt + v.answer : 0;
    });
    const max = Math.max(1, ...totals);
    const slot = WIDTH / days.length;
    const chartHeight = HEIGHT - LABEL;
    const root = svg('svg', {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img', class: 'usage-svg',
      'aria-label': `Tokens per day, last ${DAYS} days`,
    });
    days.forEach((day, i) => {
      const total = totals[i];
      const h = total ? Math.max(2, Math.round((total / max) * (chartHeight - 2))) : 0;
      const bar = svg('rect', {
        x: (i * slot + 1).toFixed(1), y: chartHeight - h, width: (slot - 2).toFixed(1), height: h,
        class: 'usage-bar', 'data-testid': 'usage-bar', 'data-day': day, 'data-tokens': total,
      });
      const v = perDay.get(day);
      const title = svg('title', {});
      title.textContent = v
        ? `${day}: ${total} tokens (${v.prompt} prompt, ${v.answer} answer), ${v.requests} requests`
        : `${day}: no use`;
      bar.append(title);
      root.append(bar);
    });
    root.append(svg('line', { x1: 0, y1: chartHeight, x2: WIDTH, y2: chartHeight, class: 'usage-axis' }));
    for (const [i, anchor] of [[0, 'start'], [days.length - 1, 'end']]) {
      const label = svg('text', {
        x: anchor === 'start' ? 0 : WIDTH, y: HEIGHT - 2, 'text-anchor': anchor, class: 'usage-label',
      });
      label.textContent = days[i].slice(5);
      root.append(label);
    }
    this.chart.replaceChildren(root);
    const today = perDay.get(days[days.length - 1]);
    this.summary.replaceChildren(el('span', { 'data-testid': 'usage-today' },
      today ? `Today: ${today.prompt + today.answer} tokens, ${today.requests} requests`
        : 'Today: no use yet'));
  }
}
