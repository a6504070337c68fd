// The c360 security console: a small client of the gateway's own GraphQL API, so the
// policy file decides what it may show and every view is itself an access-log record.
// Signed in through the organisation's identity provider (`[console.oidc]`), the page holds
// no token at all: its session is an HttpOnly cookie, and each request echoes the session's
// CSRF token (a cookie the page can read) in X-CSRF-Token. A pasted token (development)
// lives in sessionStorage only (this tab); it is never put in a URL or a cookie.
// Everything from the log (subjects, clients, ids) is inserted as text, never as HTML:
// a token's subject or an X-Client-Name header is chosen by whoever sent the request.
"use strict";

(() => {
  const TOKEN_KEY = "c360.console.token";
  const LANG_KEY = "c360.console.lang";
  const PAGE = 25;
  const EXPORT_PAGE = 50; // a page of records stays within the gateway's query cost limit
  const EXPORT_CAP = 10000;
  // The graph's Customer fields, from its declaration (the page carries them).
  const FIELDS = JSON.parse(document.getElementById("c360-fields").textContent);
  const DECISIONS = ["allow", "mask", "deny"];
  // A refusal by one of these is the console's "not allowed" page, not an error.
  const CONSOLE_POLICIES = new Set(["audit.read", "audit.ack", "rights.requests", "quality.read"]);
  const RESOLUTIONS = ["REVIEWED", "EXPECTED", "ESCALATED", "FALSE_POSITIVE"];
  const COLORS = {
    sales: "#1f5fbf", sales_manager: "#5b8fd9", service: "#2e7d4f", marketing: "#8e44ad",
    security: "#c0392b", allow: "#2e7d4f", mask: "#d4a017", deny: "#c0392b",
  };
  const SPARE = ["#7f8c8d", "#16a085", "#d35400", "#34495e", "#e84393", "#6d4c41"];
  const LABELS = JSON.parse(document.getElementById("c360-labels").textContent);
  // How the page signs in: {oidc: the provider's sign-in, token: a pasted token}
  const SIGNIN = JSON.parse(document.getElementById("c360-signin").textContent);
  // A person's report: the command line's query and its printable page's languages, in order
  const REPORT = JSON.parse(document.getElementById("c360-report").textContent);
  const CSRF_COOKIE = /(?:^|;\s*)(?:__Host-)?c360-csrf=([^;]*)/;
  const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const $ = (selector) => document.querySelector(selector);
  // session: the sign-in session ({subject, roles, expiresAt, refreshable}), null without
  // one, undefined until asked
  // report: the person's report on the rights page ({report, requestId}), in this page's
  // memory only and only while the rights page is shown: it is a person's data, unmasked.
  const state = { lang: pickLanguage(), checked: false, focus: false, route: "#/overview",
    session: undefined, renewal: null, pages: [], report: null };

  // --- language, text, time -----------------------------------------------------------

  function pickLanguage() {
    const saved = localStorage.getItem(LANG_KEY);
    if (saved && LABELS[saved]) return saved;
    for (const tag of navigator.languages || [navigator.language || ""]) {
      if (/^zh/i.test(tag)) return "zh-CN";
      if (/^en/i.test(tag)) return "en";
    }
    return LABELS[document.documentElement.lang] ? document.documentElement.lang : "en";
  }

  function t(key, params) {
    let text = (LABELS[state.lang] || {})[key] ?? LABELS.en[key] ?? key;
    for (const [name, value] of Object.entries(params || {})) {
      text = text.split(`{${name}}`).join(String(value));
    }
    return text;
  }

  function offset(date) {
    const minutes = -date.getTimezoneOffset();
    const abs = Math.abs(minutes);
    const two = (n) => String(n).padStart(2, "0");
    return `UTC${minutes >= 0 ? "+" : "-"}${two(Math.floor(abs / 60))}:${two(abs % 60)}`;
  }

  function when(iso) {
    const date = new Date(iso);
    const text = new Intl.DateTimeFormat(state.lang, {
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
    }).format(date);
    return `${text} (${offset(date)})`;
  }

  function hourLabel(date, withDay) {
    const options = withDay
      ? { month: "2-digit", day: "2-digit", hour: "2-digit", hourCycle: "h23" }
      : { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    return new Intl.DateTimeFormat(state.lang, options).format(date);
  }

  function duration(seconds) {
    return seconds % 3600 === 0
      ? t("unit.hours", { n: seconds / 3600 })
      : t("unit.minutes", { n: Math.round(seconds / 60) });
  }

  function numberText(n) {
    return new Intl.NumberFormat(state.lang).format(n);
  }

  // A datetime-local input holds local wall time; the API and the URL hold UTC ISO times.
  function toInput(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
    return local.toISOString().slice(0, 16);
  }

  function fromInput(value) {
    return value ? new Date(value).toISOString() : "";
  }

  function ago(hours) {
    return new Date(Date.now() - hours * 3600 * 1000).toISOString();
  }

  // --- DOM ------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const element = document.createElement(tag);
    setAttributes(element, attrs);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  function svg(tag, attrs, ...children) {
    const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setAttributes(element, attrs);
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  function setAttributes(element, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
      else element.setAttribute(name === "className" ? "class" : name, value === true ? "" : value);
    }
  }

  function link(view, params, text) {
    return h("a", { href: hashOf(view, params) }, text);
  }

  // The policy is text on the page, not a hover title: keyboard and screen-reader users
  // read which policy decided, as everyone else does.
  function chip(name, decision, policy) {
    return h("span", { class: `chip ${decision}` },
      h("span", { class: "decided" }, `${name}: ${t(`decision.${decision}`)}`),
      policy ? [" ", h("span", { class: "policy" }, policy)] : null);
  }

  // --- the GraphQL API ------------------------------------------------------------------

  class Unauthenticated extends Error {}
  class Refused extends Error {}

  function csrfToken() {
    const found = document.cookie.match(CSRF_COOKIE);
    return found ? decodeURIComponent(found[1]) : "";
  }

  // One POST to /graphql with the reviewer's credential: {response, body}. `more`: headers
  // of this request only (the purpose it is made for).
  async function send(query, variables, more) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = {
      "content-type": "application/json",
      accept: "application/graphql-response+json, application/json",
      "x-client-name": "c360-console",
      ...(more || {}),
    };
    if (token) headers.authorization = `Bearer ${token}`;
    else if (state.session) headers["x-csrf-token"] = csrfToken();
    else throw new Unauthenticated();
    let response;
    try {
      response = await fetch("/graphql", {
        method: "POST",
        headers,
        body: JSON.stringify({ query, variables: variables || {} }),
        // the session's cookie goes with a signed-in session's requests only
        credentials: token ? "omit" : "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      throw new Error(t("signin.unreachable"));
    }
    if (response.status === 401) throw new Unauthenticated();
    return { response, body: await response.json().catch(() => ({})) };
  }

  async function gql(query, variables) {
    const { response, body } = await send(query, variables);
    const errors = body.errors || [];
    const refused = errors.some((e) => (e.extensions || {}).code === "FORBIDDEN"
      && CONSOLE_POLICIES.has(String((e.extensions || {}).policy || "")));
    if (refused) throw new Refused();
    if (!body.data) {
      throw new Error(errors.map((e) => e.message).join("; ") || `HTTP ${response.status}`);
    }
    const failed = errors.filter((e) => (e.extensions || {}).code !== "FORBIDDEN");
    if (failed.length && Object.values(body.data).some((v) => v === null)) {
      throw new Error(failed.map((e) => e.message).join("; "));
    }
    return body.data;
  }

  // --- the sign-in session ([console.oidc]) ----------------------------------------------

  // GET: who is signed in, until when; POST: renewed with the provider's refresh token.
  // null: no session (or it could not be renewed).
  async function sessionCall(method) {
    const csrf = csrfToken();
    if (!csrf) return null;
    let response;
    try {
      response = await fetch("/console/session", {
        method,
        headers: { accept: "application/json", "x-csrf-token": csrf },
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      throw new Error(t("signin.unreachable"));
    }
    return response.ok ? response.json() : null;
  }

  // Renewed a little before it ends while the page is open; a session the provider gave no
  // refresh token for ends, and the page says so (sign in again).
  function scheduleRenewal() {
    clearTimeout(state.renewal);
    if (!state.session) return;
    const left = state.session.expiresAt * 1000 - Date.now();
    const wait = state.session.refreshable ? left - Math.min(60000, left / 4) : left;
    state.renewal = setTimeout(async () => {
      let renewed = null;
      if (state.session && state.session.refreshable) {
        renewed = await sessionCall("POST").catch(() => null);
      }
      if (renewed) {
        state.session = renewed;
        scheduleRenewal();
      } else {
        fail(new Unauthenticated());
      }
    }, Math.max(1000, wait));
  }

  // --- routing --------------------------------------------------------------------------

  // Only "#/view?…" is a route. Any other fragment (the skip link's "#main", should it
  // ever reach the URL) leaves the current view alone; no fragment is the overview.
  function isRoute(hash) {
    return !hash || hash.startsWith("#/");
  }

  function route() {
    if (isRoute(location.hash)) state.route = location.hash || "#/overview";
    const [path, query] = state.route.slice(1).split("?");
    return { view: path.replace(/^\//, "") || "overview", params: new URLSearchParams(query || "") };
  }

  function hashOf(view, params) {
    const kept = Object.entries(params || {}).filter(([, v]) => v !== null && v !== undefined && v !== "");
    const query = new URLSearchParams(kept).toString();
    return `#/${view}${query ? `?${query}` : ""}`;
  }

  function go(view, params) {
    const target = hashOf(view, params);
    if (location.hash === target) render();
    else location.hash = target;
  }

  // --- paged tables with CSV export -------------------------------------------------------

  // columns: [{label, cell(row) -> Node|string, csv(row) -> string, num}]
  // fetch(after, first) -> {rows, pageInfo}; exportAs: {view, table, filters, name}
  // load(focus): focus "prev", "next" or "heading" after the section is rebuilt, since the
  // control that had the keyboard is replaced with it (else focus falls to <body>).
  function pagedTable({ title, columns, fetch, exportAs }) {
    const section = h("section", { class: "panel" });
    const cursors = [];
    let after = null;

    async function load(focus) {
      const body = h("tbody");
      const table = h("table", {},
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: [c.num ? "num" : "", c.width || ""].join(" ").trim() || null, scope: "col" }, t(c.label))))),
        body);
      const { rows, pageInfo } = await fetch(after, PAGE);
      for (const row of rows) {
        body.append(h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : c.mono ? "mono" : null }, c.cell(row)))));
      }
      const prev = h("button", { type: "button", class: "quiet", disabled: cursors.length === 0,
        onclick: async () => { after = cursors.pop(); await refresh("prev"); } }, t("prev"));
      const next = h("button", { type: "button", class: "quiet", disabled: !pageInfo.hasNextPage,
        onclick: async () => { cursors.push(after); after = pageInfo.endCursor; await refresh("next"); } }, t("next"));
      const status = h("span", { class: "note", role: "status" });
      const exporter = exportAs && h("button", { type: "button", class: "quiet", "data-export": exportAs.table,
        onclick: () => runExport(status, () => exportCsv(columns, fetch, exportAs)) }, t("export"));
      const heading = h("h2", { tabindex: "-1" }, title);
      section.replaceChildren(
        heading,
        rows.length ? h("div", { class: "tablewrap" }, table) : h("p", { class: "note" }, t("none")),
        h("div", { class: "pager" }, prev, h("span", { class: "note" }, t("page", { n: cursors.length + 1 })), next,
          h("span", { class: "spacer" }), status, exporter));
      const control = { prev, next }[focus];
      if (focus) (control && !control.disabled ? control : heading).focus();
    }

    async function refresh(focus) {
      try { await load(focus); } catch (error) { fail(error); }
    }

    return { section, load };
  }

  function csvCell(value) {
    let text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`; // a spreadsheet must not run it
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  async function runExport(status, work) {
    status.textContent = t("loading");
    try {
      status.textContent = await work();
    } catch (error) {
      status.textContent = "";
      fail(error);
    }
  }

  // A table with no pager of its own (a summary the page holds whole), exported like the
  // paged ones. exportAs: {view, table, filters, name}
  function summaryTable({ id, title, columns, rows, exportAs }) {
    const status = h("span", { class: "note", role: "status" });
    const fetch = async () => ({ rows, pageInfo: { hasNextPage: false, endCursor: null } });
    return h("section", { class: "panel", id }, h("h2", {}, title),
      rows.length ? h("div", { class: "tablewrap" }, h("table", {},
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, t(c.label))))),
        h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(r)))))))) : h("p", { class: "note" }, t("none")),
      h("div", { class: "pager" }, h("span", { class: "spacer" }), status,
        h("button", { type: "button", class: "quiet", "data-export": exportAs.table,
          onclick: () => runExport(status, () => exportCsv(columns, fetch, exportAs)) }, t("export"))));
  }

  async function exportCsv(columns, fetch, exportAs) {
    const rows = [];
    let after = null;
    let more = false; // rows left out at the cap: the page says so
    for (;;) {
      const page = await fetch(after, EXPORT_PAGE);
      rows.push(...page.rows);
      more = page.pageInfo.hasNextPage || rows.length > EXPORT_CAP;
      if (!page.pageInfo.hasNextPage || rows.length >= EXPORT_CAP) break;
      after = page.pageInfo.endCursor;
    }
    const kept = rows.slice(0, EXPORT_CAP);
    const lines = [columns.map((c) => csvCell(t(c.label))).join(",")];
    for (const row of kept) lines.push(columns.map((c) => csvCell(c.csv(row))).join(","));
    // Recorded first: an export the log could not record does not happen.
    await gql(`mutation ConsoleExport($view: ConsoleView!, $table: ConsoleTable, $rows: Int!, $filters: ConsoleExportFilters) {
      recordConsoleExport(view: $view, table: $table, rows: $rows, filters: $filters) { requestId } }`,
    { view: exportAs.view, table: exportAs.table, rows: kept.length, filters: exportAs.filters || null });
    const blob = new Blob([`\ufeff${lines.join("\r\n")}\r\n`], { type: "text/csv;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const anchor = h("a", { href: url, download: exportAs.name, hidden: true });
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    return t(more ? "exported.capped" : "exported", { rows: numberText(kept.length) });
  }

  // --- charts (inline SVG) ------------------------------------------------------------------

  function colorOf(key, keys) {
    return COLORS[key] || SPARE[keys.indexOf(key) % SPARE.length];
  }

  // buckets: [{label, at, parts: {key: n}}]; one stacked bar per bucket. labelOf(key): the
  // key in the page's language (a decision, a count), where it is not a name from the log.
  function stackedBars({ title, buckets, keys, tickEvery, labelOf = (key) => key }) {
    const width = 560;
    const height = 190;
    const left = 40;
    const bottom = 24;
    const top = 8;
    const max = Math.max(1, ...buckets.map((b) => keys.reduce((s, k) => s + (b.parts[k] || 0), 0)));
    const slot = (width - left - 4) / Math.max(1, buckets.length);
    const scale = (height - top - bottom) / max;
    const barWidth = Math.max(1, Math.min(slot * 0.8, 28)); // a lone day stays a bar
    const totals = {};
    const bars = [];
    buckets.forEach((bucket, i) => {
      let y = height - bottom;
      for (const key of keys) {
        const n = bucket.parts[key] || 0;
        totals[key] = (totals[key] || 0) + n;
        if (!n) continue;
        const barHeight = Math.max(1, n * scale);
        y -= barHeight;
        bars.push(svg("rect", {
          x: (left + i * slot + (slot - barWidth) / 2).toFixed(1), y: y.toFixed(1),
          width: barWidth.toFixed(1), height: barHeight.toFixed(1),
          fill: colorOf(key, keys),
        }, svg("title", {}, `${bucket.label} · ${labelOf(key)}: ${n}`)));
      }
      if (i % tickEvery === 0) {
        bars.push(svg("text", { x: (left + i * slot).toFixed(1), y: height - 6, "font-size": 10, fill: "#5b6575" }, bucket.label));
      }
    });
    const total = Object.values(totals).reduce((a, b) => a + b, 0);
    const summary = keys.map((k) => `${labelOf(k)}: ${totals[k] || 0}`).join(", ");
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${title}. ${t("chart.total")} ${total}. ${summary}` },
      svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#9aa6b5" }),
      svg("text", { x: left - 6, y: top + 10, "font-size": 10, "text-anchor": "end", fill: "#5b6575" }, String(max)),
      svg("text", { x: left - 6, y: height - bottom, "font-size": 10, "text-anchor": "end", fill: "#5b6575" }, "0"),
      bars);
    const legend = h("div", { class: "legend" }, keys.map((k) => h("span", {},
      svg("svg", { class: "swatch", viewBox: "0 0 10 10", "aria-hidden": "true" },
        svg("rect", { width: 10, height: 10, fill: colorOf(k, keys) })),
      `${labelOf(k)} (${totals[k] || 0})`)));
    return h("figure", { class: "chart" }, h("figcaption", {}, h("h2", {}, title)),
      total ? chart : h("p", { class: "note" }, t("chart.empty")), legend);
  }

  function hourBuckets(since, until, counts) {
    const start = new Date(since).getTime();
    const end = new Date(until).getTime();
    const hours = Math.max(1, Math.round((end - start) / 3600000));
    const buckets = [];
    const index = new Map();
    for (let i = 0; i < hours; i++) {
      const at = new Date(start + i * 3600000);
      index.set(at.getTime(), buckets.length);
      buckets.push({ at, label: hourLabel(at, hours > 48), parts: {} });
    }
    const keys = [];
    for (const { hour, key: raw, count } of counts) {
      const key = raw || "—"; // a rejected request has no role
      const slot = index.get(new Date(hour).getTime());
      if (slot === undefined) continue;
      buckets[slot].parts[key] = (buckets[slot].parts[key] || 0) + count;
      if (!keys.includes(key)) keys.push(key);
    }
    return { buckets, keys, tickEvery: Math.max(1, Math.ceil(hours / 8)) };
  }

  // --- the views ------------------------------------------------------------------------

  const RECORD_FIELDS = "id kind ts subject roles purpose client operation outcome traceId";

  function recordColumns(customer) {
    const fieldsOf = (r) => r.fields.filter((f) => !customer || f.customer === customer);
    // A write's changed fields beside the fields it read (never a value: the log has none).
    const changed = (r) => (r.writes || []).flatMap((w) => w.fields.map((f) => ({ field: `${w.system}.${f}`, outcome: w.outcome })));
    return [
      { label: "col.when", width: "when", cell: (r) => when(r.ts), csv: (r) => r.ts },
      { label: "col.subject", cell: (r) => r.subject ? link("footprint", { subject: r.subject }, r.subject) : "—", csv: (r) => r.subject },
      { label: "col.role", cell: (r) => r.roles.join(", "), csv: (r) => r.roles.join(" ") },
      { label: "col.purpose", cell: (r) => r.purpose || "—", csv: (r) => r.purpose },
      { label: "col.client", cell: (r) => r.client || "—", csv: (r) => r.client },
      { label: "col.fields", width: "wide", cell: (r) => h("div", { class: "chips" }, [
          ...changed(r).map((c) => chip(c.field, "edit", c.outcome)),
          ...fieldsOf(r).map((f) => chip(f.field, f.decision, f.policy))]),
        csv: (r) => [...changed(r).map((c) => `${c.field}=edit (${c.outcome})`),
          ...fieldsOf(r).map((f) => `${customer ? "" : `${f.customer}.`}${f.field}=${f.decision} (${f.policy || ""})`)].join("; ") },
      { label: "col.outcome", cell: (r) => r.outcome || r.kind, csv: (r) => r.outcome || r.kind },
      { label: "col.trace", mono: true, cell: (r) => r.traceId || "—", csv: (r) => r.traceId },
    ];
  }

  function field(label, control) {
    return h("div", {}, h("label", { for: control.id }, t(label)), control);
  }

  function select(id, options, value) {
    return h("select", { id }, options.map(([v, text]) => h("option", { value: v, selected: v === value }, text)));
  }

  function rangeSelect(id, value) {
    return select(id, [["24h", t("range.24h")], ["7d", t("range.7d")], ["30d", t("range.30d")]], value);
  }

  const RANGE_HOURS = { "24h": 24, "7d": 168, "30d": 720 };

  async function timelineView(root, params) {
    const customer = params.get("customer") || "";
    const find = h("input", { id: "f-customer", class: "wide", value: customer, autocomplete: "off", spellcheck: "false", "aria-describedby": "f-customer-help" });
    const fieldSelect = select("f-field", [["", t("any")], ...FIELDS.map((f) => [f, f])], params.get("field") || "");
    const decision = select("f-decision", [["", t("any")], ...DECISIONS.map((d) => [d, t(`decision.${d}`)])], params.get("decision") || "");
    const subject = h("input", { id: "f-subject", value: params.get("subject") || "", autocomplete: "off" });
    const since = h("input", { id: "f-since", type: "datetime-local", value: toInput(params.get("since")) });
    const until = h("input", { id: "f-until", type: "datetime-local", value: toInput(params.get("until")) });
    const problem = h("p", { class: "error", role: "alert" });
    const lookup = async (email) => {
      try {
        const data = await gql("query ConsoleFindCustomer($email: String!) { auditCustomerByEmail(email: $email) }", { email });
        return data.auditCustomerByEmail || null;
      } catch (error) {
        fail(error);
        return null;
      }
    };
    const form = h("form", { class: "filters", onsubmit: async (event) => {
      event.preventDefault();
      problem.textContent = "";
      let id = find.value.trim();
      if (id.includes("@")) {
        find.value = ""; // the address is not kept on the page, in the URL or in history
        id = await lookup(id);
        if (!id) { problem.textContent = t("timeline.unknown"); return; }
      }
      if (!/^cus_[a-z2-7]{16}$/.test(id)) { problem.textContent = t("timeline.badid"); return; }
      go("timeline", { customer: id, field: fieldSelect.value, decision: decision.value,
        subject: subject.value.trim(), since: fromInput(since.value), until: fromInput(until.value) });
    } },
    field("timeline.find", find), field("filter.field", fieldSelect), field("filter.decision", decision),
    field("filter.subject", subject), field("since", since), field("until", until),
    h("div", {}, h("button", { type: "submit", id: "f-show" }, t("timeline.search"))));
    const head = h("section", { class: "panel" }, h("h1", { tabindex: "-1" }, t("timeline.title")), form,
      h("p", { class: "note", id: "f-customer-help" }, t("timeline.findhelp")), problem);
    root.replaceChildren(head);
    if (!customer) {
      head.append(h("p", {}, t("timeline.pick")));
      return;
    }
    const filters = { customer, field: params.get("field") || null, decision: params.get("decision") || null,
      subject: params.get("subject") || null, since: params.get("since") || null, until: params.get("until") || null };
    const who = await gql("query ConsoleCustomer($id: ID!) { customer(id: $id) { id name } }", { id: customer });
    head.append(h("dl", { class: "stats" },
      h("div", { class: "stat" }, h("dt", {}, t("timeline.customer")), h("dd", { class: "mono", id: "customer-id" }, customer)),
      h("div", { class: "stat" }, h("dt", {}, t("timeline.name")), h("dd", { id: "customer-name" }, (who.customer && who.customer.name) || "—"))));
    const table = pagedTable({
      title: t("timeline.title"),
      columns: recordColumns(customer),
      exportAs: { view: "TIMELINE", table: "TIMELINE", filters, name: `c360-timeline-${customer}.csv` },
      fetch: async (after, first) => {
        const data = await gql(`query ConsoleTimeline($customer: ID!, $field: String, $decision: String, $subject: String, $since: DateTime, $until: DateTime, $first: Int, $after: String) {
          accessLog(customer: $customer, field: $field, decision: $decision, subject: $subject, since: $since, until: $until, first: $first, after: $after) {
            edges { node { ${RECORD_FIELDS} fields(customer: $customer) { customer field decision policy }
              writes(customer: $customer) { mutation system fields outcome } } }
            pageInfo { hasNextPage endCursor } } }`, { ...filters, first, after });
        return { rows: data.accessLog.edges.map((e) => e.node), pageInfo: data.accessLog.pageInfo };
      },
    });
    table.section.id = "timeline-table";
    root.append(table.section);
    await table.load();
  }

  async function footprintView(root, params) {
    const subject = params.get("subject") || "";
    const range = params.get("range") || "7d";
    const input = h("input", { id: "p-subject", class: "wide", value: subject, autocomplete: "off" });
    const rangeInput = rangeSelect("p-range", range);
    const form = h("form", { class: "filters", onsubmit: (event) => {
      event.preventDefault();
      go("footprint", { subject: input.value.trim(), range: rangeInput.value });
    } }, field("footprint.subject", input), field("range", rangeInput),
    h("div", {}, h("button", { type: "submit" }, t("footprint.show"))));
    const head = h("section", { class: "panel" }, h("h1", { tabindex: "-1" }, t("footprint.title")), form);
    root.replaceChildren(head);
    if (!subject) {
      head.append(h("p", {}, t("footprint.pick")));
      return;
    }
    const since = params.get("since") || ago(RANGE_HOURS[range] || 168);
    const until = params.get("until") || null;
    // The summary and both tables are asked at once: the view is ready when the slowest
    // answers, not after the three one by one. They share the range as asked (an open end
    // is "now" to each).
    const scope = { subject, since, until };
    const summary = gql(`query ConsoleFootprint($subject: String!, $since: DateTime, $until: DateTime, $zone: String!) {
      accessFootprint(subject: $subject, since: $since, until: $until, timeZone: $zone) {
        since until requests customers deniedRequests
        days { day customers requests } decisions { field decision count } } }`,
    { subject, since, until, zone: ZONE });
    const seen = seenTable(subject, scope);
    const denied = deniedTable(subject, scope);
    const grid = h("div", { class: "grid" });
    root.append(grid, seen.section, denied.section);
    const [data] = await Promise.all([summary, seen.load(), denied.load()]);
    const fp = data.accessFootprint;
    head.append(
      h("p", { class: "note" }, `${when(fp.since)} – ${when(fp.until)}`),
      h("dl", { class: "stats" },
        h("div", { class: "stat" }, h("dt", {}, t("footprint.requests")), h("dd", {}, h("b", {}, fp.requests))),
        h("div", { class: "stat" }, h("dt", {}, t("footprint.customers")), h("dd", {}, h("b", { id: "fp-customers" }, fp.customers))),
        h("div", { class: "stat" }, h("dt", {}, t("footprint.denied")), h("dd", {}, h("b", {}, fp.deniedRequests)))));
    const days = fp.days.map((d) => ({ label: d.day.slice(5), parts: { customers: d.customers } }));
    const perDecision = {};
    for (const { field: name, decision, count: n } of fp.decisions) {
      perDecision[name] = perDecision[name] || { field: name, allow: 0, mask: 0, deny: 0 };
      perDecision[name][decision] = n;
    }
    const countColumn = (decision) => ({ label: `col.${decision}`, num: true, cell: (r) => r[decision], csv: (r) => r[decision] });
    grid.append(
      h("section", { class: "panel", id: "chart-days" }, stackedBars({ title: t("footprint.perday"), buckets: days, keys: ["customers"],
        labelOf: () => t("footprint.customers"), tickEvery: Math.max(1, Math.ceil(days.length / 10)) })),
      summaryTable({
        id: "footprint-decisions",
        title: t("footprint.decisions"),
        columns: [{ label: "col.field", cell: (r) => r.field, csv: (r) => r.field }, ...DECISIONS.map(countColumn)],
        rows: Object.values(perDecision),
        exportAs: { view: "FOOTPRINT", table: "FOOTPRINT_DECISIONS", filters: scope, name: `c360-decisions-${subject}.csv` },
      }));
  }

  function seenTable(subject, scope) {
    const table = pagedTable({
      title: t("footprint.seen"),
      columns: [
        { label: "col.customer", mono: true, cell: (r) => link("timeline", { customer: r.customer, subject }, r.customer), csv: (r) => r.customer },
        { label: "col.accesses", num: true, cell: (r) => r.accesses, csv: (r) => r.accesses },
        { label: "col.lastseen", cell: (r) => when(r.lastSeen), csv: (r) => r.lastSeen },
      ],
      exportAs: { view: "FOOTPRINT", table: "FOOTPRINT_CUSTOMERS", filters: scope, name: `c360-footprint-${subject}.csv` },
      fetch: async (after, first) => {
        const page = await gql(`query ConsoleFootprintCustomers($subject: String!, $since: DateTime, $until: DateTime, $zone: String!, $first: Int, $after: String) {
          accessFootprint(subject: $subject, since: $since, until: $until, timeZone: $zone) {
            customersSeen(first: $first, after: $after) { edges { node { customer accesses lastSeen } } pageInfo { hasNextPage endCursor } } } }`,
        { ...scope, zone: ZONE, first, after });
        const found = page.accessFootprint.customersSeen;
        return { rows: found.edges.map((e) => e.node), pageInfo: found.pageInfo };
      },
    });
    table.section.id = "footprint-customers";
    return table;
  }

  function deniedTable(subject, scope) {
    const deniedOnly = (r) => ({ ...r, fields: r.fields.filter((f) => f.decision === "deny") });
    const table = pagedTable({
      title: t("footprint.deniedlist"),
      columns: [
        { label: "col.when", width: "when", cell: (r) => when(r.ts), csv: (r) => r.ts },
        { label: "col.customer", mono: true, cell: (r) => h("div", {}, [...new Set(r.fields.map((f) => f.customer))].map((c) => h("div", {}, link("timeline", { customer: c, decision: "deny" }, c)))),
          csv: (r) => [...new Set(r.fields.map((f) => f.customer))].join(" ") },
        { label: "col.fields", cell: (r) => h("div", { class: "chips" }, r.fields.map((f) => chip(f.field, f.decision, f.policy))),
          csv: (r) => r.fields.map((f) => `${f.customer}.${f.field} (${f.policy || ""})`).join("; ") },
        { label: "col.purpose", cell: (r) => r.purpose || "—", csv: (r) => r.purpose },
        { label: "col.trace", mono: true, cell: (r) => r.traceId || "—", csv: (r) => r.traceId },
      ],
      exportAs: { view: "FOOTPRINT", table: "FOOTPRINT_DENIED", filters: { ...scope, decision: "deny" }, name: `c360-denied-${subject}.csv` },
      fetch: async (after, first) => {
        const page = await gql(`query ConsoleDenied($subject: String!, $since: DateTime, $until: DateTime, $first: Int, $after: String) {
          accessLog(subject: $subject, decision: "deny", since: $since, until: $until, first: $first, after: $after) {
            edges { node { ${RECORD_FIELDS} fields { customer field decision policy } } } pageInfo { hasNextPage endCursor } } }`,
        { ...scope, first, after });
        return { rows: page.accessLog.edges.map((e) => deniedOnly(e.node)), pageInfo: page.accessLog.pageInfo };
      },
    });
    table.section.id = "footprint-denied";
    return table;
  }

  function alertDetail(alert) {
    const span = duration(alert.windowSeconds);
    return alert.type === "bulk_access"
      ? t("alerts.bulkdetail", { n: alert.distinctCustomers, w: span, t: alert.threshold })
      : t("alerts.denieddetail", { n: alert.deniedFields, w: span, t: alert.threshold });
  }

  function footprintOf(node) {
    const at = new Date(node.ts).getTime();
    const span = (node.alert.windowSeconds || 3600) * 1000;
    return { subject: node.subject, since: new Date(at - span).toISOString(), until: new Date(at + 3600000).toISOString() };
  }

  async function alertsView(root, params) {
    const show = params.get("state") || "open";
    const stateSelect = select("a-state", [["open", t("alerts.open")], ["all", t("alerts.all")]], show);
    stateSelect.addEventListener("change", () => go("alerts", { state: stateSelect.value }));
    root.replaceChildren(h("section", { class: "panel" }, h("h1", { tabindex: "-1" }, t("alerts.title")),
      h("div", { class: "filters" }, field("col.state", stateSelect))));
    const acknowledged = show === "open" ? false : null;
    let table;
    const acknowledge = async (id, resolution) => {
      await gql(`mutation ConsoleAcknowledge($id: ID!, $resolution: AlertResolution!) {
        acknowledgeAccessAlert(id: $id, resolution: $resolution) { id } }`, { id, resolution });
      await table.load("heading"); // the button pressed is gone with its row's state
    };
    const ackText = (ack, at) => t("alerts.acked", { by: ack.by || "—", at, resolution: t(`resolution.${ack.resolution}`) });
    const stateCell = (edge) => {
      const ack = edge.acknowledgement;
      if (ack) return h("span", { class: "ok" }, ackText(ack, when(ack.at)));
      const id = `res-${edge.node.id.replace(/[^A-Za-z0-9]/g, "-")}`;
      const resolution = select(id, RESOLUTIONS.map((r) => [r, t(`resolution.${r.toLowerCase()}`)]), "REVIEWED");
      return h("div", { class: "filters" },
        h("div", {}, h("label", { for: id }, t("alerts.resolution")), resolution),
        h("div", {}, h("button", { type: "button", "data-ack": edge.node.id,
          onclick: (event) => { event.target.disabled = true; acknowledge(edge.node.id, resolution.value).catch(fail); } }, t("alerts.ack"))));
    };
    table = pagedTable({
      title: t("alerts.title"),
      columns: [
        { label: "col.when", width: "when", cell: (e) => when(e.node.ts), csv: (e) => e.node.ts },
        { label: "col.type", cell: (e) => t(`alerts.${e.node.alert.type}`), csv: (e) => e.node.alert.type },
        { label: "col.subject", cell: (e) => h("div", {}, h("div", {}, e.node.subject || "—"), e.node.subject ? link("footprint", footprintOf(e.node), t("alerts.footprint")) : null), csv: (e) => e.node.subject },
        { label: "col.detail", cell: (e) => alertDetail(e.node.alert), csv: (e) => alertDetail(e.node.alert) },
        { label: "col.state", width: "wide", cell: stateCell,
          csv: (e) => (e.acknowledgement ? ackText(e.acknowledgement, e.acknowledgement.at) : t("alerts.open")) },
      ],
      // null: every alert, and the export's record says so ("all")
      exportAs: { view: "ALERTS", table: "ALERTS", filters: { acknowledged }, name: "c360-alerts.csv" },
      fetch: async (after, first) => {
        const data = await gql(`query ConsoleAlerts($acknowledged: Boolean, $first: Int, $after: String) {
          accessAlerts(acknowledged: $acknowledged, first: $first, after: $after) {
            edges { node { id ts subject roles alert { type distinctCustomers deniedFields threshold windowSeconds } }
                    acknowledgement { id by at resolution } }
            pageInfo { hasNextPage endCursor } } }`, { acknowledged, first, after });
        return { rows: data.accessAlerts.edges, pageInfo: data.accessAlerts.pageInfo };
      },
    });
    table.section.id = "alerts-table";
    root.append(table.section);
    await table.load();
  }

  function breakText(b) {
    return t("integrity.at", { seq: b.seq ?? "—", where: b.location, problem: b.problem });
  }

  function integrityPanel(integrity, recheck) {
    const panel = h("section", { class: "panel", id: "integrity" }, h("h2", {}, t("overview.integrity")));
    if (integrity.intact === null) {
      panel.append(h("p", { role: "status" }, t("integrity.checking")));
      return panel;
    }
    panel.append(integrity.intact
      ? h("p", { class: "ok", role: "status" }, t("integrity.intact", { records: integrity.records, chains: integrity.chains.length }))
      : h("p", { class: "bad", role: "status" }, t("integrity.broken")));
    const rows = integrity.chains.map((c) => {
      const broken = integrity.breaks.find((b) => b.chain === c.chain);
      return h("tr", {}, h("td", { class: "mono" }, c.chain), h("td", { class: "num" }, c.lastSeq),
        h("td", {}, broken ? breakText(broken) : "—"));
    });
    for (const b of integrity.breaks.filter((b) => !integrity.chains.some((c) => c.chain === b.chain))) {
      rows.push(h("tr", {}, h("td", { class: "mono" }, b.chain), h("td", { class: "num" }, "—"), h("td", {}, breakText(b))));
    }
    panel.append(h("div", { class: "tablewrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("integrity.chain")), h("th", { scope: "col", class: "num" }, t("integrity.lastseq")), h("th", { scope: "col" }, t("integrity.break")))),
      h("tbody", {}, rows))));
    if (integrity.tornTail) panel.append(h("p", { class: "note" }, t("integrity.torn", { where: integrity.tornTail })));
    panel.append(h("p", { class: "note" }, `${t("integrity.checked")}: ${when(integrity.checkedAt)}${integrity.checking ? ` · ${t("integrity.checking")}` : ""} `,
      h("button", { type: "button", class: "quiet", onclick: recheck }, t("integrity.recheck"))));
    return panel;
  }

  async function overviewView(root, params) {
    const range = params.get("range") || "24h";
    const rangeInput = rangeSelect("o-range", range);
    rangeInput.addEventListener("change", () => go("overview", { range: rangeInput.value }));
    const head = h("section", { class: "panel" }, h("h1", { tabindex: "-1" }, t("overview.title")),
      h("div", { class: "filters" }, field("range", rangeInput)));
    root.replaceChildren(head);
    const data = await gql(`query ConsoleOverview($since: DateTime, $zone: String!) {
      accessOverview(since: $since, timeZone: $zone, top: 10) {
        since until byRole { hour key count } byDecision { hour key count }
        topSubjects { subject customers requests } fields { field allow mask deny } }
      accessLogIntegrity { checking checkedAt intact records chains { chain lastSeq } breaks { chain seq location problem } tornTail } }`,
    { since: ago(RANGE_HOURS[range] || 24), zone: ZONE });
    const o = data.accessOverview;
    head.append(h("p", { class: "note" }, `${when(o.since)} – ${when(o.until)}`));
    const roles = hourBuckets(o.since, o.until, o.byRole);
    const decisions = hourBuckets(o.since, o.until, o.byDecision);
    decisions.keys = DECISIONS.filter((d) => decisions.keys.includes(d));
    const pct = (n, total) => (total ? `${((100 * n) / total).toFixed(1)} %` : "—");
    const fieldRows = o.fields.map((f) => ({ ...f, total: f.allow + f.mask + f.deny }));
    const overviewExport = (id, table) => ({ view: "OVERVIEW", table, filters: { since: o.since, until: o.until }, name: `c360-${id}.csv` });
    const integrityHolder = h("div", {});
    let asked = 0; // each question is an access record: ask less often the longer a check runs
    const showIntegrity = (integrity) => {
      integrityHolder.replaceChildren(integrityPanel(integrity, async () => {
        const again = await gql(`query ConsoleIntegrity($refresh: Boolean!) { accessLogIntegrity(refresh: $refresh) {
          checking checkedAt intact records chains { chain lastSeq } breaks { chain seq location problem } tornTail } }`, { refresh: true });
        showIntegrity(again.accessLogIntegrity);
      }));
      // Asked again while a check runs, and while there is no report yet (a check that
      // failed is started again by the next question).
      if ((integrity.checking || integrity.intact === null) && route().view === "overview") {
        setTimeout(async () => {
          if (!integrityHolder.isConnected) return; // the page moved on; its own overview asks
          try {
            const again = await gql(`query ConsoleIntegrity { accessLogIntegrity {
              checking checkedAt intact records chains { chain lastSeq } breaks { chain seq location problem } tornTail } }`);
            showIntegrity(again.accessLogIntegrity);
          } catch (error) { fail(error); }
        }, integrity.checking ? Math.min(1000 * 2 ** asked++, 10000) : 5000);
      }
    };
    showIntegrity(data.accessLogIntegrity);
    root.append(
      h("div", { class: "grid" },
        h("section", { class: "panel", id: "chart-roles" }, stackedBars({ title: t("overview.byrole"), ...roles })),
        h("section", { class: "panel", id: "chart-decisions" }, stackedBars({ title: t("overview.bydecision"), ...decisions,
          labelOf: (k) => t(`decision.${k}`) }))),
      h("div", { class: "grid" },
        summaryTable({ id: "top-subjects", title: t("overview.top"), columns: [
          { label: "col.subject", cell: (r) => link("footprint", { subject: r.subject, range }, r.subject), csv: (r) => r.subject },
          { label: "col.customers", num: true, cell: (r) => r.customers, csv: (r) => r.customers },
          { label: "col.requests", num: true, cell: (r) => r.requests, csv: (r) => r.requests },
        ], rows: o.topSubjects, exportAs: overviewExport("top-subjects", "TOP_SUBJECTS") }),
        summaryTable({ id: "field-shares", title: t("overview.fields"), columns: [
          { label: "col.field", cell: (r) => r.field, csv: (r) => r.field },
          { label: "col.maskshare", num: true, cell: (r) => pct(r.mask, r.total), csv: (r) => pct(r.mask, r.total) },
          { label: "col.denyshare", num: true, cell: (r) => pct(r.deny, r.total), csv: (r) => pct(r.deny, r.total) },
          { label: "col.requests", num: true, cell: (r) => r.total, csv: (r) => r.total },
        ], rows: fieldRows, exportAs: overviewExport("field-shares", "FIELD_SHARES") })),
      integrityHolder);
  }

  // --- integrity, rights requests, data quality ----------------------------------------

  const INTEGRITY_FIELDS = `checking checkedAt intact records chains { chain lastSeq }
    breaks { chain seq location problem } tornTail checkpointsConfigured
    checkpoint { file scope timestamp keyId treeSize chains { chain size root }
      signatureValid signatureProblem logVerifies comparedAt
      findings { chain kind message fatal } }`;

  function definitions(pairs) {
    return h("dl", { class: "stats" }, pairs.map(([label, value]) =>
      h("div", { class: "stat" }, h("dt", { class: "note" }, t(label)), h("dd", {}, value))));
  }

  function checkpointPanel(integrity) {
    const panel = h("section", { class: "panel", id: "checkpoint" }, h("h2", {}, t("checkpoint.title")));
    const cp = integrity.checkpoint;
    if (!cp) {
      panel.append(h("p", { class: "note", role: "status" },
        t(integrity.checkpointsConfigured ? "checkpoint.none" : "checkpoint.nokey")));
      return panel;
    }
    panel.append(definitions([
      ["checkpoint.time", when(cp.timestamp)],
      ["checkpoint.signer", h("span", { class: "mono" }, cp.keyId)],
      ["checkpoint.scope", cp.scope],
      ["checkpoint.size", numberText(cp.treeSize)],
      ["checkpoint.file", h("span", { class: "mono" }, cp.file)],
    ]));
    panel.append(h("p", { class: cp.signatureValid ? "ok" : "bad", id: "checkpoint-signature" },
      `${t("checkpoint.signature")}: `, cp.signatureValid ? t("checkpoint.sigok")
        : t("checkpoint.sigbad", { problem: cp.signatureProblem || "" })));
    let verdict;
    if (!cp.signatureValid) verdict = h("p", { class: "bad" }, t("checkpoint.untrusted"));
    else if (cp.logVerifies === null) verdict = h("p", { role: "status" }, t("checkpoint.pending"));
    else if (cp.logVerifies) verdict = h("p", { class: "ok", role: "status" }, t("checkpoint.verifies", { at: when(cp.comparedAt) }));
    else verdict = h("p", { class: "bad", role: "status" }, t("checkpoint.fails", { at: when(cp.comparedAt) }));
    verdict.id = "checkpoint-log";
    panel.append(h("h3", {}, t("checkpoint.log")), verdict);
    const rows = cp.chains.map((c) => {
      const found = cp.findings.filter((f) => f.chain === c.chain);
      return h("tr", {}, h("td", { class: "mono" }, c.chain), h("td", { class: "num" }, numberText(c.size)),
        h("td", { class: "mono" }, c.root),
        h("td", {}, found.length ? found.map((f) => h("div", { class: f.fatal ? "bad" : "note" }, `${f.kind}: ${f.message}`)) : "—"));
    });
    for (const f of cp.findings.filter((f) => !cp.chains.some((c) => c.chain === f.chain))) {
      rows.push(h("tr", {}, h("td", { class: "mono" }, f.chain), h("td", { class: "num" }, "—"), h("td", {}, "—"),
        h("td", {}, h("div", { class: f.fatal ? "bad" : "note" }, `${f.kind}: ${f.message}`))));
    }
    panel.append(h("div", { class: "tablewrap" }, h("table", { id: "checkpoint-chains" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("integrity.chain")), h("th", { scope: "col", class: "num" }, t("checkpoint.size")),
        h("th", { scope: "col", class: "wide" }, t("checkpoint.root")), h("th", { scope: "col" }, t("checkpoint.kind")))),
      h("tbody", {}, rows))));
    return panel;
  }

  async function integrityView(root) {
    root.replaceChildren(h("section", { class: "panel" }, h("h1", { tabindex: "-1" }, t("integrity.title"))));
    const holder = h("div", {});
    root.append(holder);
    let asked = 0;
    const show = (integrity) => {
      const recheck = async () => {
        try {
          const again = await gql(`query ConsoleIntegrity($refresh: Boolean!) { accessLogIntegrity(refresh: $refresh) { ${INTEGRITY_FIELDS} } }`, { refresh: true });
          show(again.accessLogIntegrity);
        } catch (error) { fail(error); }
      };
      holder.replaceChildren(checkpointPanel(integrity), integrityPanel(integrity, recheck));
      const pending = integrity.checking || integrity.intact === null;
      if (pending && route().view === "integrity") {
        setTimeout(async () => {
          if (!holder.isConnected) return;
          try {
            const again = await gql(`query ConsoleIntegrity { accessLogIntegrity { ${INTEGRITY_FIELDS} } }`);
            show(again.accessLogIntegrity);
          } catch (error) { fail(error); }
        }, integrity.checking ? Math.min(1000 * 2 ** asked++, 10000) : 5000);
      }
    };
    const data = await gql(`query ConsoleIntegrity { accessLogIntegrity { ${INTEGRITY_FIELDS} } }`);
    show(data.accessLogIntegrity);
  }

  function rightsStatus(r) {
    const status = r.status.toLowerCase();
    const lines = [h("div", { class: r.status === "COMPLETED" || r.status === "LIFTED" ? "ok" : r.status === "IN_FORCE" ? null : "bad" },
      t(`rights.status.${status}`))];
    const systems = (key, list) => (list.length ? h("div", { class: "note" }, t(key, { systems: list.join(", ") })) : null);
    lines.push(systems("rights.failed", r.failed), systems("rights.manual", r.manual),
      systems("rights.unavailable", r.unavailable), systems("rights.erased", r.erased));
    return h("div", {}, lines);
  }

  // --- a person's report (subjectReport) ------------------------------------------------

  // The printable page for the person, as the command line's (templates/subject_report.html):
  // the same labels (`report.*`), content and order, in each of its languages in turn.
  // Every value is the person's own, unmasked: inserted as text, never as HTML.
  function reportPage(report) {
    return h("article", { id: "subject-report" }, REPORT.languages.map((lang) => {
      const r = (key) => LABELS[lang][`report.${key}`];
      const table = (heads, rows) => h("div", { class: "tablewrap" }, h("table", {},
        h("thead", {}, h("tr", {}, heads.map((key) => h("th", { scope: "col" }, r(key))))),
        h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell)))))));
      return h("section", { class: "panel report", lang },
        h("h1", { tabindex: "-1" }, r("title")),
        h("p", {}, `${r("customer")}: `, h("code", {}, report.customer), ` · ${r("generated")}: ${report.generatedAt}`),
        report.systemsUnavailable.length ? h("p", { class: "bad" }, `${r("unavailable")}: ${report.systemsUnavailable.join(", ")}`) : null,
        h("h2", {}, r("records")),
        report.records.length ? report.records.flatMap((record) => [
          h("h3", {}, `${record.system} · ${record.entity} · ${record.key}`),
          table(["field", "value"], record.values.map((v) => [v.name, v.value ?? ""])),
        ]) : h("p", {}, r("none")),
        h("h2", {}, r("accesses")),
        table(["when", "who", "why", "what"], report.accesses.map((a) => [
          a.at, `${a.subject || ""} (${a.roles.join(", ")})`, a.purpose || "",
          a.fields.map((f) => `${f.field}: ${f.decision}`).join(", ")])));
    }));
  }

  // The report as JSON, for the person to take elsewhere: a file made in the page, never a
  // URL that holds it.
  function downloadJson(report) {
    const blob = new Blob([`${JSON.stringify(report, null, 2)}\n`], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const anchor = h("a", { href: url, download: `c360-subject-report-${report.customer}.json`, hidden: true });
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // The lookup and, once run, the report with its Print and JSON controls. What the officer
  // types goes in the request's body only: not in the URL, not in storage, and the field is
  // emptied once the report is shown. The report is asked for the purpose `rights`, so a
  // token holding several purposes acts for that one; the policy file decides the rest.
  // listed(requestId): the rights list shows the new request once the log holds it.
  function reportPanel(listed) {
    const kind = select("s-kind", ["email", "phone", "customer"].map((k) => [k, t(`lookup.by.${k}`)]), "email");
    const key = h("input", { id: "s-key", class: "wide", autocomplete: "off", spellcheck: "false", "aria-describedby": "s-help" });
    const problem = h("p", { class: "error", role: "alert", id: "s-problem" });
    const holder = h("div", { id: "subject-report-holder" });
    const run = h("button", { type: "submit", id: "s-run" }, t("lookup.run"));
    const show = () => {
      const shown = state.report;
      if (!shown) { holder.replaceChildren(); return; }
      const tools = h("section", { class: "panel noprint", id: "report-tools" },
        h("div", { class: "pager" },
          h("button", { type: "button", id: "report-print", onclick: () => window.print() }, t("lookup.print")),
          h("button", { type: "button", class: "quiet", id: "report-json", onclick: () => downloadJson(shown.report) }, t("lookup.json")),
          h("button", { type: "button", class: "quiet", id: "report-close", onclick: () => {
            state.report = null;
            show();
            key.focus();
          } }, t("lookup.close")),
          h("span", { class: "spacer" }),
          shown.requestId ? h("span", { class: "note" }, t("lookup.recorded", { id: shown.requestId })) : null));
      holder.replaceChildren(tools, reportPage(shown.report));
    };
    const form = h("form", { class: "filters", id: "s-form", onsubmit: async (event) => {
      event.preventDefault();
      problem.textContent = "";
      const value = key.value.trim();
      if (!value) { problem.textContent = t("lookup.empty"); return; }
      run.disabled = true;
      try {
        const { response, body } = await send(REPORT.query, { [kind.value]: value }, { "x-purpose": "rights" });
        const errors = body.errors || [];
        const report = body.data && body.data.subjectReport;
        if (!report) {
          // Refused by the policy (FORBIDDEN) or, for a purpose the credential lacks, before it (403)
          const codes = errors.map((e) => (e.extensions || {}).code);
          if (codes.includes("FORBIDDEN") || response.status === 403) problem.textContent = t("lookup.refused");
          else if (codes.includes("NOT_FOUND")) problem.textContent = t("lookup.notfound");
          else problem.textContent = t("lookup.bad", { message: errors.map((e) => e.message).join("; ") || `HTTP ${response.status}` });
          return;
        }
        key.value = "";
        state.report = { report, requestId: response.headers.get("x-request-id") };
        show();
        holder.querySelector("#subject-report h1").focus();
        listed(state.report.requestId);
      } catch (error) {
        fail(error);
      } finally {
        run.disabled = false;
      }
    } }, field("lookup.by", kind), field("lookup.key", key), h("div", {}, run));
    show();
    return h("div", {}, h("section", { class: "panel noprint", id: "subject-lookup" },
      h("h2", {}, t("lookup.title")), h("p", { class: "note", id: "s-help" }, t("lookup.help")), form, problem), holder);
  }

  async function rightsView(root, params) {
    const show = params.get("state") || "all";
    const stateSelect = select("r-state", [["all", t("rights.all")], ["open", t("rights.open")]], show);
    stateSelect.addEventListener("change", () => go("rights", { state: stateSelect.value }));
    const count = h("p", { class: "note", id: "rights-count" });
    root.replaceChildren(h("section", { class: "panel" }, h("h1", { tabindex: "-1" }, t("rights.title")),
      h("p", { class: "note" }, t("rights.help")),
      h("div", { class: "filters" }, field("col.state", stateSelect)), count));
    let shown = [];
    const canTrace = (state.pages || []).includes("timeline");
    const table = pagedTable({
      title: t("rights.title"),
      columns: [
        { label: "col.when", width: "when", cell: (r) => when(r.at) },
        { label: "col.kind", cell: (r) => t(`rights.kind.${r.kind.toLowerCase()}`) },
        { label: "col.customer", mono: true, cell: (r) => (canTrace ? link("timeline", { customer: r.customer }, r.customer) : r.customer) },
        { label: "col.requester", cell: (r) => `${r.requester || "—"}${r.roles.length ? ` (${r.roles.join(", ")})` : ""}` },
        { label: "col.status", width: "wide", cell: rightsStatus },
        { label: "col.request", mono: true, cell: (r) => r.requestId || "—" },
      ],
      fetch: async (after, first) => {
        const data = await gql(`query ConsoleRights($open: Boolean, $first: Int, $after: String) {
          rightsRequests(open: $open, first: $first, after: $after) {
            open total
            edges { node { id at kind customer requester roles purpose client requestId status erased failed manual unavailable } }
            pageInfo { hasNextPage endCursor } } }`, { open: show === "open" ? true : null, first, after });
        const found = data.rightsRequests;
        count.textContent = t("rights.count", { open: found.open, total: found.total });
        shown = found.edges.map((e) => e.node);
        return { rows: shown, pageInfo: found.pageInfo };
      },
    });
    table.section.id = "rights-table";
    // The log holds a request's record shortly after its answer: the list is asked again,
    // less often each time, until it shows the report just run (each ask is a record too).
    const listed = async (requestId) => {
      for (const wait of [0, 250, 500, 1000, 2000]) {
        if (wait) await new Promise((resolve) => setTimeout(resolve, wait));
        if (!table.section.isConnected) return;
        try { await table.load(); } catch (error) { fail(error); return; }
        if (shown.some((r) => r.requestId === requestId)) return;
      }
    };
    root.append(reportPanel(listed), table.section);
    await table.load();
  }

  function share(value) {
    return value === null || value === undefined ? "—" : `${(100 * value).toFixed(1)} %`;
  }

  // rows: [{label, values: [{key, value (0..1 or null)}]}]; one horizontal bar per value
  function shareBars({ title, rows, keys, labelOf }) {
    const width = 560;
    const left = 150;
    const barHeight = 9;
    const rowHeight = keys.length * (barHeight + 2) + 8;
    const height = Math.max(30, rows.length * rowHeight + 18);
    const scale = (width - left - 50) / 1;
    const parts = [];
    rows.forEach((row, i) => {
      const top = 4 + i * rowHeight;
      parts.push(svg("text", { x: left - 6, y: top + rowHeight / 2, "font-size": 10, "text-anchor": "end", fill: "#1d2430" }, row.label));
      row.values.forEach(({ key, value }, j) => {
        const y = top + j * (barHeight + 2);
        const w = value === null || value === undefined ? 0 : Math.max(1, value * scale);
        parts.push(svg("rect", { x: left, y, width: w.toFixed(1), height: barHeight, fill: colorOf(key, keys) },
          svg("title", {}, `${row.label} · ${labelOf(key)}: ${share(value)}`)));
        parts.push(svg("text", { x: left + w + 4, y: y + barHeight - 1, "font-size": 9, fill: "#5b6575" }, share(value)));
      });
    });
    parts.push(svg("line", { x1: left, y1: 0, x2: left, y2: height - 14, stroke: "#9aa6b5" }));
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `${title}. ${rows.map((r) => `${r.label}: ${r.values.map((v) => `${labelOf(v.key)} ${share(v.value)}`).join(", ")}`).join("; ")}` }, parts);
    const legend = h("div", { class: "legend" }, keys.map((k) => h("span", {},
      svg("svg", { class: "swatch", viewBox: "0 0 10 10", "aria-hidden": "true" }, svg("rect", { width: 10, height: 10, fill: colorOf(k, keys) })),
      labelOf(k))));
    return h("figure", { class: "chart" }, h("figcaption", {}, h("h2", {}, title)),
      rows.length ? chart : h("p", { class: "note" }, t("chart.empty")), legend);
  }

  // series: [{key, points: [{at, value}]}]; shares (0..1) or counts
  function lineChart({ title, series, percent }) {
    const width = 560;
    const height = 190;
    const left = 44;
    const bottom = 24;
    const top = 8;
    const times = [...new Set(series.flatMap((s) => s.points.map((p) => p.at)))].sort();
    const values = series.flatMap((s) => s.points.map((p) => p.value)).filter((v) => v !== null && v !== undefined);
    const max = percent ? 1 : Math.max(1, ...values);
    const x = (at) => left + (times.length > 1 ? (times.indexOf(at) * (width - left - 10)) / (times.length - 1) : (width - left) / 2);
    const y = (v) => height - bottom - (v / max) * (height - top - bottom);
    const keys = series.map((s) => s.key);
    const parts = [
      svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#9aa6b5" }),
      svg("text", { x: left - 6, y: top + 10, "font-size": 10, "text-anchor": "end", fill: "#5b6575" }, percent ? "100 %" : String(max)),
      svg("text", { x: left - 6, y: height - bottom, "font-size": 10, "text-anchor": "end", fill: "#5b6575" }, "0"),
    ];
    const every = Math.max(1, Math.ceil(times.length / 6));
    times.forEach((at, i) => {
      if (i % every === 0) parts.push(svg("text", { x: x(at).toFixed(1), y: height - 6, "font-size": 10, "text-anchor": "middle", fill: "#5b6575" }, hourLabel(new Date(at), true)));
    });
    for (const s of series) {
      const points = s.points.filter((p) => p.value !== null && p.value !== undefined);
      const color = colorOf(s.key, keys);
      if (points.length > 1) {
        parts.push(svg("polyline", { points: points.map((p) => `${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`).join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
      }
      for (const p of points) {
        parts.push(svg("circle", { cx: x(p.at).toFixed(1), cy: y(p.value).toFixed(1), r: 3, fill: color },
          svg("title", {}, `${s.key} · ${when(p.at)}: ${percent ? share(p.value) : p.value}`)));
      }
    }
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `${title}. ${series.map((s) => { const last = s.points[s.points.length - 1]; return `${s.key}: ${last ? (percent ? share(last.value) : last.value) : "—"}`; }).join(", ")}` }, parts);
    const legend = h("div", { class: "legend" }, keys.map((k) => h("span", {},
      svg("svg", { class: "swatch", viewBox: "0 0 10 10", "aria-hidden": "true" }, svg("rect", { width: 10, height: 10, fill: colorOf(k, keys) })), k)));
    return h("figure", { class: "chart" }, h("figcaption", {}, h("h2", {}, title)),
      times.length ? chart : h("p", { class: "note" }, t("chart.empty")), legend);
  }

  const QUALITY_FIGURES = {
    matchRate: { label: "quality.matchrate", percent: true, of: "systems" },
    duplicates: { label: "quality.duplicates", percent: false, of: "systems" },
    conflicts: { label: "quality.conflicts", percent: false, of: "systems" },
    completeness: { label: "quality.completeness", percent: true, of: "fields" },
    validity: { label: "quality.validity", percent: true, of: "fields" },
  };

  function trendSeries(trend, figure) {
    const { of } = QUALITY_FIGURES[figure];
    const series = new Map();
    for (const run of trend) {
      for (const item of run[of]) {
        const key = of === "systems" ? item.system : `${item.system}.${item.field}`;
        if (!series.has(key)) series.set(key, { key, points: [] });
        series.get(key).points.push({ at: run.ranAt, value: item[figure] });
      }
    }
    return [...series.values()];
  }

  async function qualityView(root, params) {
    const figure = QUALITY_FIGURES[params.get("figure")] ? params.get("figure") : "matchRate";
    const data = (await gql(`query ConsoleQuality { dataQuality(runs: 30) {
      running worstRanAt
      latest { ranAt systems { system records matchRate duplicates conflicts unlinkable missing error }
        fields { system field check completeness validity records filled invalid } }
      trend { ranAt systems { system matchRate duplicates conflicts } fields { system field completeness validity } }
      worst { system id customer failed } } }`)).dataQuality;
    const status = h("p", { class: "note", role: "status", id: "quality-status" }, data.running ? t("quality.running") : "");
    const run = h("button", { type: "button", id: "quality-run", disabled: data.running, onclick: async () => {
      run.disabled = true;
      try {
        await gql("mutation ConsoleQualityRun { startDataQualityRun }");
        status.textContent = t("quality.started");
        const wait = async () => {
          if (!root.isConnected || route().view !== "quality") return;
          const again = (await gql("query ConsoleQualityRunning { dataQuality(runs: 1) { running } }")).dataQuality;
          if (again.running) setTimeout(() => wait().catch(fail), 3000);
          else render();
        };
        setTimeout(() => wait().catch(fail), 1500);
      } catch (error) { fail(error); }
    } }, t("quality.run"));
    const latest = data.latest;
    root.replaceChildren(h("section", { class: "panel" }, h("h1", { tabindex: "-1" }, t("quality.title")),
      h("p", {}, latest ? t("quality.ran", { at: when(latest.ranAt) }) : t("quality.never")),
      h("div", { class: "pager" }, run, status)));
    if (!latest) return;
    const count = (n) => (n === null || n === undefined ? "—" : numberText(n));
    const systemsTable = summaryTableOf("quality-systems", t("quality.systems"), [
      { label: "col.system", cell: (r) => r.system },
      { label: "quality.records", num: true, cell: (r) => count(r.records) },
      { label: "quality.matchrate", num: true, cell: (r) => share(r.matchRate) },
      { label: "quality.duplicates", num: true, cell: (r) => count(r.duplicates) },
      { label: "quality.conflicts", num: true, cell: (r) => count(r.conflicts) },
      { label: "quality.unlinkable", num: true, cell: (r) => count(r.unlinkable) },
      { label: "quality.missing", num: true, cell: (r) => count(r.missing) },
      { label: "quality.error", cell: (r) => (r.error ? h("span", { class: "bad" }, r.error) : "—") },
    ], latest.systems);
    const fieldRows = latest.fields.map((f) => ({ label: `${f.system}.${f.field}`,
      values: [{ key: "completeness", value: f.completeness }, { key: "validity", value: f.validity }] }));
    const bars = shareBars({ title: t("quality.fields"), rows: fieldRows, keys: ["completeness", "validity"],
      labelOf: (k) => t(`quality.${k}`) });
    const fieldsTable = summaryTableOf("quality-fields", t("quality.fields"), [
      { label: "col.system", cell: (r) => r.system },
      { label: "col.field", cell: (r) => r.field },
      { label: "quality.check", cell: (r) => r.check || "—" },
      { label: "quality.completeness", num: true, cell: (r) => share(r.completeness) },
      { label: "quality.validity", num: true, cell: (r) => share(r.validity) },
      { label: "quality.invalid", num: true, cell: (r) => count(r.invalid) },
    ], latest.fields);
    const figureSelect = select("q-figure", Object.entries(QUALITY_FIGURES).map(([k, v]) => [k, t(v.label)]), figure);
    figureSelect.addEventListener("change", () => go("quality", { figure: figureSelect.value }));
    const trend = h("section", { class: "panel", id: "quality-trend" },
      h("div", { class: "filters" }, field("quality.figure", figureSelect)),
      lineChart({ title: `${t("quality.trend")}: ${t(QUALITY_FIGURES[figure].label)}`,
        series: trendSeries(data.trend, figure), percent: QUALITY_FIGURES[figure].percent }));
    const worst = data.worstRanAt
      ? summaryTableOf("quality-worst", t("quality.worst"), [
        { label: "col.system", cell: (r) => r.system },
        { label: "col.record", mono: true, cell: (r) => r.id },
        { label: "col.customer", mono: true, cell: (r) => r.customer || "—" },
        { label: "col.failed", cell: (r) => r.failed.join(", ") },
      ], data.worst, t("quality.worsthelp", { at: when(data.worstRanAt) }))
      : h("section", { class: "panel", id: "quality-worst" }, h("h2", {}, t("quality.worst")), h("p", { class: "note" }, t("quality.noworst")));
    root.append(systemsTable, h("div", { class: "grid" }, h("section", { class: "panel", id: "chart-quality" }, bars), trend),
      fieldsTable, worst);
  }

  // A plain table of rows the page holds whole (no export: nothing here is personal data).
  function summaryTableOf(id, title, columns, rows, note) {
    return h("section", { class: "panel", id }, h("h2", {}, title), note ? h("p", { class: "note" }, note) : null,
      rows.length ? h("div", { class: "tablewrap" }, h("table", {},
        h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, t(c.label))))),
        h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : c.mono ? "mono" : null }, c.cell(r)))))))) : h("p", { class: "note" }, t("none")));
  }

  const VIEWS = { overview: overviewView, timeline: timelineView, footprint: footprintView, alerts: alertsView,
    integrity: integrityView, rights: rightsView, quality: qualityView };

  // --- the shell ----------------------------------------------------------------------------

  function only(id) {
    for (const section of ["signin", "denied", "view"]) $(`#${section}`).hidden = section !== id;
    const signedIn = Boolean(sessionStorage.getItem(TOKEN_KEY) || state.session);
    $("#signout").hidden = !signedIn;
    $("#whoami").hidden = !signedIn || id === "signin";
    $("#nav").hidden = id !== "view";
  }

  function applyLabels() {
    document.documentElement.lang = state.lang;
    for (const element of document.querySelectorAll("[data-i18n]")) element.textContent = t(element.dataset.i18n);
    for (const element of document.querySelectorAll("[data-i18n-aria]")) element.setAttribute("aria-label", t(element.dataset.i18nAria));
    document.title = `c360 · ${t("title")}`;
    $("#lang").value = state.lang;
    $("#zone").textContent = `${ZONE} (${offset(new Date())})`;
  }

  function subjectOf(token) {
    try {
      const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(payload)).sub || "";
    } catch (error) {
      return "";
    }
  }

  function fail(error) {
    if (error instanceof Unauthenticated || error instanceof Refused) state.report = null;
    if (error instanceof Unauthenticated) {
      const ended = Boolean(state.session) && !sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      state.session = null;
      clearTimeout(state.renewal);
      state.checked = false;
      $("#view").replaceChildren();
      only("signin");
      $("#signin-error").textContent = ended ? "" : t("signin.rejected");
      $("#signin-ended").textContent = ended ? t("signin.ended") : "";
    } else if (error instanceof Refused) {
      $("#view").replaceChildren(); // nothing of the log stays on the page
      only("denied");
      $("#denied h1").focus();
    } else {
      $("#view").append(h("p", { class: "error", role: "alert" }, `${t("error")}: ${error.message}`));
    }
  }

  async function render() {
    applyLabels();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token && SIGNIN.oidc && state.session === undefined) {
      try {
        state.session = await sessionCall("GET");
      } catch (error) {
        state.session = null;
        $("#signin-error").textContent = error.message;
      }
      scheduleRenewal();
    }
    if (!token && !state.session) {
      only("signin");
      return;
    }
    $("#whoami").textContent = `${t("signedin")} ${token ? subjectOf(token) : state.session.subject}`;
    try {
      if (!state.checked) {
        // The pages this principal's policies open; none: the "not allowed" page.
        state.pages = (await gql("query ConsoleSignIn { consolePages }")).consolePages;
        if (!state.pages.length) throw new Refused();
        state.checked = true;
      }
      const { view: asked, params } = route();
      const view = VIEWS[asked] && state.pages.includes(asked) ? asked : state.pages[0];
      if (view !== "rights") state.report = null;
      const draw = VIEWS[view];
      for (const a of document.querySelectorAll("#nav a")) {
        a.hidden = !state.pages.includes(a.dataset.view);
        if (a.dataset.view === view) a.setAttribute("aria-current", "page");
        else a.removeAttribute("aria-current");
      }
      only("view");
      const root = $("#view");
      delete root.dataset.ready;
      root.replaceChildren(h("p", { class: "note" }, t("loading")));
      await draw(root, params);
      if (state.focus) {
        const heading = root.querySelector("h1");
        if (heading) heading.focus();
      }
      root.dataset.ready = view;
    } catch (error) {
      fail(error);
    }
  }

  function start() {
    // The pasted-token sign-in, where it is offered (development, or beside the provider's)
    if ($("#signin-form")) $("#signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("#token").value.trim().replace(/^Bearer\s+/i, "");
      $("#token").value = "";
      $("#signin-error").textContent = "";
      $("#signin-ended").textContent = "";
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      state.checked = false;
      render();
    });
    $("#signout").addEventListener("click", () => {
      if (!sessionStorage.getItem(TOKEN_KEY) && state.session) {
        // The gateway ends the session, then the provider's own sign-out page follows.
        clearTimeout(state.renewal);
        state.report = null;
        $("#view").replaceChildren();
        location.assign("/console/logout");
        return;
      }
      sessionStorage.removeItem(TOKEN_KEY);
      state.checked = false;
      state.report = null;
      $("#view").replaceChildren();
      render();
    });
    $("#lang").addEventListener("change", () => {
      state.lang = $("#lang").value;
      localStorage.setItem(LANG_KEY, state.lang);
      render();
    });
    window.addEventListener("hashchange", () => {
      if (!isRoute(location.hash)) return;
      state.focus = true;
      render();
    });
    // Skipping to the content moves the keyboard there and leaves the route as it is: the
    // link's own "#main" would be read as a view.
    $(".skip").addEventListener("click", (event) => {
      event.preventDefault();
      ($("#view:not([hidden]) h1") || $("#main")).focus();
    });
    render();
  }

  start();
})();
