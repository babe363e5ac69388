// Light / dark / system theme. The choice is kept in localStorage (so the sign-in page has it
// too) and in the user's preferences on the server (so it follows them to another browser).
// "system" follows the OS setting live. CSS reads <html data-theme="light|dark">.

const KEY = 'assistant-theme';
const THEMES = ['light', 'dark', 'system'];
const media = window.matchMedia('(prefers-color-scheme: dark)');

export function storedTheme() {
  const t = localStorage.getItem(KEY);
  return THEMES.includes(t) ? t : 'system';
}

function effective(choice) {
  return choice === 'system' ? (media.matches ? 'dark' : 'light') : choice;
}

export function applyTheme(choice) {
  const t = THEMES.includes(choice) ? choice : 'system';
  localStorage.setItem(KEY, t);
  document.documentElement.dataset.theme = effective(t);
  document.documentElement.dataset.themeChoice = t;
  for (const select of document.querySelectorAll('[data-theme-select]')) select.value = t;
}

export function initTheme() {
  applyTheme(storedTheme());
  media.addEventListener('change', () => applyTheme(storedTheme()));
}
