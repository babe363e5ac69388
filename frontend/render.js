// Rendering untrusted text. Model output is Markdown: parse it with marked, THEN sanitize
// the resulting HTML with DOMPurify (marked passes raw HTML through, so sanitizing the
// input instead would not help). User text is never parsed: it is shown as plain text.

import { Marked } from './vendor/marked/marked.esm.js';
import DOMPurify from './vendor/dompurify/purify.es.mjs';
import hljs from './vendor/highlight/highlight.min.js';

// Highlighting works on the sanitized DOM: it reads each block's text and writes escaped spans
// (classes only, so the strict CSP needs no inline styles). Unknown or missing languages are
// guessed among the common ones the vendored build registers.
hljs.configure({ ignoreUnescapedHTML: true, throwUnescapedHTML: false });

function highlight(code) {
  const lang = /language-([\w+-]+)/.exec(code.className || '');
  if (lang && !hljs.getLanguage(lang[1])) code.classList.remove(lang[0]);
  hljs.highlightElement(code);
}

const markdown = new Marked({ gfm: true, breaks: false, async: false });

// Only these link targets survive; everything else (javascript:, data:, vbscript:, …) loses
// its href and becomes plain text.
const SAFE_HREF = /^(https?:|mailto:|#)/i;

const PURIFY_CONFIG = {
  USE_PROFILES: { html: true }, // no SVG, no MathML
  FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'option', 'img', 'video', 'audio', 'source', 'picture'],
  FORBID_ATTR: ['style', 'id', 'name', 'srcset', 'action', 'formaction'],
  ALLOW_DATA_ATTR: false,
};

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    const href = node.getAttribute('href');
    if (href !== null && !SAFE_HREF.test(href.trim())) node.removeAttribute('href');
    if (node.hasAttribute('href')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer nofollow');
    }
  }
});

/** Sanitize an HTML string (the last step before it touches the DOM). */
export function sanitize(html) {
  return DOMPurify.sanitize(html, PURIFY_CONFIG);
}

/** Markdown → sanitized HTML string. */
export function renderMarkdown(text) {
  return sanitize(markdown.parse(String(text ?? '')));
}

/** Render Markdown into `container`: code blocks highlighted, each with a copy button. */
export function setMarkdown(container, text) {
  container.innerHTML = renderMarkdown(text);
  for (const pre of container.querySelectorAll('pre')) {
    const code = pre.querySelector('code');
    if (code) highlight(code);
    const lang = code && /language-([\w+-]+)/.exec(code.className || '');
    const bar = document.createElement('div');
    bar.className = 'code-bar';
    const label = document.createElement('span');
    label.textContent = lang ? lang[1] : 'code'; // highlight.js names the language it detected
    const copy = document.createElement('button');
    copy.type = 'button';
    copy.className = 'code-copy';
    copy.textContent = 'Copy';
    copy.setAttribute('aria-label', 'Copy code');
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText((code || pre).textContent);
        copy.textContent = 'Copied';
      } catch {
        copy.textContent = 'Copy failed';
      }
      setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
    });
    bar.append(label, copy);
    pre.before(bar);
  }
}

/** Which model answered, in words: null → "base", "global-v3" → "global v3", "u7-v2" → "personalized v2". */
export function modelLabel(adapterVersion) {
  if (adapterVersion === null || adapterVersion === undefined || adapterVersion === '') return 'base';
  const s = String(adapterVersion);
  let m = /^global-v(\d+)$/.exec(s);
  if (m) return `global v${m[1]}`;
  m = /^u\d+-v(\d+)$/.exec(s);
  if (m) return `personalized v${m[1]}`;
  return s;
}
