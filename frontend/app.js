// Entry point: who is signed in, sign in/up/out, and the hash router
// (#/chat, #/chat/<id>, #/me, #/settings, #/admin).

import { api, $, clearBanner, showBanner } from './util.js';
import { loadReasons } from './feedback.js';
import { initChat, showChat, startChat, stopChat } from './chat.js';
import { showMe } from './me.js';
import { showAdmin, hideAdmin } from './admin.js';
import { showSettings, syncThemeFromServer, saveTheme } from './settings.js';
import { initTheme } from './theme.js';

let user = null;

function showView(name) {
  for (const v of ['auth', 'chat', 'me', 'settings', 'admin']) $(`#view-${v}`).hidden = v !== name;
  $('#loading').hidden = true;
  $('#topbar').hidden = name === 'auth';
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.body.dataset.view = name;
}

async function route() {
  if (!user) return;
  const hash = location.hash || '#/chat';
  const [, section, id] = hash.split('/');
  if (section !== 'admin') hideAdmin();
  if (section === 'me') {
    showView('me');
    await showMe();
  } else if (section === 'settings') {
    showView('settings');
    await showSettings();
  } else if (section === 'admin' && user.role === 'operator') {
    showView('admin');
    await showAdmin();
  } else {
    showView('chat');
    const convId = id && /^\d+$/.test(id) ? Number(id) : null;
    await showChat(convId);
  }
}

function signedIn(me) {
  user = me;
  $('#whoami').textContent = `${me.username}${me.role === 'operator' ? ' (operator)' : ''}`;
  $('[data-testid="nav-admin"]').hidden = me.role !== 'operator';
  loadReasons();
  syncThemeFromServer();
  startChat();
  route();
}

function signedOut() {
  user = null;
  stopChat();
  hideAdmin();
  $('[data-testid="nav-admin"]').hidden = true;
  showView('auth');
  $('#auth-password').value = '';
  $('#auth-username').focus();
}

// --- sign in / sign up ---------------------------------------------------------------------

function authError(text) {
  const p = $('#auth-error');
  p.textContent = text;
  p.hidden = !text;
}

function readCredentials() {
  const username = $('#auth-username').value.trim();
  const password = $('#auth-password').value;
  if (!/^[A-Za-z0-9_.-]{3,32}$/.test(username)) {
    authError('Username: 3–32 characters, letters, digits, _ . -');
    $('#auth-username').focus();
    return null;
  }
  if (password.length < 8 || password.length > 128) {
    authError('Password: 8–128 characters.');
    $('#auth-password').focus();
    return null;
  }
  return { username, password };
}

async function signIn(creds) {
  await api('api/auth/token', { method: 'POST', form: creds, quiet: true });
  return api('api/me', { quiet: true });
}

async function withBusy(fn) {
  const buttons = [$('#auth-login'), $('#auth-register')];
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await fn();
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

async function onLogin(e) {
  e.preventDefault();
  const creds = readCredentials();
  if (!creds) return;
  authError('');
  await withBusy(async () => {
    try {
      signedIn(await signIn(creds));
    } catch (err) {
      authError(err.status === 401 || err.status === 400 ? 'Wrong username or password.'
        : err.status === 429 ? 'Too many attempts. Wait a minute and try again.' : `Sign-in failed: ${err.detail}`);
    }
  });
}

async function onRegister() {
  const creds = readCredentials();
  if (!creds) return;
  authError('');
  await withBusy(async () => {
    try {
      await api('api/auth/register', { method: 'POST', json: creds, quiet: true });
    } catch (err) {
      authError(err.status === 409 ? 'That username is taken. Choose another, or sign in.'
        : err.status === 422 ? `Check your details: ${err.detail}` : `Sign-up failed: ${err.detail}`);
      return;
    }
    try {
      signedIn(await signIn(creds));
    } catch (err) {
      authError(`Account created, but sign-in failed: ${err.detail}`);
    }
  });
}

async function onSignOut() {
  try {
    await api('api/auth/logout', { method: 'POST', quiet: true });
  } catch {
    // Signing out locally still matters if the server is unreachable.
  }
  clearBanner();
  history.replaceState(null, '', '#/chat');
  signedOut();
}

// --- boot --------------------------------------------------------------------------------------

async function boot() {
  initTheme();
  $('#theme-toggle').addEventListener('change', (e) => saveTheme(e.target.value));
  $('#banner-close').addEventListener('click', () => clearBanner());
  $('#auth-form').addEventListener('submit', onLogin);
  $('#auth-register').addEventListener('click', onRegister);
  $('#sign-out').addEventListener('click', onSignOut);
  window.addEventListener('hashchange', route);
  window.addEventListener('auth-lost', () => {
    if (user) showBanner('Your session ended. Sign in again.', { kind: 'warn', key: 'auth' });
    signedOut();
  });
  initChat();

  let me = null;
  try {
    me = await api('api/me', { quiet: true });
  } catch (err) {
    if (err.status !== 401) showBanner(`Cannot reach the server: ${err.detail}`, { key: 'boot' });
  }
  if (me) signedIn(me); else signedOut();
}

boot();
