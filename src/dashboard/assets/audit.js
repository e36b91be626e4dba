// The audit log: filters, pages by offset (newest first), and a CSV export that is fetched
// with the admin key and saved from memory (a plain link could not carry the key).

import { get, latest } from './api.js';
import { $, el, fill, fromLocalInput, notify, number, table, time } from './dom.js';

const PAGE = 50;
let offset = 0;
const ticket = latest();

function filters() {
  const form = $('#audit-form');
  return {
    types: form.types.value.trim(),
    actor: form.actor.value.trim(),
    since: fromLocalInput(form.since.value),
    until: fromLocalInput(form.until.value),
  };
}

export async function showAudit() {
  const current = ticket();
  const { data } = await get('/audit', { ...filters(), limit: PAGE, offset });
  if (!current()) return;
  fill($('#audit-count'), data.total
    ? `Events ${number(offset + 1)}–${number(offset + data.count)} of ${number(data.total)}`
    : 'No events match.');
  fill($('#audit-events'), table([
    ['When', (e) => time(e.timestamp)],
    ['Type', (e) => el('code', {}, e.type)],
    ['Actor', (e) => e.actor],
    ['Message', (e) => e.message],
  ], data.events, { empty: 'No events match.' }));
  $('#audit-prev').disabled = offset === 0;
  $('#audit-next').disabled = offset + data.count >= data.total;
}

async function exportCsv() {
  const { data } = await get('/audit/export', { format: 'csv' });
  const url = URL.createObjectURL(new Blob([data], { type: 'text/csv' }));
  const link = el('a', { href: url, download: `paygate-audit-${new Date().toISOString().slice(0, 10)}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  notify('The audit log was exported.');
}

export function setupAudit(run) {
  $('#audit-form').addEventListener('submit', (e) => {
    e.preventDefault();
    offset = 0;
    run(showAudit);
  });
  $('#audit-prev').addEventListener('click', () => {
    offset = Math.max(0, offset - PAGE);
    run(showAudit);
  });
  $('#audit-next').addEventListener('click', () => {
    offset += PAGE;
    run(showAudit);
  });
  $('#audit-export').addEventListener('click', (e) => run(exportCsv, e.currentTarget));
}
