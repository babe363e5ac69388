// The chat screen: conversation list (with search), the thread (with sibling alternatives,
// edited messages and compare mode), the composer, and the WebSocket that streams replies.
//
// The thread is a tree: a user message's parent is the assistant reply it answers (none, or the
// conversation's system message, for a first turn); the replies to one user message are
// siblings (alternative_group = the user message id), and so are a user message and its edits
// (same parent). We show one path through it, remembering which sibling the user paged to.

import { api, ApiError, el, $, showBanner, clearBanner, confirmDialog, formatTime } from './util.js';
import { setMarkdown, modelLabel } from './render.js';
import { icon } from './vendor/feather/icons.js';
import { ratingWidget, submitFeedback, noteSavedFeedback, forgetDrafts } from './feedback.js';

const S = {
  conversations: [],
  convId: null,
  messages: [], // creation order, as GET /api/conversations/{id} returns them
  selected: new Map(), // alternative group (user message id) → shown assistant message id
  selectedUser: new Map(), // parent key (assistant id | 'root') → shown user message id (edits are siblings)
  editing: null, // id of the user message being edited
  another: new Map(), // group → {disliked, fresh, picked}: "show me another" after a thumbs-down
  search: '', // the sidebar's search text
  compare: new Map(), // group → {ids, order: [idA, idB] | null, picked: null | 'a' | 'b' | 'tie' | 'both_bad'}
  streaming: new Map(), // message id → conversation id, for replies this socket is receiving
  pendingSend: null, // {tempId, content, conversationId, alternatives, started, compare}
  needsReload: false, // the socket dropped mid-reply: reload the stored conversation on reconnect
  pollTimer: null,
  loadSeq: 0,
};
let tempSeq = 0;
let emptyThread = null; // the hint shown in an empty thread, kept while replaced
let socket = null;

// --- the socket ----------------------------------------------------------------------

/** One WebSocket to /api/chat (cookie auth), reconnecting with backoff until closed on purpose. */
class ChatSocket {
  constructor(onFrame, onReady, onDrop) {
    this.onFrame = onFrame;
    this.onReady = onReady;
    this.onDrop = onDrop;
    this.ws = null;
    this.ready = false;
    this.closed = false;
    this.attempt = 0;
    this.timer = null;
  }

  url() {
    const u = new URL('api/chat', document.baseURI);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    u.hash = '';
    return u.href;
  }

  connect() {
    if (this.closed) return;
    clearTimeout(this.timer);
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.addEventListener('message', (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (frame.type === 'ready') {
        this.ready = true;
        this.attempt = 0;
        this.onReady(frame);
      } else {
        this.onFrame(frame);
      }
    });
    ws.addEventListener('close', (event) => {
      if (this.ws !== ws) return;
      const wasReady = this.ready;
      this.ready = false;
      if (this.closed) return;
      this.onDrop(event, wasReady);
      this.schedule();
    });
  }

  schedule() {
    clearTimeout(this.timer);
    const delay = Math.min(8000, 500 * 2 ** this.attempt);
    this.attempt += 1;
    this.timer = setTimeout(() => this.reconnect(), delay);
  }

  /** Before reconnecting, make sure we are still signed in (else stop and show sign-in). */
  async reconnect() {
    if (this.closed) return;
    try {
      await api('api/me', { quiet: true });
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return; // "auth-lost" takes over
      this.schedule();
      return;
    }
    this.connect();
  }

  now() {
    // Called when the browser comes back online: skip the remaining backoff.
    if (!this.closed && !this.ready) {
      this.attempt = 0;
      this.reconnect();
    }
  }

  send(frame) {
    if (!this.ready || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'signed out');
  }
}

function onReady() {
  clearBanner('socket');
  updateComposer();
  if (S.needsReload) {
    S.needsReload = false;
    recoverAfterDrop();
  }
}

function onDrop(event, wasReady) {
  // Replies in flight are lost to this socket; the server keeps (or finishes) them, and
  // we reload the stored conversation once reconnected instead of guessing.
  if (S.streaming.size || S.pendingSend) S.needsReload = true;
  S.streaming.clear();
  const msg = wasReady ? 'Connection to the server lost. Reconnecting…' : 'Cannot connect to the chat server. Retrying…';
  showBanner(navigator.onLine ? msg : 'You are offline. The chat reconnects when the network is back.', { kind: 'warn', key: 'socket' });
  updateComposer();
  renderThread();
}

async function recoverAfterDrop() {
  const pending = S.pendingSend;
  S.pendingSend = null;
  if (S.convId !== null) {
    await loadConversation(S.convId, { keepView: true });
    if (pending && pending.started === 0 && !S.messages.some((m) => m.role === 'user' && m.content === pending.content)) {
      restoreComposer(pending.content, 'Your last message was not sent (the connection dropped). Send it again.');
    }
  } else if (pending && pending.started === 0) {
    restoreComposer(pending.content, 'Your last message was not sent (the connection dropped). Send it again.');
    S.messages = S.messages.filter((m) => m.id !== pending.tempId);
    renderThread();
  }
  loadConversations();
}

function restoreComposer(content, message) {
  const input = $('#composer-input');
  if (!input.value.trim()) input.value = content;
  showBanner(message, { kind: 'warn', key: 'send' });
}

// --- frames from the server -------------------------------------------------------------

const FRAME_ERRORS = {
  too_many: 'Too many replies at once. Wait for the current ones to finish, then try again.',
  busy: 'The server is busy. Try again in a moment.',
  too_large: 'That message is too long.',
  not_found: 'That conversation or message no longer exists.',
  bad_frame: 'The server rejected the request.',
};

function onFrame(frame) {
  switch (frame.type) {
    case 'start': return onStart(frame);
    case 'token': return onToken(frame);
    case 'end': return onEnd(frame);
    case 'error': return onError(frame);
    default: return undefined;
  }
}

function onStart(f) {
  S.streaming.set(f.message_id, f.conversation_id);
  const p = S.pendingSend;
  if (p && (p.conversationId === null || p.conversationId === f.conversation_id)) {
    const temp = S.messages.find((m) => m.id === p.tempId);
    if (temp) temp.id = f.user_message_id;
    p.tempId = f.user_message_id;
    if (p.compare && !S.compare.has(f.user_message_id)) {
      S.compare.set(f.user_message_id, { ids: [], order: null, picked: null });
    }
    if (p.conversationId === null && S.convId === null) {
      S.convId = f.conversation_id;
      p.conversationId = f.conversation_id;
      history.replaceState(null, '', `#/chat/${f.conversation_id}`);
      loadConversations();
    }
    p.started += 1;
    if (p.started >= p.alternatives) S.pendingSend = null;
  }
  if (f.conversation_id !== S.convId) return;
  S.messages.push({
    id: f.message_id, role: 'assistant', content: '', parent_id: f.user_message_id,
    adapter_version: f.adapter_version ?? null, feedback: null, alternative_group: f.user_message_id,
    alternative_index: f.alternative ?? 0, finish_reason: null, created_at: null, live: true,
  });
  const ask = S.another.get(f.user_message_id);
  if (ask && ask.fresh === null && f.message_id !== ask.disliked) ask.fresh = f.message_id;
  const cmp = S.compare.get(f.user_message_id);
  if (cmp && !cmp.picked && cmp.ids.length < 2) {
    cmp.ids.push(f.message_id);
    if (cmp.ids.length === 2) cmp.order = Math.random() < 0.5 ? [...cmp.ids] : [cmp.ids[1], cmp.ids[0]];
  } else {
    if (cmp) S.compare.delete(f.user_message_id); // a regenerate turns a compared pair into siblings
    S.selected.set(f.user_message_id, f.message_id);
  }
  renderThread();
  updateComposer();
}

const drawQueued = new Set();

function onToken(f) {
  const msg = S.messages.find((m) => m.id === f.message_id);
  if (!msg) return;
  msg.content += f.text;
  // Re-render Markdown at most once per frame per message.
  if (!drawQueued.has(msg.id)) {
    drawQueued.add(msg.id);
    requestAnimationFrame(() => {
      drawQueued.delete(msg.id);
      const body = document.querySelector(`[data-message-id="${msg.id}"] .msg-body`);
      if (body) {
        const stick = nearBottom();
        setMarkdown(body, msg.content);
        if (stick) scrollToBottom();
      }
    });
  }
}

function onEnd(f) {
  const conv = S.streaming.get(f.message_id);
  S.streaming.delete(f.message_id);
  const msg = S.messages.find((m) => m.id === f.message_id);
  if (msg && msg.live) {
    msg.finish_reason = f.finish_reason;
    if ('adapter_version' in f) msg.adapter_version = f.adapter_version;
    if (f.best_of) msg.best_of = f.best_of;
    renderThread();
  } else if (conv === S.convId && ![...S.streaming.values()].includes(conv)) {
    // A reply of this conversation we did not stream here (we navigated away and back
    // while it was written): show the stored one.
    loadConversation(conv, { keepView: true });
  }
  updateComposer();
  if (S.streaming.size === 0) loadConversations();
}

function onError(f) {
  if (f.code === 'unauthorized') {
    window.dispatchEvent(new CustomEvent('auth-lost'));
    return;
  }
  const p = S.pendingSend;
  if (p && p.started === 0) {
    // The turn was refused before anything was stored: undo the optimistic message.
    S.pendingSend = null;
    S.messages = S.messages.filter((m) => m.id !== p.tempId);
    const input = $('#composer-input');
    if (!input.value.trim()) input.value = p.content;
    renderThread();
  }
  const base = FRAME_ERRORS[f.code] || 'Something went wrong.';
  showBanner(f.detail ? `${base} (${f.detail})` : base, { key: 'frame' });
  updateComposer();
}

// --- the thread ----------------------------------------------------------------------------

/** The path of messages to show: [{user}, {group, siblings, shown}] pairs from the root. */
function computePath() {
  const byId = new Map(S.messages.map((m) => [m.id, m]));
  const groups = new Map(); // user message id → assistant siblings
  const children = new Map(); // assistant id | 'root' → user messages
  let lastAssistant = null;
  let lastUser = null;
  for (const m of S.messages) {
    if (m.role === 'assistant') {
      const g = m.alternative_group ?? m.parent_id ?? (lastUser && lastUser.id);
      if (g === null || g === undefined) continue;
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(m);
      lastAssistant = m;
    } else if (m.role === 'user') {
      const parent = byId.get(m.parent_id);
      // No parent or the system message: a first turn (or an edit of one). A parent that is not
      // loaded: attach to the reply before it.
      const root = m.parent_id === null || m.parent_id === undefined || (parent && parent.role === 'system');
      const key = parent && parent.role === 'assistant' ? parent.id : (root || !lastAssistant ? 'root' : lastAssistant.id);
      if (!children.has(key)) children.set(key, []);
      children.get(key).push(m);
      lastUser = m;
    }
  }
  for (const sibs of groups.values()) sibs.sort((a, b) => a.alternative_index - b.alternative_index);

  const path = [];
  let key = 'root';
  for (;;) {
    const users = children.get(key);
    if (!users || !users.length) break;
    const user = users.find((u) => u.id === S.selectedUser.get(key)) || users[users.length - 1];
    path.push({ user, users, key });
    const sibs = groups.get(user.id) || [];
    if (!sibs.length) break;
    let shown = sibs.find((s) => s.id === S.selected.get(user.id));
    if (!shown) shown = [...sibs].reverse().find((s) => children.has(s.id)) || sibs[sibs.length - 1];
    path.push({ group: user.id, sibs, shown });
    key = shown.id;
  }
  return path;
}

function lastShownAssistantId() {
  const path = computePath();
  for (let i = path.length - 1; i >= 0; i -= 1) {
    const step = path[i];
    if (step.shown) {
      const cmp = S.compare.get(step.group);
      if (cmp && cmp.order) {
        return cmp.picked === 'b' ? cmp.order[1] : cmp.order[0];
      }
      return typeof step.shown.id === 'number' ? step.shown.id : null;
    }
  }
  return null;
}

const nearBottom = () => {
  const t = $('#thread');
  return t.scrollHeight - t.scrollTop - t.clientHeight < 120;
};
const scrollToBottom = () => { const t = $('#thread'); t.scrollTop = t.scrollHeight; };

const FINISH_NOTES = { length: 'cut off at the length limit', cancelled: 'stopped', error: 'generation failed' };

function assistantNode(msg, { pager = null, blind = false, rating = true, regenerate = true } = {}) {
  const streaming = S.streaming.has(msg.id);
  const body = el('div', { class: `msg-body markdown${streaming ? ' streaming' : ''}` });
  setMarkdown(body, msg.content);
  if (!msg.content && !streaming && msg.finish_reason === null) {
    body.append(el('p', { class: 'muted' }, 'Still being written… it will appear here when stored.'));
  }
  const finished = !streaming && msg.finish_reason !== null && typeof msg.id === 'number';
  const note = FINISH_NOTES[msg.finish_reason];
  const slot = fillAnother(el('span', { class: 'another-slot' }), msg, regenerate && finished);
  return el('article', {
    class: 'msg assistant', 'data-testid': 'message-assistant', 'data-message-id': msg.id,
    'data-finish-reason': msg.finish_reason ?? '', 'aria-busy': streaming ? 'true' : 'false',
  },
  body,
  el('div', { class: 'msg-meta' },
    pager,
    blind ? null : el('span', {
      class: 'model-label',
      title: `Answered by ${msg.adapter_version ?? 'the base model'}` +
        (msg.best_of ? `, chosen from ${msg.best_of.n} drafts by what you prefer` : ''),
    }, modelLabel(msg.adapter_version)),
    note ? el('span', { class: `finish-note ${msg.finish_reason}` }, note) : null,
    regenerate && finished ? el('button', {
      type: 'button', class: 'button-quiet small', 'aria-label': 'Regenerate this reply (adds an alternative)',
      title: 'Regenerate', onclick: () => regenerateReply(msg.id),
    }, icon('rotate-cw'), ' Regenerate') : null,
    finished && msg.content ? copyButton(msg) : null,
    slot),
  anotherBar(msg, finished),
  rating && finished ? ratingWidget(msg, { onSaved: () => fillAnother(slot, msg, regenerate) }) : null);
}

/** Copy the whole reply (its Markdown source) to the clipboard. */
function copyButton(msg) {
  const button = el('button', { type: 'button', class: 'button-quiet small', 'data-testid': 'copy-reply', 'aria-label': 'Copy the whole reply', title: 'Copy reply' }, 'Copy');
  button.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(msg.content);
      button.textContent = 'Copied';
    } catch {
      button.textContent = 'Copy failed';
    }
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  });
  return button;
}

/** After a thumbs-down: offer another reply, which becomes a ranked pair once the user picks. */
function fillAnother(slot, msg, allowed) {
  const group = msg.alternative_group;
  const asked = [...S.another.values()].some((a) => a.disliked === msg.id);
  const show = allowed && group !== null && group !== undefined && msg.feedback && msg.feedback.rating === 'down' && !asked;
  slot.replaceChildren(show ? el('button', {
    type: 'button', class: 'small', 'data-testid': 'show-another', title: 'Write another reply to compare with this one',
    onclick: () => {
      S.another.set(group, { disliked: msg.id, fresh: null, picked: null });
      regenerateReply(msg.id);
    },
  }, 'Show me another') : '');
  return slot;
}

function anotherBar(msg, finished) {
  const ask = S.another.get(msg.alternative_group);
  if (!ask || ask.fresh !== msg.id || !finished) return null;
  if (ask.picked) {
    return el('div', { class: 'another-bar', 'data-testid': 'another-bar', role: 'status' },
      ask.picked === 'new' ? 'Saved: this reply is better than the one you disliked.' : 'Saved: the first reply was better.');
  }
  return el('div', { class: 'another-bar', 'data-testid': 'another-bar', role: 'group', 'aria-label': 'Compare with the reply you disliked' },
    el('span', {}, 'Better than the reply you disliked?'),
    el('button', { type: 'button', class: 'small', 'data-testid': 'another-pick-new', onclick: () => pickAnother(msg.alternative_group, 'new') }, 'Yes, this one'),
    el('button', { type: 'button', class: 'small', 'data-testid': 'another-pick-old', onclick: () => pickAnother(msg.alternative_group, 'old') }, 'No, the first one'));
}

async function pickAnother(group, better) {
  const ask = S.another.get(group);
  if (!ask || !ask.fresh) return;
  const ranked = better === 'new' ? [ask.fresh, ask.disliked] : [ask.disliked, ask.fresh];
  try {
    await api('api/rankings', { method: 'POST', json: { message_ids: ranked } });
    ask.picked = better;
    S.selected.set(group, ranked[0]);
  } catch (err) {
    showBanner(`Could not save your choice: ${err.detail || err}`, { key: 'pick' });
  }
  renderThread();
}

/** `< 2/3 >` over sibling messages: `select(id)` remembers the choice; `words` name the items. */
function pager({ items, shown, id, select, words, testid = null }) {
  if (items.length < 2) return null;
  const i = items.indexOf(shown);
  const go = (delta) => {
    const next = items[i + delta];
    if (!next) return;
    select(next.id);
    renderThread();
    const btn = document.querySelector(`[data-pager="${id}"][data-dir="${delta}"]`);
    if (btn && !btn.disabled) btn.focus();
  };
  const button = (delta, label, glyph) => el('button', {
    type: 'button', class: 'icon-button small', 'aria-label': label, 'data-pager': id, 'data-dir': delta,
    disabled: !items[i + delta], onclick: () => go(delta),
  }, icon(glyph));
  return el('span', { class: 'pager', role: 'group', 'aria-label': words.group, 'data-testid': testid },
    button(-1, `Previous ${words.item}`, 'chevron-left'),
    el('span', { 'aria-live': 'polite' }, `${i + 1}/${items.length}`),
    button(1, `Next ${words.item}`, 'chevron-right'));
}

function pagerNode(group, sibs, shown) {
  return pager({ items: sibs, shown, id: group, select: (id) => S.selected.set(group, id),
    words: { group: 'Alternative replies', item: 'alternative' } });
}

const PICKS = [
  ['a', 'pick-a', 'A is better', '1'],
  ['b', 'pick-b', 'B is better', '2'],
  ['tie', 'pick-tie', 'Tie', 't'],
  ['both_bad', 'pick-both-bad', 'Both bad', 'b'],
];
const PICK_KEYS = Object.fromEntries(PICKS.map(([choice, , , key]) => [key, choice]));

/** The newest compared pair on screen whose replies are both finished (the keyboard's target). */
function keyboardCompareGroup() {
  const path = computePath();
  for (let i = path.length - 1; i >= 0; i -= 1) {
    const cmp = path[i].group !== undefined ? S.compare.get(path[i].group) : null;
    if (cmp && cmp.order && !cmp.ids.some((id) => S.streaming.has(id))
        && document.querySelector('.compare [data-testid="pick-a"]:not([disabled])')) return path[i].group;
  }
  return null;
}

function onCompareKey(e) {
  if (document.body.dataset.view !== 'chat' || e.ctrlKey || e.metaKey || e.altKey || document.querySelector('dialog[open]')) return;
  if (e.target instanceof Element && e.target.closest('input, textarea, select, [contenteditable]')) return;
  const choice = PICK_KEYS[e.key.toLowerCase()];
  if (!choice) return;
  const group = keyboardCompareGroup();
  if (group === null) return;
  e.preventDefault();
  pick(group, choice);
}

function compareNode(group, cmp) {
  const byId = new Map(S.messages.map((m) => [m.id, m]));
  const ids = cmp.order || cmp.ids;
  const busy = ids.length < 2 || ids.some((id) => S.streaming.has(id));
  const cols = ['A', 'B'].map((side, i) => {
    const msg = byId.get(ids[i]);
    // Blind until picked: the model label could bias the choice.
    return el('div', { class: `compare-col${cmp.picked === side.toLowerCase() ? ' preferred' : ''}` },
      el('div', { class: 'compare-head' }, `Reply ${side}`),
      msg ? assistantNode(msg, { blind: !cmp.picked, rating: Boolean(cmp.picked), regenerate: false })
        : el('div', { class: 'msg assistant placeholder muted' }, 'Waiting…'));
  });
  return el('div', { class: 'compare', role: 'group', 'aria-label': 'Two replies to compare' },
    el('div', { class: 'compare-cols' }, cols),
    el('div', { class: 'compare-picks', role: 'group', 'aria-label': 'Which reply is better?' },
      el('span', { class: 'muted' }, cmp.picked ? 'Your choice (you can change it):' : 'Which reply is better?'),
      PICKS.map(([choice, testid, label, key]) => el('button', {
        type: 'button', 'data-testid': testid, class: 'small', disabled: busy, 'aria-keyshortcuts': key,
        'aria-pressed': cmp.picked === choice ? 'true' : 'false', onclick: () => pick(group, choice),
      }, label)),
      el('span', { class: 'kbd-hint', 'aria-hidden': 'true' }, 'keys 1 · 2 · t · b')));
}

function userPager({ users, user, key }) {
  return pager({ items: users, shown: user, id: `u${key}`, select: (id) => S.selectedUser.set(key, id),
    words: { group: 'Versions of this message', item: 'version' }, testid: 'user-pager' });
}

function userNode(step) {
  const m = step.user;
  const attrs = { class: 'msg user', 'data-testid': 'message-user', 'data-message-id': m.id };
  if (S.editing === m.id) {
    const input = el('textarea', { class: 'edit-input', 'data-testid': 'edit-input', rows: 3, maxlength: 8000, 'aria-label': 'Edit your message', value: m.content });
    const cancel = () => { S.editing = null; renderThread(); };
    const send = () => { if (sendTurn(input.value, { editOf: m })) S.editing = null; renderThread(); };
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
      if (e.key === 'Escape') { e.preventDefault(); cancel(); }
    });
    const node = el('div', { class: 'user-turn', 'data-testid': 'user-turn' }, el('article', attrs, el('div', { class: 'edit-box' }, input,
      el('div', { class: 'row end' },
        el('button', { type: 'button', class: 'button-quiet small', 'data-testid': 'edit-cancel', onclick: cancel }, 'Cancel'),
        el('button', { type: 'button', class: 'button-primary small', 'data-testid': 'edit-send', onclick: send }, 'Send')))));
    requestAnimationFrame(() => input.focus());
    return node;
  }
  const busy = currentStreams().length > 0 || Boolean(S.pendingSend);
  // The controls sit beside the article, so the message element holds the user's text alone.
  return el('div', { class: 'user-turn', 'data-testid': 'user-turn' },
    el('article', attrs, el('div', { class: 'msg-text' }, m.content)),
    el('div', { class: 'user-meta' },
      userPager(step),
      typeof m.id === 'number' && !busy ? el('button', {
        type: 'button', class: 'button-quiet small', 'data-testid': 'edit-message', 'aria-label': 'Edit this message and send it again (a new branch)',
        title: 'Edit and resend', onclick: () => { S.editing = m.id; renderThread(); },
      }, icon('edit-2'), ' Edit') : null));
}

export function renderThread() {
  const thread = $('#thread');
  const stick = nearBottom();
  const nodes = [];
  for (const step of computePath()) {
    if (step.user) {
      nodes.push(userNode(step));
      continue;
    }
    const cmp = S.compare.get(step.group);
    if (cmp && cmp.ids.length && cmp.ids.every((id) => step.sibs.some((s) => s.id === id)) && step.sibs.length === cmp.ids.length) {
      nodes.push(compareNode(step.group, cmp));
    } else {
      nodes.push(assistantNode(step.shown, { pager: pagerNode(step.group, step.sibs, step.shown), ...(step.shown.origin === 'client' ? { rating: false, regenerate: false } : {}) }));
    }
  }
  const last = S.messages[S.messages.length - 1];
  if (S.pendingSend && last && last.role === 'user') {
    nodes.push(el('div', { class: 'msg assistant placeholder muted', 'aria-label': 'Waiting for the reply' }, el('span', { class: 'dots' }, '…')));
  }
  emptyThread = emptyThread || $('#empty-thread');
  thread.replaceChildren(...(nodes.length ? nodes : [emptyThread]));
  thread.setAttribute('aria-busy', S.streaming.size ? 'true' : 'false');
  if (stick) scrollToBottom();
}

// --- actions ----------------------------------------------------------------------------------

function currentStreams() {
  return [...S.streaming.entries()].filter(([, conv]) => conv === S.convId).map(([id]) => id);
}

function updateComposer() {
  const ready = Boolean(socket && socket.ready);
  const active = currentStreams().length > 0 || Boolean(S.pendingSend);
  $('#composer-send').hidden = active;
  $('#composer-stop').hidden = !active;
  $('#composer-send').disabled = !ready;
  $('#composer-send').title = ready ? '' : 'Connecting to the server…';
}

/** Send a user turn: a new message at the end of the shown path, or (editOf) an edit of an
 * earlier one, which becomes its sibling: a new branch from the same point. */
function sendTurn(content, { editOf = null } = {}) {
  if (!content.trim() || S.pendingSend) return false;
  if (!socket || !socket.ready) {
    showBanner('Not connected to the chat server yet. Wait a moment and try again.', { kind: 'warn', key: 'send' });
    return false;
  }
  const compare = $('#compare-toggle').checked;
  const frame = { type: 'chat', conversation_id: S.convId, content, alternatives: compare ? 2 : 1 };
  let parentId;
  if (editOf) {
    frame.edit_of = editOf.id;
    parentId = editOf.parent_id ?? null;
  } else {
    parentId = S.convId === null ? null : lastShownAssistantId();
    if (parentId !== null) frame.parent_id = parentId;
  }
  if (!socket.send(frame)) return false;
  clearBanner('send');
  clearBanner('frame');
  const tempId = `tmp-${++tempSeq}`;
  S.messages.push({ id: tempId, role: 'user', content, parent_id: parentId, alternative_group: null, alternative_index: 0 });
  for (const [key, id] of S.selectedUser) if (editOf && id === editOf.id) S.selectedUser.delete(key); // show the new version
  S.pendingSend = { tempId, content, conversationId: S.convId, alternatives: frame.alternatives, started: 0, compare };
  renderThread();
  scrollToBottom();
  updateComposer();
  return true;
}

function sendMessage() {
  const input = $('#composer-input');
  if (sendTurn(input.value)) input.value = '';
}

function stopGenerating() {
  for (const id of currentStreams()) socket.send({ type: 'cancel', message_id: id });
}

function regenerateReply(messageId) {
  if (!socket || !socket.send({ type: 'regenerate', message_id: messageId })) {
    showBanner('Not connected to the chat server. Wait for it to reconnect.', { kind: 'warn', key: 'send' });
  }
}

async function pick(group, choice) {
  const cmp = S.compare.get(group);
  if (!cmp || !cmp.order) return;
  const [a, b] = cmp.order;
  try {
    if (choice === 'a' || choice === 'b') {
      const ranked = choice === 'a' ? [a, b] : [b, a];
      await api('api/rankings', { method: 'POST', json: { message_ids: ranked } });
    } else {
      // A tie or two bad replies carry no order: record them as two ratings instead.
      const rating = choice === 'tie' ? 'up' : 'down';
      for (const id of [a, b]) {
        const msg = S.messages.find((m) => m.id === id);
        const keep = msg.feedback && msg.feedback.rating === rating ? msg.feedback : null;
        const saved = await submitFeedback(id, { rating, reasons: keep ? keep.reasons : [], comment: keep ? keep.comment : null });
        noteSavedFeedback(msg, { rating: saved.rating, reasons: saved.reasons, comment: saved.comment });
      }
    }
    cmp.picked = choice;
    S.selected.set(group, choice === 'b' ? b : a);
  } catch (err) {
    showBanner(`Could not save your choice: ${err.detail || err}`, { key: 'pick' });
  }
  renderThread();
}

// --- conversations -----------------------------------------------------------------------------

export async function loadConversations() {
  const q = S.search;
  try {
    const found = await api(q ? `api/conversations?q=${encodeURIComponent(q)}` : 'api/conversations');
    if (q !== S.search) return; // a newer search is on its way
    S.conversations = found;
  } catch {
    return;
  }
  renderConversationList();
}

function renderConversationList() {
  const list = $('#conversation-list');
  if (!S.conversations.length) {
    list.replaceChildren(el('li', { class: 'muted small-text', 'data-testid': 'search-empty' },
      S.search ? `No conversations match “${S.search}”.` : 'No conversations yet.'));
    return;
  }
  list.replaceChildren(...S.conversations.map((c) => {
    const current = c.id === S.convId;
    const li = el('li', { class: `conv-item${current ? ' active' : ''}`, 'data-conversation-id': c.id });
    const show = () => li.replaceChildren(
      el('a', { href: `#/chat/${c.id}`, class: 'conv-open', 'aria-current': current ? 'page' : null, title: formatTime(c.updated_at) }, c.title || 'Untitled',
        c.snippet ? el('span', { class: 'conv-snippet', 'data-testid': 'search-snippet' }, c.snippet) : null),
      el('button', { type: 'button', class: 'icon-button small', 'aria-label': `Rename conversation ${c.title}`, title: 'Rename', onclick: edit }, icon('edit-2')),
      el('button', { type: 'button', class: 'icon-button small', 'aria-label': `Delete conversation ${c.title}`, title: 'Delete', onclick: remove }, icon('trash-2')));
    async function save(input) {
      const title = input.value.trim();
      if (!title || title === c.title) return show();
      try {
        await api(`api/conversations/${c.id}`, { method: 'PATCH', json: { title } });
        c.title = title;
      } catch (err) {
        showBanner(`Could not rename: ${err.detail}`, { key: 'conv' });
      }
      return show();
    }
    function edit() {
      const input = el('input', { class: 'conv-rename', value: c.title, maxlength: 200, 'aria-label': 'New conversation title' });
      input.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') { e.preventDefault(); save(input); }
        if (e.key === 'Escape') { e.preventDefault(); show(); li.querySelector('.conv-open').focus(); }
      });
      li.replaceChildren(input,
        el('button', { type: 'button', class: 'small', onclick: () => save(input) }, 'Save'),
        el('button', { type: 'button', class: 'small button-quiet', onclick: show }, 'Cancel'));
      input.focus();
      input.select();
    }
    async function remove() {
      if (!(await confirmDialog(`Delete “${c.title}”? This cannot be undone.`, 'Delete'))) return;
      try {
        await api(`api/conversations/${c.id}`, { method: 'DELETE' });
      } catch (err) {
        showBanner(`Could not delete: ${err.detail}`, { key: 'conv' });
        return;
      }
      if (S.convId === c.id) location.hash = '#/chat';
      loadConversations();
    }
    show();
    return li;
  }));
}

/** Load one conversation. keepView keeps paging/compare state (used after a reconnect). */
async function loadConversation(id, { keepView = false } = {}) {
  const seq = ++S.loadSeq;
  let data;
  try {
    data = await api(`api/conversations/${id}`, { quiet: false });
  } catch (err) {
    if (seq !== S.loadSeq) return;
    if (err.status === 404) {
      showBanner('That conversation does not exist (it may have been deleted).', { key: 'conv' });
      location.hash = '#/chat';
    }
    return;
  }
  if (seq !== S.loadSeq) return;
  S.convId = data.id;
  S.messages = data.messages;
  if (!keepView) {
    S.selected.clear();
    S.selectedUser.clear();
    S.compare.clear();
    S.another.clear();
    S.editing = null;
    forgetDrafts();
  } else {
    // Stored feedback wins over half-finished drafts from before the reload.
    forgetDrafts();
  }
  renderThread();
  renderConversationList();
  schedulePollIfIncomplete();
}

/** After a dropped socket the server may still be writing a reply: poll until it is stored. */
function schedulePollIfIncomplete(tries = 20) {
  clearTimeout(S.pollTimer);
  const incomplete = S.messages.some((m) => m.role === 'assistant' && m.finish_reason === null && !S.streaming.has(m.id));
  if (!incomplete || tries <= 0 || S.convId === null) return;
  const conv = S.convId;
  S.pollTimer = setTimeout(async () => {
    if (S.convId !== conv) return;
    await loadConversation(conv, { keepView: true });
    schedulePollIfIncomplete(tries - 1);
  }, 1500);
}

/** Route entry: #/chat (new) or #/chat/<id>. */
export async function showChat(id) {
  $('#sidebar').classList.remove('open');
  $('#sidebar-toggle').setAttribute('aria-expanded', 'false');
  if (id === null) {
    if (S.convId !== null || S.messages.length) {
      S.convId = null;
      S.messages = [];
      S.selected.clear();
      S.selectedUser.clear();
      S.compare.clear();
      S.another.clear();
      S.editing = null;
      if (S.pendingSend && S.pendingSend.conversationId !== null) S.pendingSend = null;
    }
    renderThread();
    renderConversationList();
  } else if (id !== S.convId || !S.messages.length) {
    S.convId = id;
    await loadConversation(id);
  } else {
    renderConversationList();
  }
  updateComposer();
  $('#composer-input').focus();
}

// --- lifecycle -------------------------------------------------------------------------------

export function initChat() {
  $('#composer').addEventListener('submit', (e) => { e.preventDefault(); sendMessage(); });
  $('#composer-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendMessage();
    }
  });
  $('#composer-stop').addEventListener('click', stopGenerating);
  $('#new-chat').addEventListener('click', () => {
    if (location.hash === '#/chat') showChat(null); else location.hash = '#/chat';
  });
  $('#sidebar-toggle').addEventListener('click', () => {
    const open = $('#sidebar').classList.toggle('open');
    $('#sidebar-toggle').setAttribute('aria-expanded', open ? 'true' : 'false');
  });
  let searchTimer = null;
  const search = $('#conversation-search');
  search.addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { S.search = search.value.trim(); loadConversations(); }, 250);
  });
  search.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && search.value) { e.preventDefault(); search.value = ''; S.search = ''; loadConversations(); }
  });
  document.addEventListener('keydown', onCompareKey);
  window.addEventListener('online', () => { if (socket) socket.now(); });
  window.addEventListener('offline', () => showBanner('You are offline. The chat reconnects when the network is back.', { kind: 'warn', key: 'socket' }));
}

export function startChat() {
  if (socket) socket.close();
  socket = new ChatSocket(onFrame, onReady, onDrop);
  socket.connect();
  loadConversations();
  updateComposer();
}

export function stopChat() {
  if (socket) socket.close();
  socket = null;
  clearTimeout(S.pollTimer);
  Object.assign(S, { conversations: [], convId: null, messages: [], pendingSend: null, needsReload: false });
  S.selected.clear();
  S.selectedUser.clear();
  S.compare.clear();
  S.another.clear();
  S.streaming.clear();
  S.search = '';
  $('#conversation-search').value = '';
  forgetDrafts();
  $('#conversation-list').replaceChildren();
  renderThread();
}
