// "My personalization": the user's adapter history and metrics, reset, and their
// feedback data (export as a JSON download, delete).

import { api, el, $, confirmDialog, downloadJson } from './util.js';
import { modelLabel } from './render.js';
import { metricCharts, versionsTable } from './metrics.js';
import { learnedCard } from './learned.js';

const POLICY_TEXT = {
  user: 'your personalized model',
  global: 'the shared model trained on everyone’s feedback',
  base: 'the base model (no personalization yet)',
};

function note(text, kind = 'ok') {
  return el('p', { class: `note ${kind}`, role: 'status' }, text);
}

export async function showMe(message = null) {
  const root = $('#me-content');
  root.replaceChildren(el('p', { class: 'muted' }, 'Loading…'));
  let adapter = null;
  let loadError = null;
  let learned = null;
  let learnedError = null;
  const [a, l] = await Promise.allSettled([api('api/me/adapter'), api('api/me/learned')]);
  if (a.status === 'fulfilled') adapter = a.value; else loadError = a.reason.detail || String(a.reason);
  if (l.status === 'fulfilled') learned = l.value; else learnedError = l.reason.detail || String(l.reason);
  const status = el('div', { 'aria-live': 'polite' }, message ? note(message) : null);

  async function act(button, work) {
    button.disabled = true;
    status.replaceChildren();
    try {
      const message = await work();
      if (message) status.replaceChildren(note(message));
    } catch (err) {
      status.replaceChildren(note(`Failed: ${err.detail || err}`, 'error'));
    } finally {
      button.disabled = false;
    }
  }

  const resetBtn = el('button', { type: 'button', class: 'button-danger' }, 'Reset personalization');
  resetBtn.addEventListener('click', () => act(resetBtn, async () => {
    if (!(await confirmDialog('Reset your personalization? Your personal model is deleted and replies come from the shared model until you are trained again. Your feedback is kept.', 'Reset'))) return null;
    await api('api/me/adapter', { method: 'DELETE' });
    await showMe();
    return null;
  }));
  const exportBtn = el('button', { type: 'button' }, 'Export my feedback (JSON)');
  exportBtn.addEventListener('click', () => act(exportBtn, async () => {
    const data = await api('api/me/feedback/export');
    downloadJson(data, `feedback-export-${new Date().toISOString().slice(0, 10)}.json`);
    return 'Export downloaded.';
  }));
  const deleteBtn = el('button', { type: 'button', class: 'button-danger' }, 'Delete my feedback');
  deleteBtn.addEventListener('click', () => act(deleteBtn, async () => {
    if (!(await confirmDialog('Delete all your ratings, rankings and comments? Your personal model, trained on them, is deleted too. The shared model serves on until its next training run, which starts over without them, so nothing of them stays. This cannot be undone.', 'Delete'))) return null;
    await api('api/me/feedback', { method: 'DELETE' });
    await showMe('Your feedback was deleted. Your personal model, trained on it, was deleted too; the shared model serves on until its next training run, which starts over without your ratings.');
    return null;
  }));
  const accountBtn = el('button', { type: 'button', class: 'button-danger', 'data-testid': 'delete-account' }, 'Delete my account');
  accountBtn.addEventListener('click', () => act(accountBtn, async () => {
    if (!(await confirmDialog('Delete your account with all your conversations, ratings and your personal model? The shared model serves on until its next training run, which starts over without your ratings. This cannot be undone.', 'Delete account'))) return null;
    await api('api/me', { method: 'DELETE' });
    window.location.reload();
    return null;
  }));

  const versions = (adapter && adapter.versions) || [];
  const active = adapter ? adapter.active_version : null;
  root.replaceChildren(
    el('section', { class: 'card', 'aria-labelledby': 'me-now' },
      el('h2', { id: 'me-now' }, 'Who answers you now'),
      loadError ? note(`Could not load your adapter: ${loadError}`, 'error')
        : el('p', {}, 'Your replies come from ',
          el('strong', {}, POLICY_TEXT[adapter.policy] || adapter.policy || modelLabel(active)),
          active !== null && active !== undefined ? ` (${modelLabel(active)})` : '', '.')),
    learnedCard(learned, learnedError),
    el('section', { class: 'card', 'aria-labelledby': 'me-history' },
      el('h2', { id: 'me-history' }, 'Your adapter history'),
      versionsTable(versions, { active, caption: 'Your adapter versions' }),
      el('h3', {}, 'Metrics per version'),
      metricCharts(versions)),
    el('section', { class: 'card', 'aria-labelledby': 'me-data' },
      el('h2', { id: 'me-data' }, 'Your data'),
      el('p', { class: 'muted' }, 'Your ratings train your personalized model. Export them, or delete them for good.'),
      el('div', { class: 'row wrap' }, exportBtn, deleteBtn, resetBtn, accountBtn),
      status));
}
