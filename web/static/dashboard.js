// Taxi Driver dashboard: renders each page from the transcoded JSON API (the same routes
// curl users call), authenticated by the session cookie. State-changing calls carry the
// session's CSRF token. Text from the API is only ever inserted as text (never as HTML).
"use strict";
(function () {
  const app = document.getElementById("app");
  if (!app) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const can = {
    train: app.dataset.canTrain === "true",
    annotate: app.dataset.canAnnotate === "true",
    delete: app.dataset.canDelete === "true",
  };
  const TERMINAL = ["RUN_STATUS_COMPLETED", "RUN_STATUS_FAILED", "RUN_STATUS_CANCELLED", "RUN_STATUS_INTERRUPTED"];
  const STATUSES = ["queued", "running", "completed", "failed", "cancelled", "interrupted"];
  const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

  // ---- helpers -------------------------------------------------------------------------
  async function api(method, path, body) {
    const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    if (method !== "GET") options.headers["X-CSRF-Token"] = csrf;
    const reply = await fetch(path, options);
    const data = await reply.json().catch(() => ({}));
    if (!reply.ok) {
      const error = new Error(describe(data) || reply.statusText);
      error.status = reply.status;
      error.body = data;
      throw error;
    }
    return data;
  }

  function describe(status) {
    if (!status || !status.message) return "";
    const fields = [];
    for (const detail of status.details || []) {
      for (const v of detail.fieldViolations || []) fields.push(`${v.field}: ${v.description}`);
    }
    return fields.length ? fields.join("; ") : status.message;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function errorBox(error) {
    return el("p", { class: "error", role: "alert" }, error.message || String(error));
  }

  function short(status) {
    return String(status || "").replace(/^RUN_STATUS_/, "").toLowerCase();
  }

  function fmt(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4);
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function quote(text) {
    return '"' + String(text).replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';
  }

  function keyValueTable(object, className) {
    const rows = Object.keys(object || {})
      .sort()
      .map((key) => el("tr", {}, el("th", {}, key), el("td", {}, fmt(object[key]))));
    return el("table", { class: className || "kv" }, el("tbody", {}, rows));
  }

  function chartWidth(container) {
    return Math.max(320, Math.min(1400, (container.clientWidth || app.clientWidth || 900) - 8));
  }

  // One uPlot line chart: data = [xs, ...ys]; series = [{label, stroke, width, dash}].
  function lineChart(container, title, data, series, options) {
    const plot = new uPlot(
      {
        title,
        width: chartWidth(container),
        height: (options && options.height) || 220,
        scales: { x: { time: false } },
        axes: [{ label: (options && options.xLabel) || "episode" }, {}],
        series: [{ label: (options && options.xLabel) || "episode" }].concat(
          series.map((s) => ({ label: s.label, stroke: s.stroke, width: s.width || 1.5, dash: s.dash, spanGaps: true, points: { show: false } })),
        ),
        bands: (options && options.bands) || [],
      },
      data,
      container,
    );
    return plot;
  }

  // ---- curves: server buckets (min/max/mean per pixel), continued live from WatchRun ------
  const CURVES = [
    ["rewards", "Reward"],
    ["steps", "Steps"],
    ["epsilons", "ε (exploration)"],
    ["td_errors", "TD error"],
    ["successes", "Success"],
  ];

  class LiveSeries {
    // Buckets as the server made them; new episodes go into the last bucket until it holds
    // `bucket` episodes; past 2 × width buckets, pairs merge and the bucket size doubles.
    constructor(payload, width) {
      this.width = width;
      this.bucket = payload.bucket || 1;
      this.window = payload.window || 1;
      this.x = payload.x.slice();
      this.min = payload.min.slice();
      this.max = payload.max.slice();
      this.mean = payload.mean.slice();
      this.ma = payload.moving_average.slice();
      this.counts = this.x.map((x, i) => (i + 1 < this.x.length ? this.x[i + 1] - x : 0));
      this.episodes = payload.episodes || 0;
      if (this.counts.length) this.counts[this.counts.length - 1] = this.episodes - this.x[this.x.length - 1];
      this.tail = (payload.tail || []).slice(-this.window);
      this.tailSum = this.tail.reduce((a, b) => a + b, 0);
    }

    push(value) {
      this.tail.push(value);
      this.tailSum += value;
      if (this.tail.length > this.window) this.tailSum -= this.tail.shift();
      const average = this.tailSum / this.tail.length;
      const last = this.x.length - 1;
      if (last >= 0 && this.counts[last] < this.bucket) {
        const n = this.counts[last];
        this.min[last] = Math.min(this.min[last], value);
        this.max[last] = Math.max(this.max[last], value);
        this.mean[last] = (this.mean[last] * n + value) / (n + 1);
        this.ma[last] = (this.ma[last] * n + average) / (n + 1);
        this.counts[last] = n + 1;
      } else {
        this.x.push(this.episodes);
        this.min.push(value);
        this.max.push(value);
        this.mean.push(value);
        this.ma.push(average);
        this.counts.push(1);
      }
      this.episodes += 1;
      if (this.x.length > 2 * this.width) this.halve();
    }

    halve() {
      const merged = { x: [], min: [], max: [], mean: [], ma: [], counts: [] };
      for (let i = 0; i < this.x.length; i += 2) {
        const j = Math.min(i + 1, this.x.length - 1);
        const n = this.counts[i] + (j !== i ? this.counts[j] : 0);
        merged.x.push(this.x[i]);
        merged.min.push(Math.min(this.min[i], this.min[j]));
        merged.max.push(Math.max(this.max[i], this.max[j]));
        merged.mean.push(j !== i ? (this.mean[i] * this.counts[i] + this.mean[j] * this.counts[j]) / n : this.mean[i]);
        merged.ma.push(j !== i ? (this.ma[i] * this.counts[i] + this.ma[j] * this.counts[j]) / n : this.ma[i]);
        merged.counts.push(n);
      }
      Object.assign(this, merged);
      this.bucket *= 2;
    }

    data() {
      return [this.x, this.min, this.max, this.ma];
    }
  }

  function curveCharts(container, payload, width) {
    const charts = {};
    for (const [name, label] of CURVES) {
      const series = payload.series[name];
      const live = new LiveSeries(
        Object.assign({}, series, { bucket: payload.bucket, window: payload.window, episodes: payload.episodes }),
        width,
      );
      const box = el("div", { class: "chart", dataset: { curve: name } });
      container.append(box);
      const plot = lineChart(
        box,
        label,
        live.data(),
        [
          { label: "min", stroke: "#94a3b8", width: 1 },
          { label: "max", stroke: "#cbd5e1", width: 1 },
          { label: `moving average (${payload.window})`, stroke: "#2563eb", width: 2 },
        ],
        { bands: [{ series: [2, 1], fill: "rgba(148,163,184,0.25)" }] },
      );
      charts[name] = { live, plot, box };
      box.dataset.points = String(live.x.length);
    }
    return charts;
  }

  // ---- pages ---------------------------------------------------------------------------
  async function runsPage() {
    const state = { filter: "", orderBy: "create_time desc", tokens: [""], page: 0, algorithm: "", status: "", selected: new Set() };
    const facets = el("div", { class: "facets" });
    const filterInput = el("input", { type: "search", name: "filter", placeholder: 'AIP-160 filter, e.g. params.alpha >= 0.1 AND test_metrics.success_rate > 0.9', size: 70 });
    const form = el(
      "form",
      { class: "filter", onsubmit: (event) => { event.preventDefault(); state.filter = filterInput.value.trim(); state.tokens = [""]; state.page = 0; load(); } },
      filterInput,
      el("button", { type: "submit" }, "Filter"),
    );
    const summary = el("p", { class: "summary" });
    const table = el("table", { class: "runs" });
    const pager = el("div", { class: "pager" });
    const compareButton = el("button", { type: "button", disabled: true, onclick: () => { location.href = "/compare?ids=" + [...state.selected].join(","); } }, "Compare selected");
    app.append(el("h1", {}, "Runs"), facets, form, el("div", { class: "toolbar" }, summary, compareButton), table, pager);

    function combined(extra) {
      const clauses = [];
      if (state.filter) clauses.push(`(${state.filter})`);
      if (state.algorithm) clauses.push(`algorithm = ${quote(state.algorithm)}`);
      if (state.status) clauses.push(`status = ${quote(state.status)}`);
      if (extra) clauses.push(extra);
      return clauses.join(" AND ");
    }

    async function count(extra) {
      const reply = await api("GET", "/database/runs?" + new URLSearchParams({ page_size: "1", filter: combined(extra) }));
      return Number(reply.totalSize || 0);
    }

    async function drawFacets() {
      facets.replaceChildren();
      let algorithms = [];
      try {
        algorithms = (await api("GET", "/algorithms")).algorithms.map((a) => a.name);
      } catch (error) {
        algorithms = [];
      }
      const groups = [
        ["algorithm", algorithms],
        ["status", STATUSES],
      ];
      for (const [facet, values] of groups) {
        const group = el("div", { class: "facet", dataset: { facet } }, el("strong", {}, facet + ": "));
        const all = el("button", { type: "button", class: state[facet] ? "" : "on", onclick: () => { state[facet] = ""; state.tokens = [""]; state.page = 0; load(); } }, "all");
        group.append(all);
        const saved = state[facet];
        for (const value of values) {
          state[facet] = "";
          const button = el("button", { type: "button", class: saved === value ? "on" : "", dataset: { value }, onclick: () => { state[facet] = value; state.tokens = [""]; state.page = 0; load(); } }, value);
          group.append(button);
          count(`${facet} = ${quote(value)}`).then((n) => button.append(el("span", { class: "count" }, ` ${n}`)), () => {});
        }
        state[facet] = saved;
        facets.append(group);
      }
    }

    const columns = [
      ["", null],
      ["run", null],
      ["algorithm", "algorithm"],
      ["status", "status"],
      ["mode", null],
      ["episodes", "episodes_recorded"],
      ["success rate", "test_metrics.success_rate"],
      ["avg steps", "test_metrics.avg_steps"],
      ["created", "create_time"],
      ["creator", "creator"],
    ];

    async function load() {
      drawFacets();
      table.replaceChildren();
      pager.replaceChildren();
      const params = { page_size: "25", filter: combined(), order_by: state.orderBy };
      if (state.tokens[state.page]) params.page_token = state.tokens[state.page];
      let reply;
      try {
        reply = await api("GET", "/database/runs?" + new URLSearchParams(params));
      } catch (error) {
        table.append(el("caption", {}, errorBox(error)));
        summary.textContent = "";
        return;
      }
      summary.textContent = `${reply.totalSize} runs`;
      summary.dataset.total = String(reply.totalSize);
      const head = el(
        "tr",
        {},
        columns.map(([label, field]) => {
          if (!field) return el("th", {}, label);
          const [current, direction] = state.orderBy.split(" ");
          const arrow = current === field ? (direction === "desc" ? " ▼" : " ▲") : "";
          return el("th", { class: "sortable", dataset: { sort: field }, onclick: () => {
            state.orderBy = field + (current === field && direction === "desc" ? " asc" : " desc");
            state.tokens = [""]; state.page = 0; load();
          } }, label + arrow);
        }),
      );
      const rows = reply.runs.map((run) => {
        const box = el("input", { type: "checkbox", name: "select", value: run.runId, checked: state.selected.has(run.runId), onchange: (event) => {
          if (event.target.checked) state.selected.add(run.runId); else state.selected.delete(run.runId);
          compareButton.disabled = state.selected.size < 2;
        } });
        const test = run.testMetrics || {};
        return el(
          "tr",
          { dataset: { runId: run.runId } },
          el("td", {}, box),
          el("td", {}, el("a", { href: `/runs/${run.runId}` }, run.runId.slice(0, 8))),
          el("td", {}, run.algorithm),
          el("td", {}, el("span", { class: "status " + short(run.status) }, short(run.status))),
          el("td", {}, run.mode),
          el("td", {}, `${run.episodesRecorded} / ${run.episodesPlanned}`),
          el("td", {}, fmt(test.success_rate)),
          el("td", {}, fmt(test.avg_steps)),
          el("td", {}, (run.createTime || "").replace("T", " ").slice(0, 19)),
          // Runs recorded before owners were (or with authentication off) have no creator.
          el("td", { class: "creator" }, run.creator || "(unknown)"),
        );
      });
      table.append(el("thead", {}, head), el("tbody", {}, rows));
      if (state.page > 0) pager.append(el("button", { type: "button", onclick: () => { state.page -= 1; load(); } }, "← Previous"));
      if (reply.nextPageToken) {
        pager.append(el("button", { type: "button", class: "next", onclick: () => {
          state.tokens[state.page + 1] = reply.nextPageToken; state.page += 1; load();
        } }, "Next →"));
      }
    }
    load();
  }

  async function runPage(runId) {
    let run;
    try {
      run = (await api("GET", `/database/runs/${encodeURIComponent(runId)}`)).run;
    } catch (error) {
      app.append(el("h1", {}, "Run"), errorBox(error));
      return;
    }
    const status = el("span", { class: "status " + short(run.status), id: "run-status" }, short(run.status));
    const progress = el("span", { id: "run-progress" }, `${run.episodesRecorded} / ${run.episodesPlanned} episodes`);
    const actions = el("div", { class: "actions" });
    const message = el("p", { class: "message", role: "status" });
    app.append(
      el("h1", {}, `${run.algorithm} `, el("small", {}, run.runId)),
      el("p", {}, status, " · ", run.mode, " · ", run.envId, " · ", progress, run.stopReason ? ` · ${run.stopReason}` : "",
        ` · by ${run.creator || "(unknown)"}`),
      actions,
      message,
    );
    if (run.errorMessage) app.append(el("p", { class: "error" }, run.errorMessage));

    function action(label, className, handler) {
      actions.append(el("button", { type: "button", class: className, onclick: async () => {
        try { await handler(); } catch (error) { message.replaceChildren(errorBox(error)); }
      } }, label));
    }
    if (can.train && !TERMINAL.includes(run.status)) {
      action("Cancel", "cancel", async () => {
        await api("POST", `/database/runs/${runId}:cancel`, {});
        message.textContent = "Cancel requested.";
      });
    }
    if (can.train && ["RUN_STATUS_INTERRUPTED", "RUN_STATUS_FAILED"].includes(run.status)) {
      action("Resume", "resume", async () => {
        await api("POST", `/database/runs/${runId}:resume`, {});
        location.reload();
      });
    }
    if (can.delete) {
      action("Delete", "delete danger", async () => {
        if (!actions.querySelector(".confirm-delete")) {
          actions.append(el("button", { type: "button", class: "confirm-delete danger", onclick: async () => {
            try {
              await api("DELETE", `/database/runs/${runId}`);
              location.href = "/runs";
            } catch (error) {
              message.replaceChildren(errorBox(error));
            }
          } }, "Really delete this run"));
        }
      });
    }

    // Curves: downsampled on the server, then continued live from WatchRun (SSE).
    const curvesBox = el("section", { class: "curves", id: "curves" });
    app.append(el("h2", {}, "Curves"), curvesBox);
    const width = Math.min(2000, chartWidth(curvesBox));
    let payload;
    try {
      payload = (await api("GET", `/dashboard/curves?run_id=${encodeURIComponent(runId)}&width=${width}`)).runs[runId];
    } catch (error) {
      curvesBox.append(errorBox(error));
    }
    if (payload) {
      curvesBox.dataset.episodes = String(payload.episodes);
      const charts = curveCharts(curvesBox, payload, width);
      if (!TERMINAL.includes(run.status)) {
        const from = payload.first_episode + payload.episodes;
        const source = new EventSource(`/database/runs/${encodeURIComponent(runId)}:watch?from_episode=${from}`);
        let pending = false;
        const redraw = () => {
          pending = false;
          for (const { live, plot, box } of Object.values(charts)) {
            plot.setData(live.data());
            box.dataset.points = String(live.x.length);
          }
          curvesBox.dataset.episodes = String(charts.rewards.live.episodes);
          progress.textContent = `${charts.rewards.live.episodes} / ${run.episodesPlanned} episodes`;
        };
        source.onmessage = (event) => {
          const data = JSON.parse(event.data).event;
          if (data.episodes) {
            for (const [name] of CURVES) {
              for (const value of data.episodes[name.replace(/_(\w)/g, (m, c) => c.toUpperCase())] || []) {
                charts[name].live.push(typeof value === "boolean" ? (value ? 1 : 0) : Number(value));
              }
            }
            if (!pending) {
              pending = true;
              requestAnimationFrame(redraw);
            }
          }
          if (data.statusChange) {
            status.textContent = short(data.statusChange.status);
            status.className = "status " + short(data.statusChange.status);
            if (data.statusChange.episodesPlanned) run.episodesPlanned = data.statusChange.episodesPlanned;
            if (TERMINAL.includes(data.statusChange.status)) {
              source.close();
              redraw();
              app.dataset.finished = "true";
            }
          }
        };
        source.addEventListener("end", () => source.close());
        source.addEventListener("error", () => {});
      } else {
        app.dataset.finished = "true";
      }
    }

    // Parameters and every metric group.
    const groups = [
      ["Parameters", run.params],
      ["Training", run.trainingMetrics],
      ["Test (greedy)", run.testMetrics],
      ["System", run.systemMetrics],
      ["Learning stability", run.learningStability],
      ["Against brute force", run.bruteForceMetrics],
      ["Improvement", run.improvementMetrics],
    ];
    const metrics = el("section", { class: "metrics" });
    for (const [title, group] of groups) {
      if (group && Object.keys(group).length) metrics.append(el("div", { class: "group" }, el("h3", {}, title), keyValueTable(group)));
    }
    app.append(el("h2", {}, "Parameters and metrics"), metrics);

    // Plots and the model. The registry renders a completed run's plots on their first listing,
    // so they are listed (not taken from run.plots, empty until then).
    const plots = el("section", { class: "plots" });
    const plotsTitle = el("h2", {}, "Plots");
    app.append(plotsTitle, plots);
    try {
      const listed = (await api("GET", `/database/runs/${encodeURIComponent(runId)}/artifacts`)).artifacts || [];
      for (const plot of listed.filter((artifact) => artifact.kind === "ARTIFACT_KIND_PLOT")) {
        plots.append(el("figure", {}, el("img", { src: `/database/artifacts/${encodeURIComponent(plot.artifactId)}:download`, alt: plot.name, loading: "lazy" }), el("figcaption", {}, plot.name)));
      }
    } catch (error) {
      plots.append(errorBox(error));
    }
    if (!plots.childElementCount) {
      plotsTitle.remove();
      plots.remove();
    }
    try {
      const models = (await api("GET", `/database/runs/${encodeURIComponent(runId)}/models`)).models;
      if (models.length) {
        app.append(
          el("h2", {}, "Model"),
          el("ul", { class: "models" }, models.map((model) => el("li", {}, el("a", { class: "download", href: `/database/models/${encodeURIComponent(model.modelId)}:export`, download: model.modelName }, `Download ${model.modelName}`), ` (${model.modelSize} bytes)`))),
        );
      }
    } catch (error) {
      app.append(errorBox(error));
    }

    // Annotations.
    const list = el("ul", { class: "annotations" });
    app.append(el("h2", {}, "Annotations"), list);
    async function loadAnnotations() {
      list.replaceChildren();
      const reply = await api("GET", `/database/runs/${encodeURIComponent(runId)}/annotations`);
      for (const note of reply.annotations) {
        list.append(el("li", {}, el("span", { class: "when" }, (note.createTime || "").slice(0, 19).replace("T", " ")), " ", note.annotation, " ", note.tags.map((tag) => el("span", { class: "tag" }, tag))));
      }
      if (!reply.annotations.length) list.append(el("li", { class: "empty" }, "No annotations yet."));
    }
    loadAnnotations().catch((error) => list.append(errorBox(error)));
    if (can.annotate) {
      const text = el("textarea", { name: "annotation", rows: 2, cols: 60, required: true, maxlength: 10000 });
      const tags = el("input", { name: "tags", placeholder: "tags, comma separated" });
      const note = el("p", { class: "message" });
      app.append(el("form", { class: "annotate", onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api("POST", `/database/runs/${encodeURIComponent(runId)}/annotations`, {
            annotation: text.value,
            tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean),
          });
          text.value = "";
          tags.value = "";
          note.textContent = "";
          await loadAnnotations();
        } catch (error) {
          note.replaceChildren(errorBox(error));
        }
      } }, text, tags, el("button", { type: "submit" }, "Add annotation"), note));
    }
  }

  async function comparePage() {
    const ids = (new URLSearchParams(location.search).get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
    const input = el("input", { name: "ids", size: 90, value: ids.join(","), placeholder: "run ids, comma separated (or pick them on the Runs page)" });
    app.append(el("h1", {}, "Compare runs"), el("form", { class: "filter", method: "get", action: "/compare" }, input, el("button", { type: "submit" }, "Compare")));
    if (ids.length < 2) {
      app.append(el("p", {}, "Pick two to twenty runs."));
      return;
    }
    let reply;
    try {
      reply = await api("POST", "/database/runs/compare", { run_ids: ids });
    } catch (error) {
      app.append(errorBox(error));
      return;
    }
    const label = (run) => `${run.algorithm} ${run.runId.slice(0, 8)}`;
    const labels = reply.runs.map(label);
    // Curves overlaid on shared axes (moving averages, server-downsampled, joined on episode).
    const overlay = el("section", { class: "curves", id: "overlay" });
    app.append(el("h2", {}, "Curves"), overlay);
    const width = Math.min(2000, chartWidth(overlay));
    try {
      const query = ids.map((id) => "run_id=" + encodeURIComponent(id)).join("&");
      const curves = (await api("GET", `/dashboard/curves?${query}&width=${width}`)).runs;
      for (const [name, title] of [["rewards", "Reward"], ["steps", "Steps"], ["successes", "Success"], ["td_errors", "TD error"]]) {
        const tables = ids.map((id) => [curves[id].series[name].x, curves[id].series[name].moving_average]);
        const joined = uPlot.join(tables);
        const box = el("div", { class: "chart", dataset: { curve: name, series: String(ids.length) } });
        overlay.append(box);
        lineChart(box, `${title} (moving average)`, joined, ids.map((id, i) => ({ label: labels[i], stroke: COLOURS[i % COLOURS.length], width: 2 })));
      }
    } catch (error) {
      overlay.append(errorBox(error));
    }
    const head = el("tr", {}, el("th", {}, ""), labels.map((l, i) => el("th", {}, el("a", { href: `/runs/${reply.runs[i].runId}` }, l))));
    const params = reply.paramDifferences.map((d) => el("tr", {}, el("th", {}, d.key), d.values.map((v) => el("td", {}, fmt(v)))));
    app.append(el("h2", {}, "Parameters that differ"), el("table", { class: "compare param-diff" }, el("thead", {}, head.cloneNode(true)), el("tbody", {}, params.length ? params : [el("tr", {}, el("td", {}, "none"))])));
    const metrics = reply.metrics.map((m) => el("tr", {}, el("th", {}, m.metric), m.values.map((v, i) => el("td", { class: reply.runs[i].runId === m.bestRunId ? "best" : "" }, fmt(v)))));
    app.append(el("h2", {}, "Metrics side by side"), el("table", { class: "compare side-by-side" }, el("thead", {}, head), el("tbody", {}, metrics)));
  }

  async function statisticsPage() {
    app.append(el("h1", {}, "Statistics"));
    let stats;
    try {
      stats = await api("GET", "/database/statistics");
    } catch (error) {
      app.append(errorBox(error));
      return;
    }
    app.append(el("p", {}, `${stats.totalRuns} runs, ${stats.completedRuns} completed.`));
    const algorithms = stats.algorithms;
    const xs = algorithms.map((_, i) => i);
    const names = algorithms.map((a) => a.algorithm);
    const bars = uPlot.paths.bars({ size: [0.6, 60] });
    const byAlgorithm = el("section", { class: "curves", id: "per-algorithm" });
    app.append(el("h2", {}, "Per algorithm"), byAlgorithm);
    for (const [field, title] of [["avgSuccessRate", "Average success rate"], ["avgSteps", "Average steps"], ["totalRuns", "Runs"]]) {
      const box = el("div", { class: "chart", dataset: { chart: field } });
      byAlgorithm.append(box);
      new uPlot(
        {
          title,
          width: chartWidth(byAlgorithm),
          height: 200,
          scales: {
            x: { time: false, range: [-0.5, Math.max(0.5, algorithms.length - 0.5)] },
            y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] }, // bars start at zero
          },
          axes: [{ values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? names[t] || "" : "")), splits: () => xs }, {}],
          series: [{ label: "algorithm", value: (u, v) => (v === null ? "" : names[v]) }, { label: title, fill: "rgba(37,99,235,0.5)", stroke: "#2563eb", paths: bars, points: { show: false } }],
        },
        [xs, algorithms.map((a) => Number(a[field] || 0))],
        box,
      );
    }
    const table = el("table", { class: "stats" }, el("thead", {}, el("tr", {}, ["algorithm", "runs", "completed", "avg success", "avg steps", "avg reward", "best success", "best avg steps", "avg time (s)"].map((h) => el("th", {}, h)))),
      el("tbody", {}, algorithms.map((a) => el("tr", {}, [a.algorithm, a.totalRuns, a.completedRuns, fmt(a.avgSuccessRate), fmt(a.avgSteps), fmt(a.avgReward), fmt(a.bestSuccessRate), fmt(a.bestAvgSteps), fmt(a.avgExecutionTime)].map((v) => el("td", {}, v))))));
    app.append(table);
    const daily = stats.daily;
    const perDay = el("section", { class: "curves", id: "per-day" });
    app.append(el("h2", {}, "Per day"), perDay);
    if (daily.length) {
      const days = daily.map((d) => Date.parse(d.day) / 1000);
      for (const [field, title] of [["runs", "Runs per day"], ["avgSuccessRate", "Average success rate per day"]]) {
        const box = el("div", { class: "chart", dataset: { chart: field } });
        perDay.append(box);
        new uPlot(
          {
            title,
            width: chartWidth(perDay),
            height: 200,
            // At least a week on the axis, so that a single day is not drawn against years.
            scales: {
              x: { time: true, auto: false, range: [Math.min(days[0], days[days.length - 1] - 6 * 86400) - 43200, days[days.length - 1] + 43200] },
              y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
            },
            series: [{}, { label: title, stroke: "#16a34a", width: 2, fill: "rgba(22,163,74,0.15)", points: { show: true, size: 6 } }],
          },
          [days, daily.map((d) => Number(d[field] || 0))],
          box,
        );
      }
    }
  }

  async function trainPage() {
    app.append(el("h1", {}, "Train"));
    if (!can.train) {
      app.append(el("p", {}, "Your key may read runs but not start them (trainer role needed)."));
      return;
    }
    let catalogue;
    try {
      catalogue = await api("GET", "/algorithms");
    } catch (error) {
      app.append(errorBox(error));
      return;
    }
    const specs = Object.fromEntries(catalogue.parameters.map((p) => [p.name, p]));
    const algorithm = el("select", { name: "algorithm" }, catalogue.algorithms.map((a) => el("option", { value: a.name }, a.name)));
    const mode = el("select", { name: "mode" }, ["optimized", "user", "time_budget"].map((m) => el("option", { value: m }, m)));
    const budget = el("input", { name: "time_budget", type: "number", min: 1, step: "any", placeholder: "seconds" });
    const testEpisodes = el("input", { name: "test_episodes", type: "number", min: 1, max: 100000, value: 100 });
    const seed = el("input", { name: "seed", type: "number", min: 0, step: 1, placeholder: "random" });
    const fields = el("fieldset", { class: "params" }, el("legend", {}, "Hyper-parameters"));
    const description = el("p", { class: "hint" });
    const message = el("p", { class: "message", role: "status" });
    const inputs = {};

    function drawParameters() {
      const info = catalogue.algorithms.find((a) => a.name === algorithm.value);
      description.textContent = info ? `${info.description} ${info.presetNote || ""}` : "";
      fields.replaceChildren(el("legend", {}, "Hyper-parameters"));
      for (const name of (info && info.parameterNames) || []) {
        const spec = specs[name] || { type: "double" };
        const preset = info.optimizedPreset ? info.optimizedPreset[name.replace(/_(\w)/g, (m, c) => c.toUpperCase())] : undefined;
        const range = `${spec.minimumExclusive ? "(" : "["}${spec.minimum}, ${spec.maximum}${spec.maximumExclusive ? ")" : "]"}`;
        const input = el("input", {
          name,
          type: "number",
          step: spec.type === "int32" ? 1 : "any",
          min: spec.minimum,
          max: spec.maximum,
          placeholder: mode.value === "optimized" && preset !== undefined ? `preset ${preset}` : range,
          required: mode.value === "user",
          title: spec.description || name,
        });
        inputs[name] = input;
        fields.append(el("label", {}, `${name} `, el("span", { class: "range" }, range), input));
      }
    }
    algorithm.addEventListener("change", drawParameters);
    mode.addEventListener("change", drawParameters);
    const form = el(
      "form",
      { class: "train", onsubmit: async (event) => {
        event.preventDefault();
        const hyperparameters = {};
        for (const [name, input] of Object.entries(inputs)) {
          if (input.isConnected && input.value !== "") hyperparameters[name] = Number(input.value);
        }
        const body = { algorithm: algorithm.value, mode: mode.value, hyperparameters, test_episodes: Number(testEpisodes.value || 0) };
        if (seed.value !== "") body.seed = seed.value;
        if (mode.value === "time_budget" && budget.value) body.time_budget = `${Number(budget.value)}s`;
        try {
          const started = await api("POST", "/runs", body);
          location.href = `/runs/${started.runId}`;
        } catch (error) {
          message.replaceChildren(errorBox(error));
        }
      } },
      el("label", {}, "algorithm ", algorithm),
      el("label", {}, "mode ", mode),
      description,
      fields,
      el("label", {}, "time budget (s, time_budget mode) ", budget),
      el("label", {}, "test episodes ", testEpisodes),
      el("label", {}, "seed ", seed),
      el("button", { type: "submit" }, "Start training"),
      message,
    );
    app.append(form);
    drawParameters();
  }

  const page = app.dataset.page;
  const run = {
    runs: runsPage,
    run: () => runPage(app.dataset.runId),
    compare: comparePage,
    statistics: statisticsPage,
    train: trainPage,
  }[page];
  if (run) {
    run().then(
      () => { app.dataset.ready = "true"; },
      (error) => { app.append(errorBox(error)); app.dataset.ready = "true"; },
    );
  }
})();
