// Tiny hand-written SVG charts (line and stacked bar). Built with DOM calls, never
// markup strings, so labels from the server stay text. Colours come from CSS classes
// (.series-0 … .series-5) so the page needs no inline styles.

import { el, formatNumber } from './util.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 360;
const H = 170;
const PAD = { left: 52, right: 10, top: 10, bottom: 28 };

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c) node.append(c);
  return node;
}

/** About `count` round tick values covering [lo, hi]. */
function ticks(lo, hi, count = 4) {
  if (lo === hi) {
    const d = Math.abs(lo) || 1;
    lo -= d / 2;
    hi += d / 2;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const start = Math.floor(lo / step) * step;
  const out = [];
  for (let v = start; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  if (out[out.length - 1] < hi) out.push(out[out.length - 1] + step);
  return out;
}

function noData(title, reason = 'no data') {
  return el('figure', { class: 'chart' }, el('figcaption', {}, title), el('p', { class: 'muted no-data' }, reason));
}

function frame(title, labels, yTicks, description) {
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  const y0 = H - PAD.bottom;
  const y1 = PAD.top;
  const lo = yTicks[0];
  const hi = yTicks[yTicks.length - 1];
  const yScale = (v) => y0 - ((v - lo) / (hi - lo || 1)) * (y0 - y1);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': description, preserveAspectRatio: 'xMidYMid meet' },
    svg('title', { text: description }));
  for (const t of yTicks) {
    const y = yScale(t);
    root.append(svg('line', { x1: x0, x2: x1, y1: y, y2: y, class: 'grid' }),
      svg('text', { x: x0 - 6, y: y + 4, class: 'tick', 'text-anchor': 'end', text: formatNumber(t) }));
  }
  root.append(svg('line', { x1: x0, x2: x1, y1: y0, y2: y0, class: 'axis' }));
  const every = Math.max(1, Math.ceil(labels.length / 8));
  return { root, x0, x1, y0, yScale, every };
}

function legend(series) {
  if (series.length < 2) return null;
  return el('div', { class: 'legend' }, series.map((s, i) => el('span', { class: 'legend-item' },
    el('span', { class: `swatch series-${i % 6}`, 'aria-hidden': 'true' }), s.name)));
}

/**
 * Line chart. labels: x labels (e.g. "v1", "v2"); series: [{name, values: (number|null)[]}].
 * Missing values break the line; a chart with no numbers at all says "no data".
 */
export function lineChart({ title, labels, series }) {
  const nums = series.flatMap((s) => s.values).filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (!labels.length || !nums.length) return noData(title);
  const yTicks = ticks(Math.min(...nums), Math.max(...nums));
  const desc = `${title}: ${series.map((s) => `${s.name} ${s.values.map((v) => (v === null || v === undefined ? '–' : formatNumber(v))).join(', ')}`).join('; ')}`;
  const f = frame(title, labels, yTicks, desc);
  const xAt = (i) => (labels.length === 1 ? (f.x0 + f.x1) / 2 : f.x0 + 8 + (i * (f.x1 - f.x0 - 16)) / (labels.length - 1));
  labels.forEach((label, i) => {
    if (i % f.every === 0 || i === labels.length - 1) {
      f.root.append(svg('text', { x: xAt(i), y: f.y0 + 18, class: 'tick', 'text-anchor': 'middle', text: label }));
    }
  });
  series.forEach((s, k) => {
    let d = '';
    let pen = false;
    s.values.forEach((v, i) => {
      if (typeof v !== 'number' || !Number.isFinite(v)) { pen = false; return; }
      d += `${pen ? 'L' : 'M'}${xAt(i).toFixed(1)},${f.yScale(v).toFixed(1)}`;
      pen = true;
    });
    if (d) f.root.append(svg('path', { d, class: `line series-${k % 6}` }));
    s.values.forEach((v, i) => {
      if (typeof v !== 'number' || !Number.isFinite(v)) return;
      f.root.append(svg('circle', { cx: xAt(i), cy: f.yScale(v), r: 3.5, class: `dot series-${k % 6}` },
        svg('title', { text: `${s.name} ${labels[i]}: ${formatNumber(v)}` })));
    });
  });
  return el('figure', { class: 'chart' }, el('figcaption', {}, title), f.root, legend(series));
}

/** Stacked bar chart: labels per bar, series stacked bottom-up. */
export function barChart({ title, labels, series }) {
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (Number(s.values[i]) || 0), 0));
  if (!labels.length || !totals.some((t) => t > 0)) return noData(title);
  const yTicks = ticks(0, Math.max(...totals));
  const desc = `${title}: ${labels.map((l, i) => `${l} ${totals[i]}`).join(', ')}`;
  const f = frame(title, labels, yTicks, desc);
  const slot = (f.x1 - f.x0) / labels.length;
  const bw = Math.max(2, Math.min(28, slot * 0.7));
  labels.forEach((label, i) => {
    const cx = f.x0 + slot * (i + 0.5);
    let base = 0;
    series.forEach((s, k) => {
      const v = Number(s.values[i]) || 0;
      if (v <= 0) return;
      const yTop = f.yScale(base + v);
      f.root.append(svg('rect', { x: cx - bw / 2, y: yTop, width: bw, height: f.yScale(base) - yTop, class: `bar series-${k % 6}` },
        svg('title', { text: `${label} ${s.name}: ${v}` })));
      base += v;
    });
    if (i % f.every === 0 || i === labels.length - 1) {
      f.root.append(svg('text', { x: cx, y: f.y0 + 18, class: 'tick', 'text-anchor': 'middle', text: label }));
    }
  });
  return el('figure', { class: 'chart' }, el('figcaption', {}, title), f.root, legend(series));
}

/** Every key whose value is a finite number in at least one of `rows` (metric dicts), sorted with favourites first. */
export function numericKeys(rows, favourites = []) {
  const keys = new Set();
  for (const r of rows) {
    for (const [k, v] of Object.entries(r || {})) if (typeof v === 'number' && Number.isFinite(v)) keys.add(k);
  }
  const fav = favourites.filter((k) => keys.has(k));
  return [...fav, ...[...keys].filter((k) => !fav.includes(k)).sort()];
}
