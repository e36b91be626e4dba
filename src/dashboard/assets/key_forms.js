// Creating a key, and managing one (top up, tools, quota, spending limit, expiry, tags, rotate,
// revoke), all by its keyId. A full key is shown once, in the secret panel, and dropped from
// the page when the operator is done with it.

import { post } from './api.js';
import { $, confirmAction, fill, fromLocalInput, list, notify, number, time, toLocalInput } from './dom.js';

let current = null; // the key the manage dialog shows
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

/** `name=value` items (split by `separator`) as a tags object. */
function parseTags(text, separator) {
  const tags = {};
  for (const item of String(text || '').split(separator)) {
    const at = item.indexOf('=');
    if (item.trim() === '') continue;
    if (at <= 0) throw new Error(`"${item.trim()}" is not name=value`);
    tags[item.slice(0, at).trim()] = item.slice(at + 1).trim();
  }
  return tags;
}

function summary(k) {
  return `${k.keyId} · ${k.key} · ${number(k.credits)} credits · ${number(k.totalCalls)} calls · `
    + `${k.active ? 'active' : 'revoked'} · expires ${time(k.expiresAt)}`;
}

/** Opens the manage dialog for key `k` (a row of `GET /keys`). */
export function openKey(k) {
  current = k;
  fill($('#key-dialog-title'), k.name);
  fill($('#key-dialog-summary'), summary(k));
  const forms = {
    acl: $('#acl-form'), quota: $('#quota-form'), limits: $('#limits-form'),
    expiry: $('#expiry-form'), tags: $('#tags-form'), topup: $('#topup-form'),
  };
  forms.topup.reset();
  forms.acl.allowedTools.value = (k.allowedTools || []).join(', ');
  forms.acl.deniedTools.value = (k.deniedTools || []).join(', ');
  for (const field of ['dailyCallLimit', 'monthlyCallLimit', 'dailyCreditLimit', 'monthlyCreditLimit']) {
    forms.quota[field].value = k.quota ? k.quota[field] : '';
  }
  forms.limits.spendingLimit.value = k.spendingLimit || 0;
  forms.expiry.expiresAt.value = toLocalInput(k.expiresAt);
  forms.tags.tags.value = Object.entries(k.tags || {}).map(([n, v]) => `${n}=${v}`).join('\n');
  for (const b of [$('#key-rotate'), $('#key-revoke')]) b.disabled = !k.active;
  $('#key-dialog').showModal();
}

/** Posts `body` (with the key's id) to `path`, reports `done`, and redraws the list. */
async function change(path, body, done) {
  const { data } = await post(path, { keyId: current.keyId, ...body });
  notify(done(data));
  await refresh();
  return data;
}

function onSubmit(selector, run, handler) {
  $(selector).addEventListener('submit', (e) => {
    e.preventDefault();
    run(() => handler(e.target));
  });
}

export function setupKeyForms(run, redraw) {
  refresh = redraw;
  $('#secret-copy').addEventListener('click', () => {
    navigator.clipboard.writeText($('#secret-value').textContent)
      .then(() => notify('Copied to the clipboard.'))
      .catch(() => {
        // No clipboard (an insecure origin): select the key for the operator to copy.
        window.getSelection().selectAllChildren($('#secret-value'));
        notify('Press Ctrl+C (⌘C) to copy the selected key.', 'bad');
      });
  });
  $('#secret-done').addEventListener('click', hideSecret);
  $('#key-dialog-close').addEventListener('click', () => $('#key-dialog').close());
  $('#create-open').addEventListener('click', () => {
    $('#create-form').reset();
    $('#create-dialog').showModal();
  });
  $('#create-cancel').addEventListener('click', () => $('#create-dialog').close());

  onSubmit('#create-form', run, async (form) => {
    const body = {
      name: form.name.value,
      credits: Number(form.credits.value),
      tags: parseTags(form.tags.value, ','),
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
    const data = await change('/topup', { credits: Number(form.credits.value) },
      (d) => `${current.name} now has ${number(d.credits)} credits.`);
    current = { ...current, credits: data.credits };
    fill($('#key-dialog-summary'), summary(current));
    form.reset();
  });
  onSubmit('#acl-form', run, (form) => change('/keys/acl', {
    allowedTools: list(form.allowedTools.value),
    deniedTools: list(form.deniedTools.value),
  }, () => `Saved the tools of ${current.name}.`));
  onSubmit('#quota-form', run, (form) => change('/keys/quota', {
    dailyCallLimit: Number(form.dailyCallLimit.value || 0),
    monthlyCallLimit: Number(form.monthlyCallLimit.value || 0),
    dailyCreditLimit: Number(form.dailyCreditLimit.value || 0),
    monthlyCreditLimit: Number(form.monthlyCreditLimit.value || 0),
  }, () => `Saved the quota of ${current.name}.`));
  $('#quota-remove').addEventListener('click', () => run(() => change('/keys/quota', { remove: true },
    () => `${current.name} now follows the global quota.`)));
  onSubmit('#limits-form', run, (form) => change('/limits', {
    spendingLimit: Number(form.spendingLimit.value || 0),
  }, () => `Saved the spending limit of ${current.name}.`));
  onSubmit('#expiry-form', run, (form) => {
    const expiresAt = fromLocalInput(form.expiresAt.value);
    if (!expiresAt) throw new Error('Pick a date and time, or choose "Never expires".');
    return change('/keys/expiry', { expiresAt }, () => `${current.name} expires ${time(expiresAt)}.`);
  });
  $('#expiry-never').addEventListener('click', () => run(() => change('/keys/expiry', { expiresAt: null },
    () => `${current.name} never expires.`)));
  onSubmit('#tags-form', run, (form) => {
    const wanted = parseTags(form.tags.value, '\n');
    // Tags merge: a tag the operator removed is sent as null, which deletes it.
    const tags = { ...Object.fromEntries(Object.keys(current.tags || {}).map((n) => [n, null])), ...wanted };
    return change('/keys/tags', { tags }, () => `Saved the tags of ${current.name}.`);
  });
  $('#key-rotate').addEventListener('click', () => run(async () => {
    const k = current;
    if (!(await confirmAction(`Rotate ${k.name}? Its key stops working at once; a new key takes over its credits and settings.`, 'Rotate'))) return;
    const { data } = await post('/keys/rotate', { keyId: k.keyId });
    $('#key-dialog').close();
    showSecret(`New key for ${k.name} (rotated)`, data.newKey);
    notify(`Rotated ${k.name}; the old key no longer works.`);
    await refresh();
  }));
  $('#key-revoke').addEventListener('click', () => run(async () => {
    const k = current;
    if (!(await confirmAction(`Revoke ${k.name}? Calls with its key are refused from now on.`, 'Revoke'))) return;
    await post('/keys/revoke', { keyId: k.keyId });
    $('#key-dialog').close();
    notify(`Revoked ${k.name}.`);
    await refresh();
  }));
}
