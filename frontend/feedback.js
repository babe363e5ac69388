// The inline rating under each reply: thumbs up/down, reason chips from the server's
// vocabulary, an optional comment, submit. A saved rating shows and can be changed.

import { api, el } from './util.js';
import { icon } from './vendor/feather/icons.js';

// Used only if GET /api/feedback/reasons fails, so rating still works.
const FALLBACK_REASONS = {
  positive: ['helpful', 'accurate', 'concise', 'detailed', 'well_formatted', 'friendly', 'creative'],
  negative: ['harmful', 'offensive', 'inaccurate', 'unhelpful', 'too_long', 'too_short', 'refused', 'off_topic', 'rude'],
  harm: ['harmful', 'offensive', 'rude'],
};

let vocabulary = FALLBACK_REASONS;

export async function loadReasons() {
  try {
    const v = await api('api/feedback/reasons', { quiet: true });
    if (v && Array.isArray(v.positive) && Array.isArray(v.negative)) {
      vocabulary = { positive: v.positive, negative: v.negative, harm: Array.isArray(v.harm) ? v.harm : [] };
    }
  } catch {
    vocabulary = FALLBACK_REASONS;
  }
  return vocabulary;
}

const humanize = (name) => name.replace(/_/g, ' ');

// message id → draft {rating, reasons:Set, comment, open, status, error}; survives re-renders.
const drafts = new Map();

export function forgetDrafts() {
  drafts.clear();
}

function draftFor(msg) {
  let d = drafts.get(msg.id);
  if (!d) {
    const f = msg.feedback;
    d = {
      rating: f ? f.rating : null,
      reasons: new Set(f ? f.reasons : []),
      comment: (f && f.comment) || '',
      open: false,
      status: f ? 'saved' : 'idle',
      error: '',
    };
    drafts.set(msg.id, d);
  }
  return d;
}

/** Record feedback saved elsewhere (the compare picker's thumbs) so the widget shows it. */
export function noteSavedFeedback(msg, feedback) {
  msg.feedback = feedback;
  drafts.delete(msg.id);
}

export async function submitFeedback(messageId, { rating, reasons, comment }) {
  return api(`api/messages/${messageId}/feedback`, {
    method: 'POST',
    json: { rating, reasons, comment: comment && comment.trim() ? comment.trim() : null },
  });
}

/** The rating box for one finished assistant message (`msg` is mutated on save; `onSaved` then runs). */
export function ratingWidget(msg, { onSaved = null } = {}) {
  const box = el('div', { class: 'rating', role: 'group', 'aria-label': 'Rate this reply' });
  const d = draftFor(msg);

  function choose(rating) {
    if (d.rating !== rating) {
      d.rating = rating;
      // Reasons of the other polarity rarely still apply; harm reasons never go with 👍.
      const keep = rating === 'up' ? vocabulary.positive : vocabulary.negative;
      d.reasons = new Set([...d.reasons].filter((r) => keep.includes(r)));
    }
    d.open = true;
    d.status = 'editing';
    draw('rate-' + rating);
  }

  async function submit() {
    if (!d.rating) return;
    d.status = 'saving';
    d.error = '';
    draw('feedback-submit');
    try {
      const saved = await submitFeedback(msg.id, { rating: d.rating, reasons: [...d.reasons], comment: d.comment });
      msg.feedback = { rating: saved.rating, reasons: saved.reasons, comment: saved.comment };
      d.status = 'saved';
      d.open = false;
      draw(`rate-${d.rating}`);
      if (onSaved) onSaved(msg.feedback);
    } catch (err) {
      d.status = 'error';
      d.error = err.detail || String(err);
      draw('feedback-submit');
    }
  }

  function chip(name) {
    const on = d.reasons.has(name);
    return el('button', {
      type: 'button',
      class: `chip${vocabulary.harm.includes(name) ? ' harm' : ''}`,
      'data-testid': `reason-${name}`,
      'aria-pressed': on ? 'true' : 'false',
      onclick: () => {
        if (d.reasons.has(name)) d.reasons.delete(name); else d.reasons.add(name);
        draw(`reason-${name}`);
      },
    }, humanize(name));
  }

  function panel() {
    // Both groups are offered (a bad reply can still be concise); the matching one first.
    const groups = d.rating === 'up'
      ? [['What was good?', vocabulary.positive], ['Anything wrong?', vocabulary.negative]]
      : [['What went wrong?', vocabulary.negative], ['Anything good?', vocabulary.positive]];
    const commentId = `comment-${msg.id}`;
    return el('div', { class: 'rating-panel' },
      groups.map(([title, names]) => el('div', { class: 'chip-group', role: 'group', 'aria-label': title },
        el('span', { class: 'chip-group-title' }, title), names.map(chip))),
      el('label', { for: commentId, class: 'visually-hidden' }, 'Comment (optional)'),
      el('textarea', {
        id: commentId, class: 'rating-comment', rows: 2, maxlength: 2000, placeholder: 'Comment (optional)',
        'aria-label': 'Comment (optional)', value: d.comment,
        oninput: (e) => { d.comment = e.target.value; },
      }),
      el('div', { class: 'row' },
        el('button', {
          type: 'button', class: 'button-primary small', 'data-testid': 'feedback-submit',
          disabled: d.status === 'saving', onclick: submit,
        }, d.status === 'saving' ? 'Saving…' : 'Submit feedback'),
        el('button', {
          type: 'button', class: 'button-quiet small',
          onclick: () => { d.open = false; draw(`rate-${d.rating}`); },
        }, 'Close')));
  }

  function statusText() {
    if (d.status === 'error') return `Not saved: ${d.error}`;
    if (d.status === 'saved' && msg.feedback) {
      const f = msg.feedback;
      const reasons = f.reasons && f.reasons.length ? ` · ${f.reasons.map(humanize).join(', ')}` : '';
      return `Saved${reasons}`;
    }
    return '';
  }

  function draw(focusKey) {
    const saved = msg.feedback ? msg.feedback.rating : null;
    const shown = d.rating || saved;
    box.replaceChildren(...[
      el('div', { class: 'rating-row' },
        el('button', {
          type: 'button', class: 'thumb', 'data-testid': 'rate-up', 'aria-label': 'Good reply',
          'aria-pressed': shown === 'up' ? 'true' : 'false', title: 'Good reply', onclick: () => choose('up'),
        }, icon('thumbs-up')),
        el('button', {
          type: 'button', class: 'thumb', 'data-testid': 'rate-down', 'aria-label': 'Bad reply',
          'aria-pressed': shown === 'down' ? 'true' : 'false', title: 'Bad reply', onclick: () => choose('down'),
        }, icon('thumbs-down')),
        el('span', { class: `rating-status${d.status === 'error' ? ' error' : ''}`, 'aria-live': 'polite' }, statusText())),
      d.open ? panel() : null].filter(Boolean));
    box.dataset.state = d.status;
    if (focusKey && box.isConnected) {
      const target = box.querySelector(`[data-testid="${focusKey}"]`);
      if (target) target.focus();
    }
  }

  draw(null);
  return box;
}
