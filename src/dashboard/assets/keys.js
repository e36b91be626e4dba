// The keys view: one page of keys at a time (the API's cursor pages, so it costs the same at a
// million keys), search by tag, and the row actions of key_forms.js.

import { get, latest, post } from './api.js';
import { $, el, fill, notify, number, time } from './dom.js';
import { openKey, setupKeyForms } from './key_forms.js';

const state = {
  pageSize: 50,
  cursor: null, // the shown page's cursor (null: the first page)
  previous: [], // the cursors of the pages before it
  next: null,
  search: null, // {tag, value} while a search is shown
};
const ticket = latest();

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

/** Shows the page at `cursor` (after `previous`); the state moves only once it arrived. */
async function showPage(cursor = state.cursor, previous = state.previous) {
  const current = ticket();
  const { data, headers } = await get('/keys', { limit: state.pageSize, cursor });
  if (!current()) return;
  Object.assign(state, { cursor, previous, next: nextCursor(headers.get('link')) });
  const total = Number(headers.get('x-total-count'));
  const first = previous.length * state.pageSize;
  fill($('#keys-count'), data.length
    ? `Keys ${number(first + 1)}–${number(first + data.length)} of ${number(total)}`
    : 'No keys yet.');
  fill($('#keys-table tbody'), data.map(row));
  $('#keys-prev').disabled = previous.length === 0;
  $('#keys-next').disabled = !state.next;
}

async function showSearch(search) {
  const current = ticket();
  const { data } = await post('/keys/search', { tags: { [search.tag]: search.value } });
  if (!current()) return;
  state.search = search;
  $('#search-clear').hidden = false;
  const shown = `${number(data.count)} keys with ${search.tag}=${search.value}`;
  fill($('#keys-count'), data.truncated ? `The first ${shown} (there are more)` : shown);
  fill($('#keys-table tbody'), data.keys.map(row));
  $('#keys-prev').disabled = true;
  $('#keys-next').disabled = true;
}

/** Shows the current page, or the current search. */
export function showKeys() {
  $('#search-clear').hidden = !state.search;
  return state.search ? showSearch(state.search) : showPage();
}

export function setupKeys(run) {
  setupKeyForms(run, showKeys);
  $('#keys-page-size').addEventListener('change', (e) => {
    state.pageSize = Number(e.target.value);
    run(() => showPage(null, []));
  });
  // A second click before the page arrives asks for the same page: the state moves only
  // when an answer is shown, and only the latest answer is.
  $('#keys-next').addEventListener('click', () => {
    if (state.next) run(() => showPage(state.next, [...state.previous, state.cursor]));
  });
  $('#keys-prev').addEventListener('click', () => {
    if (state.previous.length) run(() => showPage(state.previous.at(-1), state.previous.slice(0, -1)));
  });
  $('#search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const form = e.target;
    const tag = form.tag.value.trim();
    if (!tag) return notify('A tag name is needed to search.', 'bad');
    return run(() => showSearch({ tag, value: form.value.value }), e.submitter);
  });
  $('#search-clear').addEventListener('click', () => {
    state.search = null;
    $('#search-form').reset();
    run(showKeys);
  });
}
