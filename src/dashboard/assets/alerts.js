// The alerts view: the rules editor, and the alerts fired since the last look.

import { get, post } from './api.js';
import { $, el, fill, notify, number, table, time } from './dom.js';

const TYPES = [
  ['spending_threshold', 'Spending, % of the key\'s credits'],
  ['credits_low', 'Credits at or below'],
  ['quota_warning', 'Quota use, %'],
  ['key_expiry_soon', 'Expiry within (seconds)'],
  ['rate_limit_spike', 'Rate-limit denials in 5 minutes'],
];
function ruleRow(rule = { type: TYPES[0][0], threshold: 80 }) {
  const tr = el('tr', {},
    el('td', {}, el('select', { name: 'type', 'aria-label': 'Watches' },
      TYPES.map(([value, label]) => el('option', { value, selected: value === rule.type }, label)))),
    el('td', {}, el('input', { name: 'threshold', type: 'number', min: 0, step: 1, required: true, value: rule.threshold, 'aria-label': 'Threshold' })),
    el('td', {}, el('input', { name: 'cooldownSeconds', type: 'number', min: 0, step: 1, value: rule.cooldownSeconds ?? '', placeholder: '300', 'aria-label': 'Cooldown in seconds' })),
    el('td', {}, el('button', {
      type: 'button', class: 'quiet', onclick: () => tr.remove(),
      'aria-label': `Remove the rule ${rule.type} at ${rule.threshold}`,
    }, 'Remove')));
  return tr;
}

/** The alerts waiting for a reader, read without taking them (`peek=true`). */
async function showFired() {
  const { data } = await get('/alerts', { peek: 'true' });
  const newestFirst = [...data.alerts].reverse();
  fill($('#fired-alerts'), table([
    ['When', (a) => time(a.timestamp)],
    ['Type', (a) => a.type],
    ['Key', (a) => [el('div', {}, a.keyName), el('code', { class: 'muted' }, a.keyId)]],
    ['Message', (a) => a.message],
    ['Value', (a) => number(a.currentValue), 'num'],
  ], newestFirst, { empty: 'No alert is waiting.' }));
  return data;
}

/** Reads the rules into the editor, and the waiting alerts. */
export async function showAlerts() {
  const data = await showFired();
  fill($('#rules-table tbody'), data.rules.map(ruleRow));
}

export function setupAlerts(run) {
  $('#rule-add').addEventListener('click', () => $('#rules-table tbody').append(ruleRow()));
  // Only the alerts: the rules being edited stay as they are.
  $('#alerts-check').addEventListener('click', (e) => run(showFired, e.currentTarget));
  $('#rules-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const rules = [...$('#rules-table tbody').rows].map((tr) => {
      const rule = { type: $('[name=type]', tr).value, threshold: Number($('[name=threshold]', tr).value) };
      const cooldown = $('[name=cooldownSeconds]', tr).value;
      if (cooldown !== '') rule.cooldownSeconds = Number(cooldown);
      return rule;
    });
    run(async () => {
      const { data } = await post('/alerts', { rules });
      notify(data.message);
    }, e.submitter);
  });
}
