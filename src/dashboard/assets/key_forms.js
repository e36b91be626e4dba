// Creating a key, and managing one (top up, tools, quota, spending limit, expiry, tags, rotate,
// revoke), all by its keyId. A full key is shown once, in the secret panel, and dropped from
// the page when the operator is done with it.

import { post } from './api.js';
import { $, confirmAction, el, fill, fromLocalInput, list, notify, number, time, toLocalInput } from './dom.js';

const QUOTA_FIELDS = ['dailyCallLimit', 'monthlyCallLimit', 'dailyCreditLimit', 'monthlyCreditLimit'];

let current = null; // the key the manage dialog shows, as the API last answered it
let refresh = async () => {};

/** Shows a full key once, with a copy button. */
function showSecret(title, key) {
  fill($('#secret-title'), title);
  fill($('#secret-value'), key);
  $('#secret').hidden = false;
  $('#secret-copy').focus();
}

export function hideSecret() {
  fill($('#secret-value'));
  $('#secret').hidden = true;
}

function copySecret() {
  const fallback = () => {
    // No clipboard here (a plain-http origin): select the key for the operator to copy.
    window.getSelection().selectAllChildren($('#secret-value'));
    notify('Press Ctrl+C (⌘C) to copy the selected key.', 'bad');
  };
  if (!navigator.clipboard) return fallback();
  return navigator.clipboard.writeText($('#secret-value').textContent)
    .then(() => notify('Copied to the clipboard.'), fallback);
}

/**
 * `name=value, ...` (the create form) as a tags object. Names are trimmed and must not be
 * empty; built with `Object.fromEntries`, so any name (even `__proto__`) is an own field.
 */
function parseTags(text) {
  const pairs = [];
  for (const item of String(text || '').split(',')) {
    if (item.trim() === '') continue;
    const at = item.indexOf('=');
    const name = at < 0 ? '' : item.slice(0, at).trim();
    if (!name) throw new Error(`"${item.trim()}" is not name=value`);
    pairs.push([name, item.slice(at + 1).trim()]);
  }
  return Object.fromEntries(pairs);
}

function tagRow(name = '', value = '') {
  const tr = el('tr', {},
    el('td', {}, el('input', { name: 'tagName', value: name, maxlength: 100, autocomplete: 'off', 'aria-label': 'Tag name' })),
    el('td', {}, el('input', { name: 'tagValue', value, maxlength: 100, autocomplete: 'off', 'aria-label': 'Tag value' })),
    el('td', {}, el('button', {
      type: 'button', class: 'quiet', 'aria-label': `Remove tag ${name}`.trim(), onclick: () => tr.remove(),
    }, 'Remove')));
  return tr;
}

/** The tags rows as a change for `/keys/tags`: every row, and `null` for each tag removed. */
function tagChange() {
  const wanted = [...$('#tags-table tbody').rows].map((tr) => [
    $('[name=tagName]', tr).value, $('[name=tagValue]', tr).value,
  ]);
  if (wanted.some(([name]) => name === '')) throw new Error('Every tag needs a name.');
  const kept = new Set(wanted.map(([name]) => name));
  const removed = Object.keys(current.tags || {}).filter((name) => !kept.has(name));
  return Object.fromEntries([...removed.map((name) => [name, null]), ...wanted]);
}

function summary(k) {
  return `${k.keyId} · ${k.key} · ${number(k.credits)} credits · ${number(k.totalCalls)} calls · `
    + `${k.active ? 'active' : 'revoked'} · expires ${time(k.expiresAt)}`;
}

/** Sets every part of the manage dialog from key `k`. */
function fillDialog(k) {
  current = k;
  fill($('#key-dialog-title'), k.name);
  fill($('#key-dialog-summary'), summary(k));
  $('#topup-form').reset();
  $('#acl-form').allowedTools.value = (k.allowedTools || []).join(', ');
  $('#acl-form').deniedTools.value = (k.deniedTools || []).join(', ');
  for (const field of QUOTA_FIELDS) $('#quota-form')[field].value = k.quota ? k.quota[field] : '';
  fill($('#quota-source'), k.quota
    ? 'This key has its own quota (0 = no cap). "Use the global quota" drops it.'
    : 'This key follows the global quota. Saving limits here gives it its own (empty or 0 = no cap).');
  $('#limits-form').spendingLimit.value = k.spendingLimit || 0;
  $('#expiry-form').expiresAt.value = toLocalInput(k.expiresAt);
  fill($('#tags-table tbody'), Object.entries(k.tags || {}).map(([n, v]) => tagRow(n, v)));
  for (const b of [$('#key-rotate'), $('#key-revoke')]) b.disabled = !k.active;
}

/** Opens the manage dialog for key `k` (a row of `GET /keys`). */
export function openKey(k) {
  fill($('#key-dialog .dialog-notice'));
  fillDialog(k);
  $('#key-dialog').showModal();
}

/** Posts `body` (with the key's id) to `path`, shows the key as answered, and redraws. */
async function change(path, body, done) {
  const { data } = await post(path, { keyId: current.keyId, ...body });
  fillDialog({ ...current, ...data });
  notify(done(data));
  await refresh();
  return data;
}

/** `handler(form)` on submit, its button held down until the request settles. */
function onSubmit(selector, run, handler) {
  $(selector).addEventListener('submit', (e) => {
    e.preventDefault();
    run(() => handler(e.target), e.submitter);
  });
}

function onClick(selector, run, handler) {
  $(selector).addEventListener('click', (e) => run(handler, e.currentTarget));
}

export function setupKeyForms(run, redraw) {
  refresh = redraw;
  $('#secret-copy').addEventListener('click', copySecret);
  $('#secret-done').addEventListener('click', hideSecret);
  $('#key-dialog-close').addEventListener('click', () => $('#key-dialog').close());
  $('#key-dialog').addEventListener('close', () => {
    // Back to the row the dialog was opened from (it was redrawn meanwhile).
    const row = current && document.querySelector(`#keys-table tr[data-key-id="${CSS.escape(current.keyId)}"] button`);
    if (row) row.focus();
  });
  $('#create-open').addEventListener('click', () => {
    $('#create-form').reset();
    fill($('#create-dialog .dialog-notice'));
    $('#create-dialog').showModal();
  });
  $('#create-cancel').addEventListener('click', () => $('#create-dialog').close());
  $('#tag-add').addEventListener('click', () => {
    const row = tagRow();
    $('#tags-table tbody').append(row);
    $('input', row).focus();
  });

  onSubmit('#create-form', run, async (form) => {
    const body = {
      name: form.name.value,
      credits: Number(form.credits.value),
      tags: parseTags(form.tags.value),
    };
    const allowed = list(form.allowedTools.value);
    if (allowed.length) body.allowedTools = allowed;
    if (form.expiresInHours.value) body.expiresIn = Number(form.expiresInHours.value) * 3600;
    if (form.spendingLimit.value) body.spendingLimit = Number(form.spendingLimit.value);
    const { data } = await post('/keys', body);
    $('#create-dialog').close();
    showSecret(`New key for ${data.name}`, data.key);
    notify(`Created ${data.name} with ${number(data.credits)} credits.`);
    await refresh();
  });
  onSubmit('#topup-form', run, async (form) => {
    const { data } = await post('/topup', { keyId: current.keyId, credits: Number(form.credits.value) });
    fillDialog({ ...current, credits: data.credits });
    notify(`${current.name} now has ${number(data.credits)} credits.`);
    await refresh();
  });
  onSubmit('#acl-form', run, (form) => change('/keys/acl', {
    allowedTools: list(form.allowedTools.value),
    deniedTools: list(form.deniedTools.value),
  }, () => `Saved the tools of ${current.name}.`));
  onSubmit('#quota-form', run, (form) => {
    const limits = Object.fromEntries(QUOTA_FIELDS.map((f) => [f, Number(form[f].value || 0)]));
    return change('/keys/quota', limits, () => `Saved the quota of ${current.name}.`);
  });
  onClick('#quota-remove', run, () => change('/keys/quota', { remove: true },
    () => `${current.name} now follows the global quota.`));
  onSubmit('#limits-form', run, (form) => change('/limits', {
    spendingLimit: Number(form.spendingLimit.value || 0),
  }, () => `Saved the spending limit of ${current.name}.`));
  onSubmit('#expiry-form', run, (form) => {
    const expiresAt = fromLocalInput(form.expiresAt.value);
    if (!expiresAt) throw new Error('Pick a date and time, or choose "Never expires".');
    return change('/keys/expiry', { expiresAt }, () => `${current.name} expires ${time(expiresAt)}.`);
  });
  onClick('#expiry-never', run, () => change('/keys/expiry', { expiresAt: null },
    () => `${current.name} never expires.`));
  onSubmit('#tags-form', run, () => change('/keys/tags', { tags: tagChange() },
    () => `Saved the tags of ${current.name}.`));
  onClick('#key-rotate', run, async () => {
    const k = current;
    if (!(await confirmAction(`Rotate ${k.name}? Its key stops working at once; a new key takes over its credits and settings.`, 'Rotate'))) return;
    const { data } = await post('/keys/rotate', { keyId: k.keyId });
    $('#key-dialog').close();
    showSecret(`New key for ${k.name} (rotated)`, data.newKey);
    notify(`Rotated ${k.name}; the old key no longer works.`);
    await refresh();
  });
  onClick('#key-revoke', run, async () => {
    const k = current;
    if (!(await confirmAction(`Revoke ${k.name}? Calls with its key are refused from now on.`, 'Revoke'))) return;
    await post('/keys/revoke', { keyId: k.keyId });
    $('#key-dialog').close();
    notify(`Revoked ${k.name}.`);
    await refresh();
  });
}
