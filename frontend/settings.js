// Settings: custom instructions (the system prompt of the user's new conversations), reply
// defaults (temperature, length) used when a message does not say, and the theme. All stored
// server-side (GET/PUT api/me/preferences), so they apply to the WebSocket and /v1 alike.
// Also the user's API keys (api/me/api-keys): create (the key is shown once), copy, revoke.

import { api, el, $, confirmDialog, formatTime } from './util.js';
import { applyTheme } from './theme.js';

// Bumped by every choice made here, so a server answer that arrives after one never undoes it.
let themeChoices = 0;

/** After sign-in: the server's saved theme wins over this browser's (it follows the user),
 *  unless the user picks one while the answer is on its way. */
export async function syncThemeFromServer() {
  const before = themeChoices;
  try {
    const prefs = await api('api/me/preferences', { quiet: true });
    if (prefs && prefs.theme && themeChoices === before) applyTheme(prefs.theme);
  } catch {
    // The local choice stays.
  }
}

/** Apply at once, then store (a failed save keeps the local choice; it is only a look). */
export async function saveTheme(theme) {
  themeChoices += 1;
  applyTheme(theme);
  try {
    await api('api/me/preferences', { method: 'PUT', json: { theme }, quiet: true });
  } catch {
    // Signed out or offline: the choice is still kept in this browser.
  }
}

function note(text, kind = 'ok') {
  return el('p', { class: `note ${kind}`, role: 'status', 'data-testid': 'settings-status' }, text);
}

export async function showSettings() {
  const root = $('#settings-content');
  root.replaceChildren(el('p', { class: 'muted' }, 'Loading…'));
  let prefs;
  try {
    prefs = await api('api/me/preferences');
  } catch (err) {
    root.replaceChildren(note(`Could not load your settings: ${err.detail}`, 'error'));
    return;
  }
  const status = el('div', { 'aria-live': 'polite' });
  const count = el('small', { class: 'muted', id: 'instructions-count' });
  const instructions = el('textarea', {
    id: 'settings-instructions', 'data-testid': 'settings-instructions', rows: 6, maxlength: prefs.max_instructions_chars,
    'aria-describedby': 'instructions-hint instructions-count', value: prefs.instructions,
    placeholder: 'For example: I am a nurse. Answer briefly, in plain words, and say when something needs a doctor.',
    oninput: () => { count.textContent = `${instructions.value.length} / ${prefs.max_instructions_chars}`; },
  });
  count.textContent = `${prefs.instructions.length} / ${prefs.max_instructions_chars}`;
  const temperature = el('input', {
    id: 'settings-temperature', 'data-testid': 'settings-temperature', type: 'number', min: 0, max: 2, step: 0.1,
    value: prefs.temperature ?? '', placeholder: 'server default', 'aria-describedby': 'temperature-hint',
  });
  const length = el('input', {
    id: 'settings-max-tokens', 'data-testid': 'settings-max-tokens', type: 'number', min: 1, max: prefs.max_new_tokens_limit,
    step: 1, value: prefs.max_new_tokens ?? '', placeholder: 'server default', 'aria-describedby': 'length-hint',
  });
  const theme = el('select', { id: 'settings-theme', 'data-testid': 'settings-theme', 'data-theme-select': '' },
    ['system', 'light', 'dark'].map((t) => el('option', { value: t, selected: prefs.theme === t }, t[0].toUpperCase() + t.slice(1))));
  theme.addEventListener('change', () => saveTheme(theme.value));
  const save = el('button', { type: 'submit', class: 'button-primary', 'data-testid': 'settings-save' }, 'Save settings');

  const form = el('form', { class: 'card settings-form', novalidate: true, 'aria-labelledby': 'settings-instructions-title' },
    el('h2', { id: 'settings-instructions-title' }, 'Custom instructions'),
    el('label', { for: 'settings-instructions' }, 'What should the assistant know about you, and how should it answer?'),
    instructions,
    el('small', { class: 'muted', id: 'instructions-hint' }, 'Sent as the system prompt of each new conversation; a conversation keeps the instructions it started with. '),
    count,
    el('h2', {}, 'Replies'),
    el('label', { for: 'settings-temperature' }, 'Temperature (0 = always the likeliest words, 2 = most varied)'),
    temperature,
    el('small', { class: 'muted', id: 'temperature-hint' }, 'Leave empty for the server default.'),
    el('label', { for: 'settings-max-tokens' }, 'Longest reply, in tokens'),
    length,
    el('small', { class: 'muted', id: 'length-hint' }, `1–${prefs.max_new_tokens_limit}; leave empty for the server default.`),
    el('h2', {}, 'Appearance'),
    el('label', { for: 'settings-theme' }, 'Theme'),
    theme,
    el('div', { class: 'row' }, save),
    status);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const t = temperature.value.trim() === '' ? null : Number(temperature.value);
    const n = length.value.trim() === '' ? null : Number(length.value);
    if (t !== null && !(t >= 0 && t <= 2)) {
      status.replaceChildren(note('Temperature must be between 0 and 2.', 'error'));
      temperature.focus();
      return;
    }
    if (n !== null && !(Number.isInteger(n) && n >= 1 && n <= prefs.max_new_tokens_limit)) {
      status.replaceChildren(note(`Reply length must be a whole number from 1 to ${prefs.max_new_tokens_limit}.`, 'error'));
      length.focus();
      return;
    }
    save.disabled = true;
    try {
      prefs = { ...prefs, ...(await api('api/me/preferences', { method: 'PUT', json: { instructions: instructions.value, temperature: t, max_new_tokens: n, theme: theme.value } })) };
      status.replaceChildren(note('Saved. New conversations use these instructions.'));
    } catch (err) {
      status.replaceChildren(note(`Not saved: ${err.detail}`, 'error'));
    } finally {
      save.disabled = false;
    }
  });
  root.replaceChildren(form, await apiKeysCard());
}

async function apiKeysCard() {
  const card = el('section', { class: 'card', 'aria-labelledby': 'api-keys-title', 'data-testid': 'api-keys' });
  const status = el('div', { 'aria-live': 'polite' });
  const name = el('input', { id: 'api-key-name', 'data-testid': 'api-key-name', maxlength: 100, placeholder: 'e.g. laptop script' });
  const create = el('button', { type: 'submit', class: 'button-primary', 'data-testid': 'api-key-create' }, 'Create key');
  const list = el('div');

  async function refresh() {
    let keys;
    try {
      keys = await api('api/me/api-keys');
    } catch (err) {
      list.replaceChildren(note(`Could not load your keys: ${err.detail}`, 'error'));
      return;
    }
    if (!keys.length) {
      list.replaceChildren(el('p', { class: 'muted' }, 'No API keys yet.'));
      return;
    }
    list.replaceChildren(el('table', { class: 'table' },
      el('thead', {}, el('tr', {}, ['Name', 'Key', 'Created', 'Last used', ''].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, keys.map((k) => el('tr', { 'data-testid': 'api-key-row' },
        el('td', {}, k.name), el('td', {}, el('code', {}, `${k.prefix}…`)), el('td', {}, formatTime(k.created_at)),
        el('td', {}, k.last_used_at ? formatTime(k.last_used_at) : 'never'),
        el('td', {}, el('button', {
          type: 'button', class: 'button-danger small', 'data-testid': 'api-key-revoke', 'aria-label': `Revoke key ${k.name}`,
          onclick: async () => {
            if (!(await confirmDialog(`Revoke the key “${k.name}”? Programs using it stop working at once.`, 'Revoke'))) return;
            try {
              await api(`api/me/api-keys/${k.id}`, { method: 'DELETE' });
              status.replaceChildren(note(`Key “${k.name}” revoked.`));
            } catch (err) {
              status.replaceChildren(note(`Not revoked: ${err.detail}`, 'error'));
            }
            refresh();
          },
        }, 'Revoke')))))));
  }

  const form = el('form', { class: 'row wrap', novalidate: true },
    el('label', { for: 'api-key-name', class: 'visually-hidden' }, 'Name of the new key'), name, create);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!name.value.trim()) { status.replaceChildren(note('Give the key a name.', 'error')); name.focus(); return; }
    create.disabled = true;
    try {
      const made = await api('api/me/api-keys', { method: 'POST', json: { name: name.value.trim() } });
      const copy = el('button', { type: 'button', class: 'small', 'data-testid': 'api-key-copy' }, 'Copy');
      copy.addEventListener('click', async () => {
        try { await navigator.clipboard.writeText(made.key); copy.textContent = 'Copied'; } catch { copy.textContent = 'Copy failed'; }
      });
      status.replaceChildren(el('div', { class: 'note ok', role: 'status' },
        el('p', {}, 'Your new key. Copy it now: it is not shown again.'),
        el('code', { 'data-testid': 'api-key-value' }, made.key), ' ', copy));
      name.value = '';
      refresh();
    } catch (err) {
      status.replaceChildren(note(`Not created: ${err.detail}`, 'error'));
    } finally {
      create.disabled = false;
    }
  });
  await refresh();
  card.append(el('h2', { id: 'api-keys-title' }, 'API keys'),
    el('p', { class: 'muted' }, 'For the OpenAI-compatible API (/v1) and scripts: send a key as “Authorization: Bearer <key>”. It acts as you, with your personalization.'),
    form, status, list);
  return card;
}
