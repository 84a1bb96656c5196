// Charts of the app, drawn with the vendored uPlot (static/uplot, MIT). Times are UTC.
"use strict";

// ISO times from the JSON twin, or "YYYY-MM-DD HH:MM:SS" of a table (UTC too).
function utcSeconds(text) { return Date.parse(text.includes("T") ? text : text.replace(" ", "T") + "Z") / 1000; }

// A product's price history: step lines (price, sale price) and 90-day sales on a second axis.
function drawPriceHistory(element, steps) {
  const data = [
    steps.map(s => utcSeconds(s.at)),
    steps.map(s => s.price),
    steps.map(s => s.sale_price),
    steps.map(s => s.sales_90d),
  ];
  const stepped = uPlot.paths.stepped({align: 1});
  const opts = {
    width: Math.min(element.clientWidth || 900, 1100), height: 320, tzDate: ts => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    series: [
      {label: "UTC"},
      {label: "price (CNY)", stroke: "#1f5fbf", width: 2, paths: stepped, points: {show: true}},
      {label: "sale price (CNY)", stroke: "#d9822b", width: 1.5, dash: [6, 4], paths: stepped, points: {show: true}},
      {label: "90-day sales", stroke: "#7a7a7a", scale: "sales", paths: stepped, points: {show: true}},
    ],
    axes: [{}, {label: "CNY"}, {side: 1, scale: "sales", label: "90-day sales", grid: {show: false}}],
  };
  return new uPlot(opts, data, element);
}

// Crawls over time: paid calls and products seen per crawl.
function drawCrawls(element, rows) {
  const sorted = rows.filter(r => r.started_at).sort((a, b) => a.started_at < b.started_at ? -1 : 1);
  const data = [
    sorted.map(r => utcSeconds(r.started_at)),
    sorted.map(r => r.calls),
    sorted.map(r => r.products_seen),
  ];
  const opts = {
    width: Math.min(element.clientWidth || 900, 1100), height: 260, tzDate: ts => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    series: [
      {label: "UTC"},
      {label: "paid calls", stroke: "#c0392b", width: 2, points: {show: true}},
      {label: "products seen", stroke: "#1f5fbf", width: 2, scale: "products", points: {show: true}},
    ],
    axes: [{}, {label: "calls"}, {side: 1, scale: "products", label: "products", grid: {show: false}}],
  };
  return new uPlot(opts, data, element);
}
