// The dashboard's entry: sign-in, the views behind the tabs, and one error path for them all.

import { ApiError, get, session } from './api.js';
import { $, notify } from './dom.js';
import { setupAlerts, showAlerts } from './alerts.js';
import { setupAudit, showAudit } from './audit.js';
import { hideSecret } from './key_forms.js';
import { setupKeys, showKeys } from './keys.js';
import { setupOverview, showOverview } from './overview.js';

const VIEWS = { overview: showOverview, keys: showKeys, alerts: showAlerts, audit: showAudit };

const SIGNED_OUT_BECAUSE = 'paygate.signedOutBecause';

/**
 * Forgets the admin key and starts the page afresh, so nothing the last session showed or
 * was still fetching stays in it; `message` is shown on the login form.
 */
function signOut(message = '') {
  session.signOut();
  if (message) sessionStorage.setItem(SIGNED_OUT_BECAUSE, message);
  location.replace(location.pathname + location.search);
}

function showLogin() {
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('#nav').hidden = true;
  $('#sign-out').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = sessionStorage.getItem(SIGNED_OUT_BECAUSE) || '';
  sessionStorage.removeItem(SIGNED_OUT_BECAUSE);
  $('#admin-key').focus();
}

/**
 * Runs `task`, with `control` (the button that asked for it) held down until it settles, so
 * a double click cannot top up or create twice. A refused admin key signs the tab out; any
 * other failure is reported.
 */
async function run(task, control) {
  if (control) {
    if (control.disabled) return;
    control.disabled = true;
  }
  try {
    await task();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) signOut('The gateway refused this admin key.');
    else notify(e.message || String(e), 'bad');
  } finally {
    if (control) control.disabled = false;
  }
}

function currentView() {
  const name = location.hash.slice(1);
  return Object.hasOwn(VIEWS, name) ? name : 'overview';
}

let shown = null;

function show() {
  if (!session.key()) return showLogin();
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
  // Focus follows a change of view (the control that led here may now be hidden).
  if (shown !== name) $(`#${name}-title`).focus();
  shown = name;
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
    if (err instanceof ApiError && err.status === 401) return signOut('The gateway refused this admin key.');
    session.signOut();
    $('#login-error').textContent = err.message;
    return undefined;
  }
  $('#login-error').textContent = '';
  return show();
});
$('#sign-out').addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => {
  notify('');
  show();
});
setupOverview(run);
setupKeys(run);
setupAlerts(run);
setupAudit(run);
show();
