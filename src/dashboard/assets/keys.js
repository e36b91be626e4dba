// The keys view: one page of keys at a time (the API's cursor pages, so it costs the same at a
// million keys), search by tag, and the row actions of key_forms.js.

import { get, post } from './api.js';
import { $, el, fill, number, time } from './dom.js';
import { openKey, setupKeyForms } from './key_forms.js';

const state = {
  pageSize: 50,
  cursor: null, // this page's cursor (null: the first page)
  previous: [], // the cursors of the pages before it
  next: null,
  search: null, // {tag, value} while a search is shown
};

function keyStatus(k) {
  if (!k.active) return el('span', { class: 'status-revoked' }, 'revoked');
  if (k.expired) return el('span', { class: 'status-expired' }, 'expired');
  return el('span', { class: 'status-active' }, 'active');
}

function row(k) {
  return el('tr', { dataset: { keyId: k.keyId } },
    el('td', { class: 'key-name' }, k.name),
    el('td', {}, el('code', {}, k.keyId)),
    el('td', {}, el('code', {}, k.key)),
    el('td', { class: 'num key-credits' }, number(k.credits)),
    el('td', { class: 'num' }, number(k.totalSpent)),
    el('td', { class: 'num' }, number(k.totalCalls)),
    el('td', { class: 'key-status' }, keyStatus(k)),
    el('td', {}, time(k.expiresAt)),
    el('td', { class: 'key-tags' }, Object.entries(k.tags || {}).map(([n, v]) => el('span', { class: 'tag' }, `${n}=${v}`))),
    el('td', {}, el('button', {
      type: 'button', class: 'quiet', dataset: { action: 'manage' }, 'aria-label': `Manage ${k.name}`,
      onclick: () => openKey(k),
    }, 'Manage')));
}

/** The cursor in a `Link: <...?cursor=...>; rel="next"` header (its path is the API's own). */
function nextCursor(link) {
  const match = /[?&]cursor=([0-9a-f]+)/.exec(link || '');
  return match ? match[1] : null;
}

async function showPage() {
  const { data, headers } = await get('/keys', { limit: state.pageSize, cursor: state.cursor });
  state.next = nextCursor(headers.get('link'));
  const total = Number(headers.get('x-total-count'));
  const first = state.previous.length * state.pageSize;
  fill($('#keys-count'), data.length
    ? `Keys ${number(first + 1)}–${number(first + data.length)} of ${number(total)}`
    : 'No keys yet.');
  fill($('#keys-table tbody'), data.map(row));
  $('#keys-prev').disabled = state.previous.length === 0;
  $('#keys-next').disabled = !state.next;
}

async function showSearch() {
  const { data } = await post('/keys/search', { tags: { [state.search.tag]: state.search.value } });
  fill($('#keys-count'), `${number(data.count)} keys with ${state.search.tag}=${state.search.value}`);
  fill($('#keys-table tbody'), data.keys.map(row));
  $('#keys-prev').disabled = true;
  $('#keys-next').disabled = true;
}

/** Shows the current page, or the current search. */
export function showKeys() {
  $('#search-clear').hidden = !state.search;
  return state.search ? showSearch() : showPage();
}

export function setupKeys(run) {
  setupKeyForms(run, showKeys);
  $('#keys-page-size').addEventListener('change', (e) => {
    state.pageSize = Number(e.target.value);
    state.cursor = null;
    state.previous = [];
    run(showKeys);
  });
  $('#keys-next').addEventListener('click', () => {
    if (!state.next) return;
    state.previous.push(state.cursor);
    state.cursor = state.next;
    run(showKeys);
  });
  $('#keys-prev').addEventListener('click', () => {
    if (state.previous.length === 0) return;
    state.cursor = state.previous.pop();
    run(showKeys);
  });
  $('#search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const form = e.target;
    state.search = { tag: form.tag.value.trim(), value: form.value.value };
    run(showKeys);
  });
  $('#search-clear').addEventListener('click', () => {
    state.search = null;
    $('#search-form').reset();
    run(showKeys);
  });
}
