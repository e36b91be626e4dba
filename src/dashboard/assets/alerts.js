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
const KEPT = 500;
const received = []; // fired alerts this tab was handed, newest first

function ruleRow(rule = { type: TYPES[0][0], threshold: 80 }) {
  const tr = el('tr', {},
    el('td', {}, el('select', { name: 'type', 'aria-label': 'Watches' },
      TYPES.map(([value, label]) => el('option', { value, selected: value === rule.type }, label)))),
    el('td', {}, el('input', { name: 'threshold', type: 'number', min: 0, step: 1, required: true, value: rule.threshold, 'aria-label': 'Threshold' })),
    el('td', {}, el('input', { name: 'cooldownSeconds', type: 'number', min: 0, step: 1, value: rule.cooldownSeconds ?? '', placeholder: '300', 'aria-label': 'Cooldown in seconds' })),
    el('td', {}, el('button', { type: 'button', class: 'quiet', onclick: () => tr.remove() }, 'Remove')));
  return tr;
}

function showFired() {
  fill($('#fired-alerts'), table([
    ['When', (a) => time(a.timestamp)],
    ['Type', (a) => a.type],
    ['Key', (a) => `${a.keyName} (${a.keyId})`],
    ['Message', (a) => a.message],
    ['Value', (a) => number(a.currentValue), 'num'],
  ], received, { empty: 'No alert has fired since this tab opened.' }));
}

/** Reads the rules and takes the alerts fired since the last look. */
export async function showAlerts() {
  const { data } = await get('/alerts');
  received.unshift(...[...data.alerts].reverse());
  received.splice(KEPT);
  fill($('#rules-table tbody'), data.rules.map(ruleRow));
  showFired();
}

export function setupAlerts(run) {
  $('#rule-add').addEventListener('click', () => $('#rules-table tbody').append(ruleRow()));
  $('#alerts-check').addEventListener('click', () => run(showAlerts));
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
    });
  });
}
