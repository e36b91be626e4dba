// Building the page from API data. Every value becomes a text node or an attribute value,
// never markup: a key named `<img onerror=...>` shows as those characters and runs nothing.

const SVG_NS = 'http://www.w3.org/2000/svg';

export const $ = (selector, root = document) => root.querySelector(selector);

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function setProps(node, props) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') {
      node.addEventListener(name.slice(2), value);
    } else node.setAttribute(name, value === true ? '' : String(value));
  }
}

/** An HTML element with attributes (`onclick: fn` adds a listener) and text or node children. */
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  setProps(node, props);
  return append(node, children);
}

/** An SVG element, the same way. */
export function svg(tag, props, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setProps(node, props);
  return append(node, children);
}

/** Replaces what `node` holds. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** A table of `rows`, one column per `[heading, cell(row), className?]`. */
export function table(columns, rows, { empty = 'Nothing to show.', rowProps } = {}) {
  if (rows.length === 0) return el('p', { class: 'muted' }, empty);
  return el('table', {},
    el('thead', {}, el('tr', {}, columns.map(([heading, , cls]) => el('th', { scope: 'col', class: cls }, heading)))),
    el('tbody', {}, rows.map((row) => el('tr', rowProps ? rowProps(row) : {},
      columns.map(([, cell, cls]) => el('td', { class: cls }, cell(row)))))));
}

const numbers = new Intl.NumberFormat();
export const number = (n) => (typeof n === 'number' ? numbers.format(n) : '—');

/** A local date and time for an RFC 3339 string; a dash for none. */
export function time(value) {
  if (!value) return '—';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** The RFC 3339 form of a `datetime-local` input's value, or undefined when empty. */
export function fromLocalInput(value) {
  if (!value) return undefined;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? undefined : date.toISOString();
}

/** The `datetime-local` form of an RFC 3339 string (empty for none). */
export function toLocalInput(value) {
  if (!value) return '';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return '';
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

/** A comma-separated list as an array of its non-empty trimmed items. */
export const list = (text) => String(text || '').split(',').map((s) => s.trim()).filter(Boolean);

let noticeTimer;
/**
 * Tells the operator what happened: in the page's live region, and in the open dialog's own
 * when one is open (the page behind a modal dialog is hidden from assistive technology).
 */
export function notify(message, kind = 'good') {
  const notice = $('#notice');
  notice.className = kind;
  notice.textContent = message;
  const inDialog = $('dialog[open] .dialog-notice');
  if (inDialog) {
    inDialog.className = `dialog-notice ${kind}`;
    inDialog.setAttribute('role', kind === 'bad' ? 'alert' : 'status');
    inDialog.textContent = message;
  }
  clearTimeout(noticeTimer);
  if (kind === 'good') noticeTimer = setTimeout(() => { notice.textContent = ''; }, 6000);
}

/** Asks in the page's own dialog (not `confirm()`); resolves to whether the operator agreed. */
export function confirmAction(message, action = 'Confirm') {
  const dialog = $('#confirm-dialog');
  fill($('#confirm-text'), message);
  $('#confirm-ok').textContent = action;
  return new Promise((resolve) => {
    const done = (answer) => () => {
      $('#confirm-ok').onclick = null;
      $('#confirm-cancel').onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $('#confirm-ok').onclick = done(true);
    $('#confirm-cancel').onclick = done(false);
    dialog.onclose = done(false);
    dialog.showModal();
  });
}
