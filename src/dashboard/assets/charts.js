// Charts drawn as SVG from the analytics JSON: no library, nothing fetched. Each data point is
// an element with a tooltip (`<title>`), so the figures stay readable without the picture.

import { el, svg, number, time } from './dom.js';

const WIDTH = 760;
const HEIGHT = 240;
const PAD = { top: 12, right: 16, bottom: 28, left: 52 };

/** A round upper bound for an axis whose largest value is `max`. */
function niceMax(max) {
  if (max <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (max <= m * step) return m * step;
  return 10 * step;
}

/** A short local time for an axis. */
function tick(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

/**
 * The report's `timeSeries` on one axis: `bars` (a bucket field) as columns and `line` as a
 * line with a dot per bucket. Every bucket of each is a `.point` with its value in
 * `data-value`, and a tooltip.
 */
export function timeSeriesChart(buckets, { bars: [barField, barLabel], line: [lineField, lineLabel] }) {
  if (buckets.length === 0) return el('p', { class: 'muted' }, 'No buckets in this range.');
  const value = (b, field) => b[field] || 0;
  const top = niceMax(Math.max(...buckets.flatMap((b) => [value(b, barField), value(b, lineField)])));
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const slot = innerW / buckets.length;
  const x = (i) => PAD.left + slot * (i + 0.5);
  const y = (v) => PAD.top + innerH - (v / top) * innerH;
  const sum = (field) => number(buckets.reduce((s, b) => s + value(b, field), 0));
  const tip = (b, field, label) => svg('title', {}, `${time(b.start)}: ${number(value(b, field))} ${label.toLowerCase()}`);

  const grid = [0, 0.5, 1].map((f) => [
    svg('line', { class: 'axis', x1: PAD.left, x2: WIDTH - PAD.right, y1: y(top * f), y2: y(top * f) }),
    svg('text', { x: PAD.left - 6, y: y(top * f) + 4, 'text-anchor': 'end' }, number(top * f)),
  ]);
  const ticks = [...new Set([0, Math.floor((buckets.length - 1) / 2), buckets.length - 1])].map((i) =>
    svg('text', {
      x: i === 0 ? PAD.left : i === buckets.length - 1 ? WIDTH - PAD.right : x(i),
      y: HEIGHT - 8,
      'text-anchor': i === 0 ? 'start' : i === buckets.length - 1 ? 'end' : 'middle',
    }, tick(buckets[i].start)));
  const columns = svg('g', { class: 'series s1', dataset: { field: barField } },
    buckets.map((b, i) => svg('rect', {
      class: 'point column s1', x: (x(i) - slot * 0.35).toFixed(1), width: (slot * 0.7).toFixed(1),
      y: y(value(b, barField)).toFixed(1), height: (PAD.top + innerH - y(value(b, barField))).toFixed(1),
      dataset: { value: value(b, barField) },
    }, tip(b, barField, barLabel))));
  const points = buckets.map((b, i) => `${x(i).toFixed(1)},${y(value(b, lineField)).toFixed(1)}`).join(' ');
  const line = svg('g', { class: 'series s2', dataset: { field: lineField } },
    svg('polyline', { class: 'line s2', points }),
    buckets.map((b, i) => svg('circle', {
      class: 'point s2', cx: x(i).toFixed(1), cy: y(value(b, lineField)).toFixed(1), r: 3,
      dataset: { value: value(b, lineField) },
    }, tip(b, lineField, lineLabel))));
  return el('div', {},
    svg('svg', {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img',
      'aria-label': `${buckets.length} buckets: ${barLabel} ${sum(barField)}, ${lineLabel} ${sum(lineField)}`,
    }, grid, ticks, columns, line),
    el('div', { class: 'legend' }, el('span', { class: 's1' }, barLabel), el('span', { class: 's2' }, lineLabel)));
}

/** Horizontal bars, one per row: `label(row)`, `value(row)` and a `detail(row)` tooltip. */
export function barChart(rows, { label, value, detail, empty = 'Nothing yet.' }) {
  if (rows.length === 0) return el('p', { class: 'muted' }, empty);
  const width = 520;
  const rowH = 26;
  const labelW = 140;
  const height = rows.length * rowH + 4;
  const top = niceMax(Math.max(...rows.map(value)));
  const barW = (v) => Math.max(1, ((width - labelW - 60) * v) / top);
  const described = rows.map((row) => `${label(row)}: ${detail(row)}`).join('; ');
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': described },
    rows.map((row, i) => svg('g', { class: 'bar-row', transform: `translate(0 ${i * rowH})` },
      svg('text', { class: 'bar-label', x: labelW - 8, y: 17, 'text-anchor': 'end' }, truncate(label(row), 20)),
      svg('rect', { class: 'bar-fill', x: labelW, y: 4, height: rowH - 8, width: barW(value(row)).toFixed(1), dataset: { value: value(row) } },
        svg('title', {}, `${label(row)}: ${detail(row)}`)),
      svg('text', { x: labelW + barW(value(row)) + 6, y: 17 }, number(value(row))))));
}

function truncate(text, n) {
  const s = String(text);
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}
