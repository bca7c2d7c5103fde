// feedwork dashboard: live numbers, rates and depth charts from /api/stats (every 2 s).
// The page is complete without it; this only keeps it current.
"use strict";
(function () {
  const POLL_MS = 2000;
  const KEEP = 90; // points per chart (3 minutes)
  const history = new Map(); // queue -> [{at, ready, leased, totals}]
  const FIELDS = ["ready", "scheduled", "leased", "completed", "dead", "cancelled"];

  function fmt(n) {
    return Number.isInteger(n) ? n.toLocaleString("en-US") : n.toFixed(1);
  }

  function ageText(seconds) {
    if (seconds < 1) return seconds > 0 ? seconds.toFixed(2) + " s" : "0";
    if (seconds < 120) return seconds.toFixed(1) + " s";
    if (seconds < 7200) return (seconds / 60).toFixed(1) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function rate(points, key) {
    if (points.length < 2) return null;
    const a = points[Math.max(0, points.length - 6)];
    const b = points[points.length - 1];
    const dt = (b.at - a.at) / 1000;
    return dt > 0 ? Math.max(0, (b.totals[key] - a.totals[key]) / dt) : null;
  }

  function polyline(values, width, height, max) {
    if (values.length === 0) return "";
    const step = values.length > 1 ? width / (KEEP - 1) : 0;
    const offset = width - step * (values.length - 1);
    return values
      .map((v, i) => `${(offset + i * step).toFixed(1)},${(height - 1 - (v / max) * (height - 2)).toFixed(1)}`)
      .join(" ");
  }

  function drawSpark(svg, points) {
    const ready = points.map((p) => p.ready);
    const max = Math.max(1, ...ready);
    svg.querySelector("polyline").setAttribute("points", polyline(ready, 120, 24, max));
  }

  function drawChart(svg, points) {
    const box = svg.viewBox.baseVal;
    const series = [
      ["ready", "#2457c5"],
      ["leased", "#e08a00"],
    ];
    const max = Math.max(1, ...points.map((p) => Math.max(p.ready, p.leased)));
    for (const [key, _color] of series) {
      svg.querySelector(`polyline[data-series="${key}"]`).setAttribute(
        "points",
        polyline(points.map((p) => p[key]), box.width, box.height, max),
      );
    }
    return max;
  }

  function update(data) {
    const now = Date.now();
    for (const q of data.queues) {
      let chartMax = 1;
      let points = history.get(q.queue);
      if (!points) history.set(q.queue, (points = []));
      points.push({ at: now, ready: q.ready, leased: q.leased, totals: q.totals });
      if (points.length > KEEP) points.shift();
      for (const el of document.querySelectorAll(`[data-queue="${CSS.escape(q.queue)}"]`)) {
        const field = el.dataset.field;
        if (FIELDS.includes(field)) el.textContent = fmt(q[field]);
        else if (field === "oldest") el.textContent = ageText(q.oldest_ready_age);
        else if (field.startsWith("rate-")) {
          const r = rate(points, field.slice(5));
          el.textContent = r === null ? "…" : r.toFixed(1) + "/s";
        } else if (field === "spark") drawSpark(el, points);
        else if (field === "chart") chartMax = drawChart(el, points);
        else if (field === "chart-max") el.textContent = `top of the chart: ${fmt(chartMax)}`;
      }
    }
    const stamp = document.getElementById("updated");
    if (stamp) stamp.textContent = "updated " + new Date(now).toLocaleTimeString();
  }

  async function poll() {
    const queues = document.body.dataset.poll;
    if (queues === undefined) return;
    try {
      const reply = await fetch("/api/stats" + (queues ? "?queue=" + encodeURIComponent(queues) : ""), {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (reply.ok) update(await reply.json());
    } catch (error) {
      // The next poll tries again; the page stays as it was.
    }
    setTimeout(poll, POLL_MS);
  }

  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  poll();
})();
