// Analyst dashboards (study overview, ad dashboard, ad vs ad): render the server's payload with plotly.js,
// recompute on every filter change (fetch data.json), and take live updates pushed over the WebSocket (the
// study and ad pages).
(function () {
  "use strict";

  const root = document.getElementById("dashboard");
  if (!root) return;
  const kind = root.dataset.kind;
  let payload = JSON.parse(document.getElementById("dashboard-data").textContent);
  const form = document.getElementById("filters");
  const liveStatus = document.getElementById("live-status");
  const plotConfig = (name) => ({
    responsive: true,
    displaylogo: false,
    toImageButtonOptions: { format: "png", filename: name, scale: 2 },
    modeBarButtonsToAdd: [{
      name: "Download plot as SVG",
      icon: Plotly.Icons.disk,
      click: (gd) => Plotly.downloadImage(gd, { format: "svg", filename: name }),
    }],
  });

  // ---- small DOM helpers ------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  // "Germany (DE)": the server names every country code of the payload; codes stay the data.
  const countryLabel = (code) => (payload.country_labels || {})[code] || code || "unknown";
  const fmt = (value, digits = 3) => (value === null || value === undefined ? "—" : Number(value).toFixed(digits));
  const pct = (value) => (value === null || value === undefined ? "—" : (100 * value).toFixed(1) + " %");
  function table(node, header, rows) {
    node.replaceChildren(
      el("thead", {}, el("tr", {}, header.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.map((cells) => el("tr", cells.className ? { class: cells.className } : {},
        cells.map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: c === null ? "—" : c })))))),
    );
  }

  // ---- filters ----------------------------------------------------------------------------------------
  function checkboxGroup(name, label, values, selected, labelOf = (value) => value || "unknown") {
    const box = el("fieldset", { class: "checks" }, el("legend", { text: label }));
    if (!values.length) box.append(el("span", { class: "muted", text: "none yet" }));
    for (const value of values) {
      box.append(el("label", {}, el("input", { type: "checkbox", name, value, checked: selected.includes(value) }),
        " " + labelOf(value)));
    }
    return box;
  }
  function select(name, label, options, selected) {
    const node = el("select", { name });
    for (const [value, text] of options) {
      node.append(el("option", { value, text, selected: String(value) === String(selected) }));
    }
    return el("label", { class: "field" }, label, node);
  }
  const asList = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);

  function buildFilterForm() {
    const f = payload.filters || {};
    const o = payload.options || {};
    const countries = kind === "study" ? (payload.funnel || []).map((r) => r.country) : o.countries;
    const allCountries = Array.from(new Set([...(countries || []), ...asList(f.country)])).sort();
    const devices = kind === "study" ? ["desktop", "mobile", "tablet", "unknown"] : o.devices;
    if (kind === "compare") { buildCompareForm(f, o, allCountries, devices); return; }
    const parts = [
      checkboxGroup("country", "Country", allCountries, asList(f.country), countryLabel),
      checkboxGroup("device", "Device", Array.from(new Set([...(devices || []), ...asList(f.device)])),
        asList(f.device)),
      el("label", { class: "field" }, "From", el("input", { type: "date", name: "from", value: f.from || "" })),
      el("label", { class: "field" }, "To", el("input", { type: "date", name: "to", value: f.to || "" })),
    ];
    if (kind === "ad") {
      const compare = asList(f.compare);
      const countryOptions = [["", "auto"], ...allCountries.map((c) => [c, countryLabel(c)])];
      parts.push(
        select("quality", "Min. face quality", o.quality_levels.map((q) => [String(q), q === 0 ? "any" : "≥ " + q]),
          f.quality || "0.0"),
        el("label", { class: "field check" },
          el("input", { type: "checkbox", name: "completed", value: "1", checked: f.completed === "1" }),
          " Validated completes only"),
        el("label", { class: "field check switch" },
          el("input", { type: "checkbox", name: "baseline", value: "1", checked: f.baseline === "1" }),
          " Baseline-corrected"),
        select("measure", "Compare measure", o.measures, f.measure || "smile"),
        select("compare", "Country A", countryOptions, compare[0] || ""),
        select("compare", "Country B", countryOptions, compare[1] || ""),
        select("correction", "Correction", [["bh", "Benjamini-Hochberg"], ["holm", "Holm"]], f.correction || "bh"),
        select("layout", "Countries as", [["overlay", "overlay"], ["multiples", "small multiples"]],
          f.layout || "overlay"),
        select("norm_country", "Norm: country", [["", "all"], ...allCountries.map((c) => [c, countryLabel(c)])],
          f.norm_country || ""),
        select("norm_category", "Norm: category",
          [["", "every category"], ...(o.norm_categories || []).map((c) => [c, c])], f.norm_category || ""),
      );
      if ((o.model_versions || []).length > 1) {
        parts.push(select("model", "Model", o.model_versions.map((m) => [m, m]), payload.model_version));
      }
    }
    parts.push(el("a", { href: "?", class: "reset", text: "Reset" }));
    form.replaceChildren(...parts);
  }

  // Ad vs ad: the two ads and the axis first; the filters (applied to both ads) once both are chosen.
  function buildCompareForm(f, o, allCountries, devices) {
    const choices = JSON.parse(document.getElementById("compare-choices").textContent);
    const ads = [["", "choose an ad…"], ...choices.map((c) => [String(c.id), c.label])];
    const parts = [
      select("a", "Ad A", ads, f.a || ""),
      select("b", "Ad B", ads, f.b || ""),
      select("axis", "Line up", o.axes || [["second", "by second"]], f.axis || "second"),
    ];
    if (payload.comparable) {
      parts.push(
        select("measure", "Measure", o.measures, f.measure || "smile"),
        select("correction", "Correction", [["bh", "Benjamini-Hochberg"], ["holm", "Holm"]], f.correction || "bh"),
        el("label", { class: "field check switch" },
          el("input", { type: "checkbox", name: "baseline", value: "1", checked: f.baseline === "1" }),
          " Baseline-corrected"),
        checkboxGroup("country", "Country", allCountries, asList(f.country), countryLabel),
        checkboxGroup("device", "Device", Array.from(new Set([...(devices || []), ...asList(f.device)])),
          asList(f.device)),
        el("label", { class: "field" }, "From", el("input", { type: "date", name: "from", value: f.from || "" })),
        el("label", { class: "field" }, "To", el("input", { type: "date", name: "to", value: f.to || "" })),
        select("quality", "Min. face quality", o.quality_levels.map((q) => [String(q), q === 0 ? "any" : "≥ " + q]),
          f.quality || "0.0"),
        el("label", { class: "field check" },
          el("input", { type: "checkbox", name: "completed", value: "1", checked: f.completed === "1" }),
          " Validated completes only"),
      );
      if ((o.model_versions || []).length > 1) {
        parts.push(select("model", "Model", o.model_versions.map((m) => [m, m]), payload.model_version));
      }
    }
    parts.push(el("a", { href: "?", class: "reset", text: "Reset" }));
    form.replaceChildren(...parts);
  }

  function filterQuery() {
    const params = new URLSearchParams();
    const data = new FormData(form);
    const compare = data.getAll("compare").filter(Boolean);
    for (const [key, value] of data.entries()) {
      if (key === "compare" || value === "") continue;
      params.append(key, value);
    }
    if (compare.length === 2 && compare[0] !== compare[1]) compare.forEach((c) => params.append("compare", c));
    return params;
  }
  function filterObject(params) {
    const out = {};
    for (const key of new Set(params.keys())) out[key] = params.getAll(key);
    return out;
  }

  let requestSerial = 0;
  async function applyFilters() {
    const params = filterQuery();
    history.replaceState(null, "", "?" + params.toString());
    const serial = ++requestSerial;
    const response = await fetch(root.dataset.dataUrl + "?" + params.toString(), { credentials: "same-origin" });
    const body = await response.json();
    if (serial !== requestSerial) return; // a newer request is on its way
    const error = document.getElementById("filter-error");
    if (!response.ok) {
      error.textContent = body.error || "These filters cannot be applied.";
      error.hidden = false;
      return;
    }
    error.hidden = true;
    payload = body;
    render();
    subscribe();
  }
  form.addEventListener("change", () => applyFilters());
  form.addEventListener("submit", (event) => { event.preventDefault(); applyFilters(); });

  // ---- figures ----------------------------------------------------------------------------------------
  const baseShapes = {};
  let cursorTime = null;
  function drawFigure(id, figure, name) {
    const node = document.getElementById(id);
    if (!node) return;
    const panel = node.closest(".panel");
    if (!figure) {
      if (node.data) Plotly.purge(node);
      node.replaceChildren();
      if (panel && id === "fig-difference") panel.hidden = true;
      return;
    }
    if (panel) panel.hidden = false;
    baseShapes[id] = figure.layout.shapes || [];
    const layout = Object.assign({}, figure.layout, { shapes: withCursor(id, figure.layout) });
    Plotly.react(node, figure.data, layout, plotConfig(name));
    if (!node.dataset.bound) {
      node.dataset.bound = "1";
      node.on("plotly_click", (event) => {
        const video = document.getElementById("ad-video");
        if (!video || !event.points || !event.points.length) return;
        // Points sit at the middle of their second; seek to the second's start.
        video.currentTime = Math.max(0, Math.floor(event.points[0].x));
        moveCursor(video.currentTime);
      });
    }
    const tools = document.querySelector(`.figure-tools[data-figure="${id}"]`);
    if (tools && !tools.childElementCount) {
      for (const format of ["png", "svg"]) {
        tools.append(el("button", { type: "button", class: "tool", text: format.toUpperCase(),
          title: `Download this chart as ${format.toUpperCase()}` }));
        tools.lastChild.addEventListener("click", () =>
          Plotly.downloadImage(node, { format, filename: `${name}`, scale: format === "png" ? 2 : 1 }));
      }
    }
  }
  function withCursor(id, layout) {
    const shapes = (baseShapes[id] || []).slice();
    if (cursorTime === null) return shapes;
    // meta.cursors: one line per entry, on x axis `xref`, bottom to top of `yref` (a panel or the plot).
    const meta = layout.meta || {};
    const cursors = meta.cursors || (meta.cursorAxes || []).map((xref) => ({ xref, yref: "paper" }));
    for (const { xref, yref } of cursors) {
      shapes.push({ type: "line", xref, yref, x0: cursorTime, x1: cursorTime, y0: 0, y1: 1,
        line: { color: "#c2185b", width: 2 } });
    }
    return shapes;
  }
  function moveCursor(seconds) {
    cursorTime = seconds;
    document.getElementById("video-time").textContent = seconds.toFixed(1);
    for (const id of ["fig-trace", "fig-attention", "fig-countries", "fig-difference"]) {
      const node = document.getElementById(id);
      if (node && node.layout) Plotly.relayout(node, { shapes: withCursor(id, node.layout) });
    }
  }

  // ---- ad dashboard -----------------------------------------------------------------------------------
  function renderAd() {
    const p = payload;
    const name = `ad-${p.ad.id}`;
    document.getElementById("totals").replaceChildren(
      card("Participants", p.totals.participants),
      card("Most per second", p.totals.max_participants_per_second),
      card("Frames analysed", p.totals.frames),
      card("Ad length", `${p.ad.duration_s.toFixed(1)} s`),
      card("Model", p.model_version || "—"),
      card("Updated", new Date(p.generated_at).toLocaleTimeString()),
    );
    renderScorecard(p.scorecard);
    drawFigure("fig-trace", p.figures.trace, `${name}-emotions`);
    drawFigure("fig-attention", p.figures.attention, `${name}-attention`);
    drawFigure("fig-countries", p.figures.countries, `${name}-countries`);
    drawFigure("fig-difference", p.figures.difference, `${name}-difference`);

    renderMoments(p.moments);
    document.getElementById("moment-rule").textContent = p.moment_rule || "";

    table(document.getElementById("summary"), summaryHeader("Country"),
      p.summary.map((row) => Object.assign(
        summaryCells(row, row.country === "All" ? "All" : countryLabel(row.country)),
        { className: row.country === "All" ? "total" : "" })));

    const c = p.comparison;
    const note = document.getElementById("comparison-note");
    if (c) {
      note.textContent = `Welch t-test of ${c.measure_label} per second, ` +
        `${countryLabel(c.countries[0])} vs ${countryLabel(c.countries[1])}: ` +
        `${c.significant_seconds.length} of ${c.tested_seconds} testable seconds differ (${c.correction_label}). ` +
        "Seconds where either country has fewer than 2 participants are not tested.";
      table(document.getElementById("tests"),
        ["Second", ...testHeader(countryLabel(c.countries[0]), countryLabel(c.countries[1]))],
        c.rows.map((r) => Object.assign([`${r.second}–${r.second + 1} s`, ...testCells(r)],
          { className: r.significant ? "significant" : "" })));
    } else {
      note.textContent = "Pick two countries to compare (needs participants from at least two countries).";
      document.getElementById("tests").replaceChildren();
    }

    const query = new URLSearchParams(window.location.search).toString();
    document.getElementById("report-pdf").href = root.dataset.reportUrl + (query ? "?" + query : "");
    const exports = document.getElementById("exports");
    exports.replaceChildren(...[
      ["frames", "Per-frame readings"], ["seconds", "Per second per participant"],
      ["traces", "Aggregated traces"], ["comparison", "Country test"],
    ].flatMap(([exportKind, label]) => ["csv", "parquet"].map((format) => el("a", {
      class: "button",
      href: root.dataset.exportUrl.replace("KIND", exportKind).replace(/\.csv$/, "." + format) + (query ? "?" + query : ""),
      text: `${label} (${format === "csv" ? "CSV" : "Parquet"})`,
    }))));
  }
  // The summary table's columns over the whole ad (per country on the ad page, per ad when comparing).
  function summaryHeader(first) {
    return [first, "Participants", "Mean valence [95% CI]", "Mean expressiveness [95% CI]", "Peak smile",
      "Peak at", "Smiled (≥ " + payload.options.smile_threshold + ")", "Mean attention [95% CI]",
      "Attending to the end", "Frames"];
  }
  function summaryCells(row, label) {
    return [
      el("span", {}, el("i", { class: "swatch", style: `background:${row.color}` }), " ", label),
      row.participants, `${fmt(row.mean_valence)} [${fmt(row.valence_low)}, ${fmt(row.valence_high)}]`,
      `${fmt(row.mean_expressiveness)} [${fmt(row.expressiveness_low)}, ${fmt(row.expressiveness_high)}]`,
      fmt(row.peak_smile), row.peak_smile_time || "—", pct(row.smiled_share),
      `${fmt(row.mean_attention)} [${fmt(row.attention_low)}, ${fmt(row.attention_high)}]`,
      pct(row.retained_share), row.frames,
    ];
  }
  // A per-second (per-position) Welch test row: the country comparison's and ad vs ad's tables.
  function testHeader(a, b) {
    return [`n ${a}`, `n ${b}`, `Mean ${a}`, `Mean ${b}`, "Difference [95% CI]", "t", "df", "p", "adjusted p", ""];
  }
  function testCells(r) {
    return [r.n_a, r.n_b, fmt(r.mean_a), fmt(r.mean_b), `${fmt(r.difference)} [${fmt(r.low)}, ${fmt(r.high)}]`,
      fmt(r.t, 2), fmt(r.df, 1), fmt(r.p, 4), fmt(r.p_adjusted, 4), r.significant ? "significant" : ""];
  }
  // 1st, 2nd, 3rd, 4th... 11th-13th (as analytics/report.py prints it).
  function ordinal(number) {
    const teen = number % 100 >= 10 && number % 100 <= 20;
    return `${number}${teen ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[number % 10] || "th")}`;
  }
  const scorePercentile = (figure, norm) => (figure.percentile === null || figure.percentile === undefined
    ? (norm.enough || figure.value === null ? "—" : "too few ads")
    : ordinal(Math.round(figure.percentile)));
  const scoreValue = (figure) => (figure.key === "smiled" || figure.key === "attention"
    ? pct(figure.value) : fmt(figure.value));
  // The ad's figures, each with its percentile in the organisation's norm (analytics/norms.py).
  function renderScorecard(scorecard) {
    const node = document.getElementById("scorecard");
    if (!node || !scorecard) return;
    const norm = scorecard.norm;
    table(node, ["Figure", "This ad", "Percentile in the norm"],
      scorecard.figures.map((figure) => [figure.label, scoreValue(figure), scorePercentile(figure, norm)]));
    document.getElementById("scorecard-n").textContent = String(scorecard.n);
    document.getElementById("norm-note").textContent = "Norm: " + norm.description + ".";
  }
  // Each moment on two rows: what and when (times and CIs never wrap), then why it is listed.
  function renderMoments(moments) {
    const body = el("tbody", {});
    for (const m of moments) {
      const link = el("a", { href: "#", text: m.time });
      link.addEventListener("click", (event) => { event.preventDefault(); seek(m.second); });
      body.append(
        el("tr", { class: "moment" },
          el("td", { text: `${m.kind === "peak" ? "▲ peak" : "▼ drop"} · ${m.label}` }),
          el("td", { class: "nowrap" }, link),
          el("td", { class: "nowrap", text: `${fmt(m.mean)} [${fmt(m.low)}, ${fmt(m.high)}]` }),
          el("td", { class: "nowrap", text: m.n })),
        el("tr", { class: "why" }, el("td", { colspan: 4, text: m.reason })));
    }
    if (!moments.length) {
      body.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No second stands out." })));
    }
    document.getElementById("moments").replaceChildren(
      el("thead", {}, el("tr", {}, ["Moment", "When", "Mean [95% CI]", "n"].map((h) => el("th", { text: h })))),
      body);
  }
  function card(label, value) {
    return el("div", { class: "card" }, el("span", { class: "label", text: label }), el("strong", { text: value }));
  }
  function seek(second) {
    const video = document.getElementById("ad-video");
    if (video) { video.currentTime = second; moveCursor(second); }
  }

  // ---- ad vs ad ---------------------------------------------------------------------------------------
  function renderCompare() {
    const p = payload;
    buildFilterForm(); // the measures and filters on offer depend on the two ads chosen
    const results = document.getElementById("compare-results");
    const reason = document.getElementById("compare-reason");
    results.hidden = !p.comparable;
    reason.hidden = Boolean(p.comparable);
    if (!p.comparable) { reason.textContent = p.reason; return; }
    const [a, b] = p.ads;
    const [summaryA, summaryB] = p.summaries;
    const name = `ads-${a.id}-vs-${b.id}`;
    document.getElementById("totals").replaceChildren(
      card(`Participants ${a.letter}`, summaryA ? summaryA.participants : 0),
      card(`Participants ${b.letter}`, summaryB ? summaryB.participants : 0),
      card("Watched both", p.shared_participants),
      card("Lined up", p.axis_label),
      card("Model", p.model_version),
      card("Updated", new Date(p.generated_at).toLocaleTimeString()),
    );
    drawFigure("fig-overlay", p.figures.overlay, `${name}-overlay`);
    drawFigure("fig-difference", p.figures.difference, `${name}-difference`);
    const c = p.comparison;
    let note = `Welch t-test of ${c.measure_label} ${p.axis_label}, A vs B: ` +
      `${c.significant_positions.length} of ${c.tested_seconds} testable positions differ (${c.correction_label}). ` +
      "Positions where either ad has fewer than 2 participants are not tested.";
    if (p.shared_participants > 0) {
      note += ` ${p.shared_participants} participants watched both ads: the test treats the two ads' ` +
        "participants as independent groups, which for the same people is usually conservative " +
        "(a person's readings of two ads tend to move together).";
    }
    document.getElementById("comparison-note").textContent = note;

    const [cardA, cardB] = p.scorecards;
    table(document.getElementById("scorecards"),
      ["Figure", a.name, "Percentile", b.name, "Percentile"],
      [...cardA.figures.map((figure, index) => [figure.label, scoreValue(figure), scorePercentile(figure, cardA.norm),
        scoreValue(cardB.figures[index]), scorePercentile(cardB.figures[index], cardB.norm)]),
      ["Validated participants", cardA.n, "", cardB.n, ""]]);
    document.getElementById("norm-notes").textContent =
      `Norm of A: ${cardA.norm.description}. Norm of B: ${cardB.norm.description}.`;
    const adLink = (ad) => el("a", { href: ad.url, text: ad.name });
    table(document.getElementById("summary"), summaryHeader("Ad"),
      [[a, summaryA], [b, summaryB]].filter(([, row]) => row).map(([ad, row]) => summaryCells(row, adLink(ad))));
    table(document.getElementById("tests"),
      ["Position", `Second of ${a.letter}`, `Second of ${b.letter}`, ...testHeader(a.letter, b.letter)],
      c.rows.map((r) => Object.assign([r.label, r.second_a === null ? "—" : r.second_a,
        r.second_b === null ? "—" : r.second_b, ...testCells(r)], { className: r.significant ? "significant" : "" })));
    const query = new URLSearchParams(window.location.search).toString();
    document.getElementById("exports").replaceChildren(...["csv", "parquet"].map((format) => el("a", {
      class: "button",
      href: root.dataset.exportUrl.replace(/\.csv$/, "." + format) + (query ? "?" + query : ""),
      text: `Per-position test (${format === "csv" ? "CSV" : "Parquet"})`,
    })));
  }

  // ---- study overview ---------------------------------------------------------------------------------
  function renderStudy() {
    const p = payload;
    const t = p.total;
    document.getElementById("totals").replaceChildren(
      card("Started", t.started), card("Consented", t.consented), card("Passed checks", t.checks_passed),
      card("Completed viewing", t.viewed), card("Validated", t.validated),
      card("Excluded", t.failed + t.declined + t.over_quota), card("In progress", t.in_progress),
    );
    drawFigure("fig-funnel", p.figures.funnel, `study-${p.study.id}-funnel`);
    drawFigure("fig-quotas", p.figures.quotas, `study-${p.study.id}-quotas`);
    document.getElementById("no-quotas").hidden = Boolean(p.figures.quotas);
    const quotas = Object.fromEntries(p.quotas.map((q) => [q.country, q]));
    const rows = [...p.funnel.map((r) => ({ ...r, label: countryLabel(r.country) })), { ...t, label: "All" }];
    table(document.getElementById("funnel-table"),
      ["Country", "Started", "Consented", "Passed checks", "Completed viewing", "Validated", "Failed", "Declined",
        "Over quota", "In progress", "Quota"],
      rows.map((r) => Object.assign([r.label, r.started, r.consented, r.checks_passed, r.viewed, r.validated,
        r.failed, r.declined, r.over_quota, r.in_progress,
        quotas[r.country] ? `${quotas[r.country].validated} / ${quotas[r.country].target}` : "—"],
      { className: r.label === "All" ? "total" : "" })));
    table(document.getElementById("exclusions-table"), ["Outcome", "Reason", "Participants", "By country", "Examples"],
      p.exclusions.length ? p.exclusions.map((x) => [x.state.replace("_", " "), x.reason, x.count,
        Object.entries(x.countries).map(([c, n]) => `${countryLabel(c)}: ${n}`).join(", "), x.examples.join(" · ") || "—"])
        : [["—", "No exclusions yet", 0, "", ""]]);
    document.getElementById("ads").replaceChildren(...p.ads.map((ad) => el("li", {},
      el("a", { href: ad.url, text: ad.title }), ` — ${ad.participants} participants, ${ad.duration_s.toFixed(1)} s`)));
  }

  function render() {
    if (kind === "ad") renderAd(); else if (kind === "compare") renderCompare(); else renderStudy();
    root.dataset.rendered = String(Number(root.dataset.rendered || 0) + 1);
  }

  // ---- live updates -----------------------------------------------------------------------------------
  let socket = null;
  let retry = 1000;
  function setLive(text, state) {
    if (!liveStatus) return;
    liveStatus.textContent = text;
    liveStatus.dataset.state = state;
  }
  function subscribe() {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "subscribe", filters: filterObject(filterQuery()) }));
    }
  }
  // Provisional figures of who is watching now (analytics/provisional.py), between the exact updates.
  function renderLive(live) {
    const panel = document.getElementById("live-panel");
    if (!panel) return;
    panel.hidden = false;
    document.getElementById("live-watching").textContent = String(live.watching);
    document.getElementById("live-window").textContent = String(live.window_s);
    const line = (name, values, color) => ({
      type: "scatter", mode: "lines+markers", name, x: live.seconds.map((s) => s + 0.5), y: values,
      line: { color, dash: "dot" }, connectgaps: false,
      hovertemplate: `${name} %{y:.3f} at %{x:.1f} s<extra>provisional</extra>`,
    });
    Plotly.react("fig-live", [line("Smile", live.smile, "#d97706"), line("Valence", live.valence, "#2563eb")], {
      height: 220, margin: { l: 50, r: 20, t: 10, b: 40 }, showlegend: true,
      legend: { orientation: "h", y: -0.3 },
      xaxis: { title: { text: "seconds into the ad" }, rangemode: "tozero" },
      yaxis: { range: [-1, 1], zeroline: true },
    }, plotConfig("live-now"));
    root.dataset.liveFrames = String(Number(root.dataset.liveFrames || 0) + 1);
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}${root.dataset.socketPath}`);
    socket.addEventListener("open", () => { retry = 1000; setLive("live", "open"); subscribe(); });
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "update") {
        payload = message.data;
        render();
        root.dataset.liveUpdates = String(Number(root.dataset.liveUpdates || 0) + 1);
        setLive("live · updated " + new Date().toLocaleTimeString(), "open");
      } else if (message.type === "live") {
        renderLive(message.data);
      } else if (message.type === "error") {
        setLive("live · " + message.detail, "error");
      }
    });
    socket.addEventListener("close", (event) => {
      // 4001 signed out, 4003 access withdrawn, 4004 no access: reconnecting cannot help
      if (event.code === 4001 || event.code === 4003 || event.code === 4004) {
        setLive("live view not available", "closed");
        return;
      }
      setLive("reconnecting…", "closed");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    });
  }

  // ---- video cursor -----------------------------------------------------------------------------------
  const video = document.getElementById("ad-video");
  if (video) {
    let frame = null;
    const follow = () => {
      // Redraw the cursor about ten times a second while playing, not on every animation frame.
      if (cursorTime === null || Math.abs(video.currentTime - cursorTime) >= 0.1) moveCursor(video.currentTime);
      frame = video.paused ? null : requestAnimationFrame(follow);
    };
    video.addEventListener("play", () => { if (frame === null) frame = requestAnimationFrame(follow); });
    video.addEventListener("seeked", () => moveCursor(video.currentTime));
    video.addEventListener("timeupdate", () => { if (frame === null) moveCursor(video.currentTime); });
  }

  buildFilterForm();
  render();
  if (root.dataset.socketPath) connect();
})();
