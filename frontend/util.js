// Small shared helpers: DOM building (never innerHTML for data), the error banner,
// the confirm dialog and the JSON API client.

/**
 * Build an element. `attrs` keys: `class`, `text`, `dataset`, `on<event>` (listener),
 * boolean `hidden`/`disabled`/`checked`, everything else via setAttribute.
 * Children may be nodes, strings (as text) or null/false (skipped).
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (['hidden', 'disabled', 'checked', 'selected'].includes(key)) node[key] = Boolean(value);
    else if (key === 'value') node.value = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

/** "2025-01-02T03:04:05" (UTC, as the API sends it) → local short date-time. */
export function formatTime(iso) {
  if (!iso) return '';
  const d = new Date(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' });
}

export function formatNumber(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(1) : String(Number(v.toPrecision(3)));
}

// --- banner ------------------------------------------------------------------------
// One banner; `key` lets a condition (e.g. "offline") clear only its own message.
let bannerKey = null;

export function showBanner(message, { kind = 'error', key = null } = {}) {
  const banner = $('#banner');
  $('#banner-text').textContent = message;
  banner.dataset.kind = kind;
  banner.hidden = false;
  bannerKey = key;
}

export function clearBanner(key = null) {
  if (key !== null && bannerKey !== key) return;
  $('#banner').hidden = true;
  bannerKey = null;
}

// --- confirm dialog ------------------------------------------------------------------
/** An in-page confirm (native confirm() blocks and is auto-dismissed by test drivers). */
export function confirmDialog(text, okLabel = 'OK') {
  const dialog = $('#confirm-dialog');
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
    $('#confirm-cancel').focus();
  });
}

// --- API client ----------------------------------------------------------------------
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

/** FastAPI error bodies: {"detail": "text"} or {"detail": [{"loc": [...], "msg": "..."}]}. */
function describeError(body, status) {
  const detail = body && body.detail;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const field = Array.isArray(d.loc) ? d.loc.filter((p) => p !== 'body').join('.') : '';
      return field ? `${field}: ${d.msg}` : d.msg;
    }).join('; ');
  }
  return `request failed (HTTP ${status})`;
}

/**
 * Call the JSON API with a relative path ("api/..."), so the app also works under a
 * path prefix. Throws ApiError. 401 fires "auth-lost"; offline, 429 and 5xx also show the
 * banner unless `quiet` (the caller then shows the error where it belongs).
 */
export async function api(path, { method = 'GET', json, form, quiet = false } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = new URLSearchParams(form);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    const msg = navigator.onLine ? 'Cannot reach the server. Check that it is running and try again.'
      : 'You are offline. Reconnect to the network and try again.';
    if (!quiet) showBanner(msg, { key: 'network' });
    throw new ApiError(0, msg);
  }
  clearBanner('network');
  if (response.status === 204) return null;
  let body = null;
  const text = await response.text();
  if (text) {
    try { body = JSON.parse(text); } catch { body = { detail: text.slice(0, 200) }; }
  }
  if (response.ok) return body;

  const detail = describeError(body, response.status);
  if (response.status === 401 && !path.startsWith('api/auth/')) {
    window.dispatchEvent(new CustomEvent('auth-lost'));
  } else if (!quiet && response.status === 429) {
    showBanner(`Too many requests: ${detail}. Wait a moment and try again.`, { key: 'http' });
  } else if (!quiet && response.status >= 500) {
    showBanner(`Server error (${response.status}): ${detail}`, { key: 'http' });
  }
  throw new ApiError(response.status, detail);
}

/** Save a JSON value as a file download (no server round trip for the file name). */
export function downloadJson(value, filename) {
  const blob = new Blob([JSON.stringify(value, null, 2)], { type: 'application/json' });
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
