// Operator dashboard: trigger training, watch runs, inspect/roll back adapters, plots,
// the schedule and the latest evaluation report. Only operators see the nav link; the
// API enforces the role either way.

import { api, el, $, formatNumber, formatTime, showBanner } from './util.js';
import { barChart, lineChart } from './charts.js';
import { metricCharts, metricSummary, versionLabel, versionsTable } from './metrics.js';

const POLL_MS = 1500;
const A = {
  users: [],
  runs: [],
  openRuns: new Set(), // run ids whose results are expanded
  pollTimer: null,
  visible: false,
  chartScope: null, // which adapter scope the metric charts show
  lastActive: false,
};

const userName = (id) => {
  if (id === null || id === undefined) return 'global';
  const u = A.users.find((x) => x.id === id);
  return u ? u.username : `user ${id}`;
};

function section(id, title, ...children) {
  return el('section', { class: 'card', 'aria-labelledby': id }, el('h2', { id }, title), ...children);
}

// --- training runs -------------------------------------------------------------------------

function triggerForm() {
  const status = el('p', { class: 'muted', 'aria-live': 'polite' });
  const picks = el('fieldset', { class: 'user-picks', hidden: true },
    el('legend', {}, 'Users to train'),
    A.users.length ? A.users.map((u) => el('label', { class: 'check' },
      el('input', { type: 'checkbox', value: u.id, 'aria-label': `Train ${u.username}` }), ` ${u.username}`,
      u.role === 'operator' ? el('span', { class: 'muted' }, ' (operator)') : null))
      : el('p', { class: 'muted' }, 'No users yet.'));
  const all = el('input', { type: 'radio', name: 'train-scope', value: 'all', checked: true, id: 'scope-all' });
  const chosen = el('input', { type: 'radio', name: 'train-scope', value: 'chosen', id: 'scope-chosen' });
  for (const r of [all, chosen]) r.addEventListener('change', () => { picks.hidden = !chosen.checked; });
  const button = el('button', { type: 'submit', class: 'button-primary', 'data-testid': 'admin-trigger-run' }, 'Start training run');
  const form = el('form', { class: 'trigger-form' },
    el('div', { class: 'row wrap' },
      el('label', { class: 'check', for: 'scope-all' }, all, ' All users with feedback'),
      el('label', { class: 'check', for: 'scope-chosen' }, chosen, ' Chosen users')),
    picks, el('div', { class: 'row' }, button), status);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let userIds = null;
    if (chosen.checked) {
      userIds = [...picks.querySelectorAll('input:checked')].map((c) => Number(c.value));
      if (!userIds.length) {
        status.textContent = 'Choose at least one user, or train all users.';
        return;
      }
    }
    button.disabled = true;
    try {
      const run = await api('api/admin/training-runs', { method: 'POST', json: { user_ids: userIds }, quiet: true });
      status.textContent = `Run ${run.id} ${run.status}.`;
      A.openRuns.add(run.id);
      await refreshRuns();
    } catch (err) {
      status.textContent = err.status === 409 ? 'A run is already queued or running; wait for it to finish.'
        : `Could not start a run: ${err.detail}`;
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function progressBar(run) {
  const pct = Math.round(Math.max(0, Math.min(1, Number(run.progress) || 0)) * 100);
  const fill = el('span', { class: 'progress-fill' });
  fill.style.width = `${pct}%`; // CSSOM, allowed by the page's style-src CSP
  return el('span', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct, 'aria-label': `Run ${run.id} progress` },
    fill, el('span', { class: 'progress-text' }, `${pct}%`));
}

function resultsTable(run) {
  const results = run.results || [];
  if (!results.length) return el('p', { class: 'muted' }, run.status === 'succeeded' ? 'No users had enough new feedback to train.' : 'No results yet.');
  return el('div', { class: 'table-wrap' }, el('table', {},
    el('caption', { class: 'visually-hidden' }, `Results of run ${run.id}`),
    el('thead', {}, el('tr', {}, ['User', 'Adapter', 'Decision', 'Reason', 'Metrics'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, results.map((r) => el('tr', {},
      el('td', {}, userName(r.user_id)),
      el('td', {}, r.adapter_version ?? '—'),
      el('td', {}, r.promoted === true ? el('span', { class: 'badge ok' }, 'promoted')
        : r.promoted === false ? el('span', { class: 'badge bad' }, 'rejected') : '—'),
      el('td', { class: 'reason' }, r.reason || ''),
      el('td', {}, metricSummary(r.metrics || {})))))));
}

function runsTable() {
  if (!A.runs.length) return el('p', { class: 'muted' }, 'No training runs yet.');
  return el('div', { class: 'runs' }, A.runs.map((run) => {
    const details = el('details', { open: A.openRuns.has(run.id) ? true : null },
      el('summary', {}, `Results (${(run.results || []).length})`), resultsTable(run));
    details.addEventListener('toggle', () => {
      if (details.open) A.openRuns.add(run.id); else A.openRuns.delete(run.id);
    });
    return el('div', { class: `run-row status-${run.status}`, 'data-testid': 'admin-run-row', 'data-run-id': run.id, 'data-status': run.status },
      el('div', { class: 'run-head' },
        el('strong', {}, `Run ${run.id}`),
        el('span', { class: `badge status-${run.status}` }, run.status),
        progressBar(run),
        el('span', { class: 'muted small-text' }, `${run.trigger || 'manual'} · ${formatTime(run.created_at)}`)),
      run.error ? el('p', { class: 'note error' }, run.error) : null,
      details);
  }));
}

async function refreshRuns() {
  try {
    const runs = await api('api/admin/training-runs', { quiet: true });
    A.runs = [...runs].sort((a, b) => b.id - a.id);
  } catch (err) {
    const box = $('#admin-runs');
    if (box) box.replaceChildren(el('p', { class: 'note error' }, `Could not load runs: ${err.detail}`));
    return;
  }
  const box = $('#admin-runs');
  if (box) box.replaceChildren(runsTable());
  // When the last active run finishes, adapters and stats have news.
  const active = A.runs.some((r) => r.status === 'queued' || r.status === 'running');
  if (A.lastActive && !active) {
    refreshAdapters();
    refreshStats();
  }
  A.lastActive = active;
}

function poll() {
  clearTimeout(A.pollTimer);
  if (!A.visible) return;
  A.pollTimer = setTimeout(async () => {
    if (document.visibilityState === 'visible') await refreshRuns();
    poll();
  }, POLL_MS);
}

// --- adapters ----------------------------------------------------------------------------

async function refreshAdapters() {
  const box = $('#admin-adapters');
  const charts = $('#admin-metric-charts');
  if (!box) return;
  let scopes;
  try {
    scopes = await api('api/admin/adapters', { quiet: true });
  } catch (err) {
    box.replaceChildren(el('p', { class: 'note error' }, `Could not load adapters: ${err.detail}`));
    return;
  }
  if (!scopes.length) {
    box.replaceChildren(el('p', { class: 'muted' }, 'No adapters yet. Start a training run once users have rated replies.'));
    charts.replaceChildren(el('p', { class: 'muted no-data' }, 'no data'));
    return;
  }
  box.replaceChildren(...scopes.map((s) => {
    const status = el('span', { class: 'muted small-text', 'aria-live': 'polite' });
    const rollback = s.user_id === null || s.user_id === undefined ? null
      : el('button', {
        type: 'button', class: 'small', 'aria-label': `Roll back ${userName(s.user_id)} to the previous version`,
        disabled: s.active_version === null || s.active_version === undefined,
        onclick: async (e) => {
          e.target.disabled = true;
          try {
            await api(`api/admin/users/${s.user_id}/adapter/rollback`, { method: 'POST', quiet: true });
            status.textContent = 'Rolled back.';
            await refreshAdapters();
          } catch (err) {
            status.textContent = `Rollback failed: ${err.detail}`;
            e.target.disabled = false;
          }
        },
      }, 'Roll back');
    return el('div', { class: 'adapter-scope' },
      el('div', { class: 'row wrap' },
        el('h3', {}, userName(s.user_id)),
        el('span', { class: 'muted' }, 'active: ', el('strong', {}, versionLabel(s.active_version))),
        rollback, status),
      versionsTable(s.versions, { active: s.active_version, caption: `Adapter versions of ${userName(s.user_id)}` }));
  }));

  // Metric plots for one scope at a time.
  const key = (s) => String(s.user_id ?? 'global');
  if (!A.chartScope || !scopes.some((s) => key(s) === A.chartScope)) A.chartScope = key(scopes[0]);
  const select = el('select', { id: 'chart-scope', 'aria-label': 'Adapter to plot' },
    scopes.map((s) => el('option', { value: key(s), selected: key(s) === A.chartScope }, userName(s.user_id))));
  const plot = el('div');
  const draw = () => {
    const s = scopes.find((x) => key(x) === A.chartScope);
    plot.replaceChildren(metricCharts(s ? s.versions : []));
  };
  select.addEventListener('change', () => { A.chartScope = select.value; draw(); });
  draw();
  charts.replaceChildren(el('div', { class: 'row' }, el('label', { for: 'chart-scope' }, 'Adapter: '), select), plot);
}

// --- stats ---------------------------------------------------------------------------------

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** Feedback per day, tolerant of shapes: [{day|date, up, down, count}] or {"2025-01-01": n | {up, down}}. */
export function feedbackVolume(stats) {
  const raw = stats && (stats.feedback_per_day ?? stats.feedback_volume ?? (stats.feedback && stats.feedback.per_day));
  if (!raw) return null;
  const rows = Array.isArray(raw) ? raw : Object.entries(raw).map(([day, v]) => (typeof v === 'object' ? { day, ...v } : { day, count: v }));
  const days = rows.map((r) => String(r.day ?? r.date ?? '').slice(5, 10) || '?');
  if (rows.some((r) => num(r.up) !== null || num(r.down) !== null)) {
    return { labels: days, series: [{ name: 'up', values: rows.map((r) => num(r.up) ?? 0) }, { name: 'down', values: rows.map((r) => num(r.down) ?? 0) }] };
  }
  return { labels: days, series: [{ name: 'feedback', values: rows.map((r) => num(r.count ?? r.total ?? r.n) ?? 0) }] };
}

/** Reward-model accuracy vs the length baseline, per run/version: [{accuracy, length_baseline…}] or one object. */
export function rewardAccuracy(stats) {
  let raw = stats && (stats.reward_model ?? stats.reward_model_accuracy ?? stats.reward_models);
  if (!raw) return null;
  if (!Array.isArray(raw)) raw = [raw];
  const base = (r) => num(r.length_baseline ?? r.length_baseline_accuracy ?? r.baseline_accuracy ?? r.baseline);
  const acc = (r) => num(r.accuracy ?? r.acc ?? r['reward/accuracy']);
  const rows = raw.filter((r) => r && (acc(r) !== null || base(r) !== null));
  if (!rows.length) return null;
  const label = (r, i) => (r.run_id !== undefined ? `run ${r.run_id}` : r.version !== undefined ? versionLabel(r.version)
    : r.created_at ? String(r.created_at).slice(5, 10) : `#${i + 1}`);
  return {
    labels: rows.map(label),
    series: [{ name: 'reward model', values: rows.map(acc) }, { name: 'length baseline', values: rows.map(base) }],
  };
}

async function refreshStats() {
  const box = $('#admin-stats');
  if (!box) return;
  let stats = null;
  try {
    stats = await api('api/admin/stats', { quiet: true });
  } catch {
    stats = null; // not available on this server: the charts say "no data"
  }
  const vol = stats && feedbackVolume(stats);
  const acc = stats && rewardAccuracy(stats);
  box.replaceChildren(el('div', { class: 'chart-grid' },
    vol ? barChart({ title: 'Feedback per day', ...vol }) : barChart({ title: 'Feedback per day', labels: [], series: [] }),
    acc ? lineChart({ title: 'Reward-model accuracy vs length baseline', ...acc })
      : lineChart({ title: 'Reward-model accuracy vs length baseline', labels: [], series: [] })),
    poolAuditTable(stats && stats.pool_audit));
}

/** Who fed the shared models in the newest run: thumbs-up on replies the harm judge flags, and who was kept out. */
export function poolAuditTable(audit) {
  if (!Array.isArray(audit) || !audit.length) {
    return el('p', { class: 'muted', 'data-testid': 'pool-audit' }, 'Shared-pool audit: no finished run yet.');
  }
  const rows = [...audit].sort((a, b) => Number(b.excluded) - Number(a.excluded) || (b.favoured_flagged ?? 0) - (a.favoured_flagged ?? 0));
  return el('div', { class: 'table-wrap', 'data-testid': 'pool-audit' }, el('table', {},
    el('caption', {}, `Shared-pool audit, run ${rows[0].run_id}: replies each user favoured that the harm judge flags`),
    el('thead', {}, el('tr', {}, ['User', 'Labels', 'Favoured', 'Favoured and flagged', 'Harm flags', 'Shared pool'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.map((r) => el('tr', {},
      el('td', {}, r.username ?? `#${r.user_id}`),
      el('td', {}, formatNumber(r.labels ?? 0)),
      el('td', {}, formatNumber(r.favoured ?? 0)),
      el('td', {}, formatNumber(r.favoured_flagged ?? 0)),
      el('td', {}, formatNumber(r.harm_flags ?? 0)),
      el('td', {}, r.excluded ? el('span', { class: 'badge bad', title: r.reason || '' }, 'kept out') : el('span', { class: 'badge ok' }, 'used')))))));
}

// --- schedule ----------------------------------------------------------------------------------

async function scheduleForm() {
  const status = el('p', { class: 'muted', 'aria-live': 'polite' });
  let sched = { cron: '', enabled: false };
  try {
    sched = await api('api/admin/schedule', { quiet: true });
  } catch (err) {
    status.textContent = `Could not load the schedule: ${err.detail}`;
  }
  const cron = el('input', { id: 'schedule-cron', value: sched.cron || '', 'aria-describedby': 'cron-hint', spellcheck: 'false', autocomplete: 'off' });
  const enabled = el('input', { type: 'checkbox', id: 'schedule-enabled', checked: Boolean(sched.enabled) });
  const form = el('form', { class: 'schedule-form' },
    el('label', { for: 'schedule-cron' }, 'Cron (minute hour day month weekday, server local time)'),
    cron,
    el('small', { id: 'cron-hint', class: 'muted' }, 'e.g. “0 2 * * *” = every night at 02:00'),
    el('label', { class: 'check', for: 'schedule-enabled' }, enabled, ' Enabled'),
    el('div', { class: 'row' }, el('button', { type: 'submit' }, 'Save schedule')),
    status);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const saved = await api('api/admin/schedule', { method: 'PUT', json: { cron: cron.value.trim(), enabled: enabled.checked }, quiet: true });
      status.textContent = `Saved: ${saved.cron} (${saved.enabled ? 'enabled' : 'disabled'}).`;
    } catch (err) {
      status.textContent = `Not saved: ${err.detail}`;
    }
  });
  return form;
}

// --- evaluation report (optional endpoint) ---------------------------------------------------

function flatRows(obj, prefix = '') {
  const rows = [];
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === 'object' && !Array.isArray(v) && prefix.split('.').length < 3) rows.push(...flatRows(v, key));
    else rows.push([key, typeof v === 'number' ? formatNumber(v) : Array.isArray(v) ? JSON.stringify(v) : String(v)]);
  }
  return rows;
}

async function evalReport() {
  let report;
  try {
    report = await api('api/admin/eval/latest', { quiet: true });
  } catch {
    return null; // optional: no report, no section
  }
  if (!report) return null;
  const rows = flatRows(report).slice(0, 200);
  return section('admin-eval-title', 'Latest evaluation report',
    el('div', { class: 'table-wrap' }, el('table', { class: 'kv' },
      el('caption', { class: 'visually-hidden' }, 'Latest evaluation report'),
      el('tbody', {}, rows.map(([k, v]) => el('tr', {}, el('th', { scope: 'row' }, k), el('td', {}, v)))))));
}

// --- users: the approval queue and new accounts -------------------------------------------------

/** Keep a user's labels and prompts out of the shared models (global adapter, population reward, harm head), or let them back. */
function poolToggle(u, status) {
  const out = u.shared_pool_excluded === true;
  return el('button', {
    type: 'button', class: 'small', 'data-testid': 'admin-shared-pool', 'aria-pressed': String(out),
    'aria-label': out ? `Let ${u.username} back into the shared models` : `Keep ${u.username} out of the shared models`,
    onclick: async (e) => {
      e.target.disabled = true;
      try {
        const r = await api(`api/admin/users/${u.id}/shared-pool`, { method: 'POST', json: { excluded: !out }, quiet: true });
        u.shared_pool_excluded = r.shared_pool_excluded;
        $('#admin-users').replaceChildren(usersTable());
        $('#admin-users p[aria-live]').textContent = r.shared_pool_excluded
          ? `${u.username}'s ratings stay out of the shared models from the next run on (their own adapter still learns).`
          : `${u.username}'s ratings count for the shared models again from the next run on.`;
      } catch (err) {
        status.textContent = `Could not change ${u.username}: ${err.detail}`;
        e.target.disabled = false;
      }
    },
  }, out ? 'Let back in' : 'Keep out');
}

function usersTable() {
  const status = el('p', { class: 'muted', 'aria-live': 'polite' });
  const rows = A.users.map((u) => el('tr', { 'data-testid': 'admin-user-row', 'data-user-id': u.id, 'data-approved': String(u.approved !== false) },
    el('td', {}, u.username, u.role === 'operator' ? el('span', { class: 'muted' }, ' (operator)') : null),
    el('td', {}, u.approved === false ? 'waiting for approval' : 'approved'),
    el('td', {}, formatNumber(u.feedback ?? 0)), el('td', {}, formatNumber(u.rankings ?? 0)),
    el('td', {}, u.approved === false ? el('button', {
      type: 'button', class: 'small', 'data-testid': 'admin-approve-user', 'aria-label': `Approve ${u.username}`,
      onclick: async (e) => {
        e.target.disabled = true;
        try {
          await api(`api/admin/users/${u.id}/approve`, { method: 'POST', quiet: true });
          u.approved = true;
          status.textContent = `${u.username} approved.`;
          $('#admin-users').replaceChildren(usersTable());
        } catch (err) {
          status.textContent = `Could not approve ${u.username}: ${err.detail}`;
          e.target.disabled = false;
        }
      },
    }, 'Approve') : null),
    el('td', {}, u.role === 'operator' ? null : poolToggle(u, status))));
  const name = el('input', { id: 'new-user-name', required: true, autocomplete: 'off', 'aria-label': 'New username' });
  const pass = el('input', { id: 'new-user-password', type: 'password', required: true, minlength: 12, autocomplete: 'new-password', 'aria-label': 'New password' });
  const form = el('form', { class: 'row wrap', 'data-testid': 'admin-create-user' },
    el('label', { for: 'new-user-name' }, 'Username '), name, el('label', { for: 'new-user-password' }, 'Password '), pass,
    el('button', { type: 'submit', class: 'small' }, 'Create account'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const u = await api('api/admin/users', { method: 'POST', json: { username: name.value, password: pass.value }, quiet: true });
      A.users.push(u);
      $('#admin-users').replaceChildren(usersTable());
      $('#admin-users p[aria-live]').textContent = `${u.username} created.`;
    } catch (err) {
      status.textContent = `Could not create the account: ${err.detail}`;
    }
  });
  return el('div', {},
    el('div', { class: 'table-wrap' }, el('table', {},
      el('caption', { class: 'visually-hidden' }, 'Accounts'),
      el('thead', {}, el('tr', {}, ['User', 'Status', 'Ratings', 'Rankings', '', 'Shared models'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows))),
    form, status);
}

// --- page ------------------------------------------------------------------------------------

export async function showAdmin() {
  A.visible = true;
  const root = $('#admin-content');
  root.replaceChildren(el('p', { class: 'muted' }, 'Loading…'));
  try {
    A.users = await api('api/admin/users', { quiet: true });
  } catch (err) {
    if (err.status === 403) {
      root.replaceChildren(el('p', { class: 'note error' }, 'Only operators can see this page.'));
      return;
    }
    A.users = [];
    showBanner(`Could not load users: ${err.detail}`, { key: 'admin' });
  }
  root.replaceChildren(
    section('admin-train-title', 'Training', triggerForm(), el('h3', {}, 'Runs'), el('div', { id: 'admin-runs' }, el('p', { class: 'muted' }, 'Loading…'))),
    section('admin-adapters-title', 'Adapters', el('div', { id: 'admin-adapters' }, el('p', { class: 'muted' }, 'Loading…'))),
    section('admin-plots-title', 'Metrics per version', el('div', { id: 'admin-metric-charts' })),
    section('admin-stats-title', 'Feedback and reward model', el('div', { id: 'admin-stats' })),
    section('admin-schedule-title', 'Schedule', await scheduleForm()),
    section('admin-users-title', 'Users', el('div', { id: 'admin-users' }, usersTable())));
  await Promise.all([refreshRuns(), refreshAdapters(), refreshStats()]);
  const report = await evalReport();
  if (report && A.visible) root.append(report);
  poll();
}

export function hideAdmin() {
  A.visible = false;
  clearTimeout(A.pollTimer);
}
