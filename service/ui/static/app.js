// mmkd dashboard: live job pages over the job's server-sent events, and overlaid curves on compare.
// No inline scripts anywhere (the pages' Content-Security-Policy forbids them): data comes from
// data- attributes, the stream and small JSON routes. window.mmkdCharts exposes each chart
// (uPlot instance and its series) so tests read points, not pixels.
"use strict";

(function () {
  const MAX_LOG_LINES = 500;
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22"];
  window.mmkdCharts = {};

  // A chart of named series that grows as points arrive; a user's zoom survives new data.
  class LiveChart {
    constructor(element, title) {
      this.element = element;
      this.title = title;
      this.series = new Map(); // name -> Map(step -> value)
      this.plot = null;
      this.zoomed = false;
      this.points = 0;
    }

    add(name, step, value) {
      if (!this.series.has(name)) this.series.set(name, new Map());
      const points = this.series.get(name);
      if (!points.has(step)) this.points += 1;
      points.set(step, value);
    }

    data() {
      const names = [...this.series.keys()].sort();
      const steps = [...new Set(names.flatMap((name) => [...this.series.get(name).keys()]))].sort((a, b) => a - b);
      const columns = names.map((name) => steps.map((step) => {
        const value = this.series.get(name).get(step);
        return value === undefined ? null : value;
      }));
      return { names, data: [steps, ...columns] };
    }

    draw() {
      const { names, data } = this.data();
      this.element.dataset.points = String(this.points);
      if (names.length === 0) return;
      const known = this.plot ? this.plot.series.slice(1).map((s) => s.label) : [];
      if (!this.plot || known.join("\u0000") !== names.join("\u0000")) {
        this.build(names, data);
        return;
      }
      // Keep the user's zoom: setData(data, false) leaves the scales as they are.
      this.plot.setData(data, !this.zoomed);
    }

    build(names, data) {
      const keepX = this.plot && this.zoomed ? [this.plot.scales.x.min, this.plot.scales.x.max] : null;
      if (this.plot) this.plot.destroy();
      const chart = this;
      this.plot = new uPlot({
        width: Math.max(this.element.clientWidth, 320),
        height: 260,
        scales: { x: { time: false } },
        axes: [{ label: "step" }, {}],
        series: [{ label: "step" }, ...names.map((name, i) => ({
          label: name, stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: true, points: { show: false },
        }))],
        cursor: { drag: { x: true, y: false } },
        hooks: {
          setSelect: [(u) => { if (u.select.width > 0) chart.zoomed = true; }],
          ready: [(u) => u.over.addEventListener("dblclick", () => { chart.zoomed = false; })],
        },
      }, data, this.element);
      if (keepX) this.plot.setScale("x", { min: keepX[0], max: keepX[1] });
    }
  }

  function text(tag, content, className) {
    const node = document.createElement(tag);
    node.textContent = content;
    if (className) node.className = className;
    return node;
  }

  function jobPage(root) {
    const charts = {};
    for (const element of root.querySelectorAll("[data-chart]")) {
      charts[element.dataset.chart] = new LiveChart(element, element.dataset.chart);
      window.mmkdCharts[element.dataset.chart] = charts[element.dataset.chart];
    }
    const log = document.getElementById("log");
    const logCount = document.getElementById("log-count");
    const events = document.getElementById("events");
    let lines = 0;

    function showJob(job) {
      const status = document.getElementById("status");
      status.textContent = job.status;
      status.className = "status " + job.status;
      const p = job.progress || {};
      if (p.total_steps) document.getElementById("progress").value = (100 * (p.step || 0)) / p.total_steps;
      if (job.status === "succeeded") document.getElementById("progress").value = 100;
      document.getElementById("where").textContent =
        `epoch ${p.epoch || 0}/${p.total_epochs || "?"}, step ${p.step || 0}/${p.total_steps || "?"}`;
      const eta = p.eta_seconds;
      document.getElementById("eta").textContent = eta !== null && eta !== undefined && !job.finished_at
        ? `ETA ${Math.round(eta)} s` : "";
      const cancel = document.getElementById("cancel-form");
      if (cancel && ["succeeded", "failed", "cancelled", "pruned"].includes(job.status)) cancel.remove();
    }

    function showPoints(items) {
      for (const point of items) {
        for (const chart of Object.values(charts)) {
          if (point.name.startsWith(chart.element.dataset.prefix)) chart.add(point.name, point.step, point.value);
        }
      }
      for (const chart of Object.values(charts)) chart.draw();
    }

    function showEvent(event) {
      const item = document.createElement("li");
      item.className = "event " + event.kind + (event.kind === "warning" ? " highlight" : "");
      item.dataset.kind = event.kind;
      item.append(text("time", new Date(event.at).toLocaleTimeString()), text("b", " " + event.kind));
      if (event.reason) item.append(text("span", " " + event.reason));
      events.append(item);
    }

    function showLines(items) {
      const added = items.map((l) => `${new Date(l.at).toLocaleTimeString()} [${l.attempt}] ${l.level} ${l.logger}: ${l.message}`);
      const kept = (log.textContent ? log.textContent.split("\n") : []).concat(added).slice(-MAX_LOG_LINES);
      log.textContent = kept.join("\n");
      log.scrollTop = log.scrollHeight;
      lines += items.length;
      logCount.dataset.lines = String(lines);
      logCount.textContent = `(${lines} lines)`;
    }

    const stream = new EventSource(root.dataset.stream);
    stream.addEventListener("job", (e) => showJob(JSON.parse(e.data)));
    stream.addEventListener("metrics", (e) => showPoints(JSON.parse(e.data).items));
    stream.addEventListener("event", (e) => showEvent(JSON.parse(e.data)));
    stream.addEventListener("log", (e) => showLines(JSON.parse(e.data).items));
    stream.addEventListener("end", () => {
      stream.close();
      root.dataset.ended = "true";
      document.body.dispatchEvent(new Event("job-ended"));
    });
  }

  async function comparePage(root) {
    const ids = root.dataset.jobIds.split(",");
    const names = root.dataset.jobNames.split("\u001f");
    const runs = await Promise.all(ids.map((id) => fetch(`/ui/jobs/${id}/points`).then((r) => r.json())));
    const metrics = [...new Set(runs.flatMap((run) => Object.keys(run)))].sort();
    const holder = document.getElementById("compare-charts");
    // Every card first, so the grid has its final columns before a chart measures its width.
    const elements = metrics.map((metric) => {
      const card = document.createElement("div");
      card.className = "card wide";
      card.append(text("h2", metric));
      const element = document.createElement("div");
      element.className = "chart";
      element.dataset.chart = metric;
      card.append(element);
      holder.append(card);
      return element;
    });
    metrics.forEach((metric, m) => {
      const chart = new LiveChart(elements[m], metric);
      runs.forEach((run, i) => {
        const series = run[metric];
        if (!series) return;
        series.step.forEach((step, k) => chart.add(`${ids[i]} ${names[i]}`, step, series.value[k]));
      });
      chart.draw();
      window.mmkdCharts[metric] = chart;
    });
    root.dataset.ready = "true";
  }

  function jobsList() {
    const picked = new Set();
    const button = document.getElementById("compare-button");
    const field = document.getElementById("compare-ids");
    function sync() {
      field.value = [...picked].join(",");
      button.disabled = picked.size < 2 || picked.size > 6;
    }
    document.body.addEventListener("change", (e) => {
      if (!e.target.classList.contains("pick")) return;
      if (e.target.checked) picked.add(e.target.value); else picked.delete(e.target.value);
      sync();
    });
    document.body.addEventListener("htmx:afterSwap", () => {
      for (const box of document.querySelectorAll("input.pick")) box.checked = picked.has(box.value);
    });
  }

  document.addEventListener("submit", (e) => {
    const question = e.target.dataset.confirm;
    if (question && !window.confirm(question)) e.preventDefault();
  });

  document.addEventListener("DOMContentLoaded", () => {
    const job = document.getElementById("job");
    if (job) jobPage(job);
    const compare = document.getElementById("compare");
    if (compare) comparePage(compare);
    if (document.getElementById("compare-form")) jobsList();
  });
})();
