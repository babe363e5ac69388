// "What the assistant learned": from GET api/me/learned, the reply traits that move this user's
// reward most (from the reward model of the adapter that serves them), their ratings per
// training round, each round's gate win rate against the base, and their reward over versions.

import { el, formatNumber, formatTime } from './util.js';
import { lineChart } from './charts.js';

const pct = (v) => (typeof v === 'number' ? `${Math.round(v * 100)}%` : '—');
const labelsText = (c) => `${c.up} thumbs up · ${c.down} thumbs down · ${c.rankings} rankings`;

function traitsList(learned) {
  if (!learned.traits.length) {
    return el('p', { class: 'muted', 'data-testid': 'learned-traits-empty' },
      'Nothing yet: once a training run has fitted a reward model to your ratings, the reply traits that matter most to you appear here.');
  }
  return el('div', {},
    el('p', {}, `From your ratings, the reward model of ${learned.traits_from} learned that you:`),
    el('ul', { class: 'traits', 'data-testid': 'learned-traits' }, learned.traits.map((t) => el('li', {},
      el('span', { class: `trait-dir ${t.likes ? 'likes' : 'dislikes'}` }, t.likes ? 'prefer' : 'avoid'),
      ` ${t.description} `,
      el('span', { class: 'muted' }, `(weight ${formatNumber(t.weight)})`)))));
}

function roundsTable(rounds) {
  const rows = rounds.map((r) => el('tr', { 'data-testid': 'learned-round' },
    el('th', { scope: 'row' }, r.version === null ? 'Not trained on yet' : `v${r.version}`),
    el('td', {}, r.created_at ? formatTime(r.created_at) : '—'),
    el('td', {}, labelsText(r.new_labels)),
    el('td', {}, r.reward_labels ?? '—'),
    el('td', {}, pct(r.heldout_accuracy)),
    el('td', { 'data-testid': 'learned-win-rate' }, pct(r.win_rate_vs_base)),
    el('td', {}, r.status ?? '—')));
  return el('table', { class: 'table', 'data-testid': 'learned-rounds' },
    el('caption', { class: 'visually-hidden' }, 'Your ratings and what each training round measured'),
    el('thead', {}, el('tr', {}, ['Round', 'Trained', 'New ratings', 'Labels fitted', 'Held-out agreement', 'Gate win rate vs base', 'Verdict']
      .map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows));
}

/** The card (or a note if it could not load). */
export function learnedCard(learned, loadError) {
  const body = loadError ? [el('p', { class: 'note error' }, `Could not load: ${loadError}`)] : (() => {
    const trained = learned.rounds.filter((r) => r.version !== null);
    return [
      el('p', {}, 'You have given ', el('strong', { 'data-testid': 'learned-totals' }, labelsText(learned.totals)), '.'),
      traitsList(learned),
      roundsTable(learned.rounds),
      trained.length ? el('div', { class: 'chart-grid' }, lineChart({
        title: 'Your reward over versions (each under its own round’s reward model)',
        labels: trained.map((r) => `v${r.version}`),
        series: [{ name: 'your adapter', values: trained.map((r) => r.reward) },
          { name: 'base model', values: trained.map((r) => r.base_reward) }],
      })) : null,
    ];
  })();
  return el('section', { class: 'card', 'aria-labelledby': 'me-learned', 'data-testid': 'learned-panel' },
    el('h2', { id: 'me-learned' }, 'What the assistant learned'), ...body);
}
