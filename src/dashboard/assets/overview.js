// The overview: the gateway's status, and charts of the analytics report.

import { get, latest } from './api.js';
import { $, el, fill, number, table } from './dom.js';
import { barChart, timeSeriesChart } from './charts.js';

const RANGES = {
  '24h': { hours: 24, granularity: 'hourly' },
  '7d': { hours: 24 * 7, granularity: 'daily' },
  '30d': { hours: 24 * 30, granularity: 'daily' },
};

function stat(label, value, id) {
  return el('div', { dataset: { stat: id } }, el('dt', {}, label), el('dd', {}, value));
}

function uptime(seconds) {
  if (typeof seconds !== 'number') return '—';
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m`;
}

export function setupOverview(run) {
  $('#overview-range').addEventListener('change', () => run(showOverview));
  $('#overview-refresh').addEventListener('click', () => run(showOverview));
}

const ticket = latest();

/** The gateway's own clock, from its `Date` header (ours may be off). */
function gatewayNow(headers) {
  const date = Date.parse(headers.get('date') || '');
  return Number.isNaN(date) ? Date.now() : date;
}

export async function showOverview() {
  const current = ticket();
  const range = RANGES[$('#overview-range').value] || RANGES['24h'];
  const status = await get('/status');
  // The range ends at the gateway's now, rounded up to its next second (the header's precision).
  const to = Math.ceil((gatewayNow(status.headers) + 1) / 1000) * 1000;
  const report = await get('/analytics', {
    granularity: range.granularity,
    topN: 10,
    from: new Date(to - range.hours * 3600e3).toISOString(),
    to: new Date(to).toISOString(),
  });
  if (!current()) return;
  const s = status.data;
  const r = report.data;
  fill($('#server-name'), s.name ? `· ${s.name}` : '');
  fill($('#overview-stats'),
    stat('Active keys', number(s.activeKeys), 'activeKeys'),
    stat('Credits held', number(s.totalCreditsAvailable), 'credits'),
    stat('Calls', number(r.summary.totalCalls), 'calls'),
    stat('Credits charged', number(r.summary.totalCredits), 'charged'),
    stat('Denied', number(r.summary.totalDenied), 'denied'),
    stat('Success rate', `${Math.round(r.summary.successRate * 1000) / 10}%`, 'successRate'),
    stat('Pending alerts', number(s.pendingAlerts), 'alerts'),
    stat('Up for', uptime(s.uptimeSeconds), 'uptime'),
    s.shadowMode ? stat('Mode', 'Shadow (nothing is charged)', 'mode') : null);
  fill($('#chart-series'), timeSeriesChart(r.timeSeries, {
    bars: ['calls', 'Calls'], line: ['credits', 'Credits'],
  }));
  const earners = [...r.tools].sort((a, b) => b.credits - a.credits || b.calls - a.calls);
  fill($('#chart-tools'), barChart(earners.slice(0, 12), {
    label: (t) => t.tool,
    value: (t) => t.credits,
    detail: (t) => `${number(t.credits)} credits, ${number(t.calls)} calls, ${number(t.denied)} denied`,
    empty: 'No tool calls in this range.',
  }));
  fill($('#top-consumers'), table([
    ['Key', (c) => [el('div', {}, c.keyName || '—'), el('code', { class: 'muted' }, c.keyId || '')]],
    ['Calls', (c) => number(c.calls), 'num'],
    ['Credits', (c) => number(c.credits), 'num'],
    ['Denied', (c) => number(c.denied), 'num'],
    ['Top tool', (c) => c.topTool],
  ], r.topConsumers, { empty: 'No calls with a key in this range.' }));
}
