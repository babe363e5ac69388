// Adapter-version metrics, shared by "My personalization" and the operator dashboard:
// a table of versions and one small chart per numeric metric.

import { el, formatNumber, formatTime } from './util.js';
import { lineChart, numericKeys } from './charts.js';

// Shown first when present (the learning job groups metrics by prefix, CleanRL-style): the gate's
// measurement of the adapter itself (learning/gate.py PolicyEval.as_metrics("gate/candidate")),
// written for every adapter whatever its training did; tests/frontend/test_metric_keys.py holds
// these names to the trainer's.
export const KEY_METRICS = ['gate/candidate/mean_reward', 'gate/candidate/kl_per_token', 'gate/candidate/harm_rate'];
const TITLES = {
  'gate/candidate/mean_reward': 'Reward (mean)',
  'gate/candidate/kl_per_token': 'KL to base (per token)',
  'gate/candidate/harm_rate': 'Harm rate',
};

export const metricTitle = (key) => TITLES[key] || key;

export function versionLabel(v) {
  if (v === null || v === undefined) return '—';
  return typeof v === 'number' ? `v${v}` : String(v);
}

/** Versions oldest first, for charts. */
function chronological(versions) {
  return [...versions].sort((a, b) => (Number(a.version) || 0) - (Number(b.version) || 0));
}

/** Small multiples: one line chart per numeric metric over versions ("show whatever exists"). */
export function metricCharts(versions, { max = 9 } = {}) {
  const rows = chronological(versions || []);
  const keys = numericKeys(rows.map((v) => v.metrics), KEY_METRICS).slice(0, max);
  if (!keys.length) return el('p', { class: 'muted no-data' }, 'No metrics yet: no adapter has been trained.');
  const labels = rows.map((v) => versionLabel(v.version));
  return el('div', { class: 'chart-grid' }, keys.map((k) => lineChart({
    title: metricTitle(k),
    labels,
    series: [{ name: metricTitle(k), values: rows.map((v) => (v.metrics || {})[k] ?? null) }],
  })));
}

export function metricSummary(metrics) {
  const keys = numericKeys([metrics], KEY_METRICS).slice(0, 4);
  if (!keys.length) return el('span', { class: 'muted' }, '—');
  return el('span', { class: 'metric-summary' }, keys.map((k) => el('span', { class: 'metric' },
    el('span', { class: 'metric-key' }, `${k} `), formatNumber(metrics[k]))));
}

/** Table of versions, newest first; `actions(version)` may add a cell of buttons. */
export function versionsTable(versions, { active = null, actions = null, caption = 'Adapter versions' } = {}) {
  const rows = chronological(versions || []).reverse();
  if (!rows.length) return el('p', { class: 'muted' }, 'No versions yet.');
  const isActive = (v) => active !== null && (v.version === active || versionLabel(v.version) === versionLabel(active)
    || (typeof active === 'string' && active.endsWith(`-v${v.version}`)));
  return el('div', { class: 'table-wrap' }, el('table', {},
    el('caption', { class: 'visually-hidden' }, caption),
    el('thead', {}, el('tr', {},
      el('th', { scope: 'col' }, 'Version'), el('th', { scope: 'col' }, 'Status'), el('th', { scope: 'col' }, 'Created'),
      el('th', { scope: 'col' }, 'Metrics'), actions ? el('th', { scope: 'col' }, el('span', { class: 'visually-hidden' }, 'Actions')) : null)),
    el('tbody', {}, rows.map((v) => el('tr', { class: isActive(v) ? 'active-row' : '' },
      el('td', {}, versionLabel(v.version), isActive(v) ? el('span', { class: 'badge ok' }, 'active') : null),
      el('td', {}, el('span', { class: `badge status-${v.status}` }, v.status || '—'),
        v.reason ? el('div', { class: 'muted small-text' }, v.reason) : null),
      el('td', {}, formatTime(v.created_at)),
      el('td', {}, metricSummary(v.metrics || {})),
      actions ? el('td', {}, actions(v)) : null)))));
}
