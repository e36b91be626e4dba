// The dashboard's entry: sign-in, the views behind the tabs, and one error path for them all.

import { ApiError, get, session } from './api.js';
import { $, notify } from './dom.js';
import { setupAlerts, showAlerts } from './alerts.js';
import { setupAudit, showAudit } from './audit.js';
import { hideSecret } from './key_forms.js';
import { setupKeys, showKeys } from './keys.js';
import { setupOverview, showOverview } from './overview.js';

const VIEWS = { overview: showOverview, keys: showKeys, alerts: showAlerts, audit: showAudit };

function signedOut(message = '') {
  session.signOut();
  hideSecret();
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('#nav').hidden = true;
  $('#sign-out').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  $('#admin-key').focus();
}

/** Runs `task`; a refused admin key signs the tab out, any other failure is reported. */
async function run(task) {
  try {
    await task();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signedOut('The gateway refused this admin key.');
    else notify(e.message || String(e), 'bad');
  }
}

function currentView() {
  const name = location.hash.slice(1);
  return Object.hasOwn(VIEWS, name) ? name : 'overview';
}

function show() {
  if (!session.key()) return signedOut();
  const name = currentView();
  $('#login').hidden = true;
  $('#nav').hidden = false;
  $('#sign-out').hidden = false;
  for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== `view-${name}`;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (name !== 'keys') hideSecret();
  return run(VIEWS[name]);
}

$('#login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $('#admin-key');
  session.signIn(input.value);
  input.value = '';
  try {
    await get('/status');
  } catch (err) {
    return signedOut(err instanceof ApiError && err.status === 401
      ? 'The gateway refused this admin key.'
      : err.message);
  }
  $('#login-error').textContent = '';
  await show();
});
$('#sign-out').addEventListener('click', () => {
  signedOut();
  notify('Signed out.');
});
window.addEventListener('hashchange', () => {
  notify('');
  show();
});
setupOverview(run);
setupKeys(run);
setupAlerts(run);
setupAudit(run);
show();
