// saesteer app: router, status, feature browser. Served locally; no external assets.
"use strict";

const $ = (id) => document.getElementById(id);
const App = { info: null, views: {}, pending: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

async function api(path, options) {
  const res = await fetch(path, options);
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || `HTTP ${res.status}`);
  return body;
}

const fmt = (x, d = 3) => (x === null || x === undefined ? "-" : Number(x).toPrecision(d));

// --- router ----------------------------------------------------------------------------------
function route() {
  const h = location.hash || "#/features";
  const parts = h.slice(2).split("/");
  let view = parts[0] || "features";
  if (view === "feature") view = "feature";
  document.querySelectorAll(".view").forEach((v) => v.classList.remove("shown"));
  const sec = $("view-" + view) || $("view-features");
  sec.classList.add("shown");
  document.querySelectorAll("header nav a").forEach((a) => a.classList.remove("active"));
  const nav = $("nav-" + (view === "feature" ? "features" : view));
  if (nav) nav.classList.add("active");
  const handler = App.views[view];
  if (handler) handler(parts.slice(1));
}

// --- status ----------------------------------------------------------------------------------
async function loadInfo() {
  App.info = await api("/api/info");
  const s = App.info.sae;
  $("status").textContent = `${App.info.model} | SAE ${s.architecture} d_sae=${s.d_sae} at ${s.hook}`;
  showCache(App.info.cache);
  return App.info;
}

function showCache(c) {
  const pct = Math.round(100 * (c.fraction || 0));
  $("cache-bar").style.width = pct + "%";
  const words = { ready: "activation cache ready", error: "cache failed: " + c.message };
  $("cache-text").textContent = words[c.state] || `building activation cache ${c.done}/${c.total} (${pct}%)`;
  $("cache-status").dataset.state = c.state;
}

async function pollCache() {
  try {
    const c = await api("/api/cache");
    const was = $("cache-status").dataset.state;
    showCache(c);
    if (c.state === "ready" && was !== "ready") route();  // refresh the view with the cache's data
    if (c.state !== "ready" && c.state !== "error") setTimeout(pollCache, 1000);
  } catch (_) { setTimeout(pollCache, 3000); }
}

// --- feature list ----------------------------------------------------------------------------
async function searchFeatures() {
  const q = $("search").value;
  const tbody = $("feature-list").querySelector("tbody");
  try {
    const r = await api("/api/features?limit=100&q=" + encodeURIComponent(q));
    tbody.replaceChildren(...r.results.map((f) => el("tr", { class: "feature-row" },
      el("td", {}, el("a", { href: `#/feature/${f.feature}`, text: String(f.feature) })),
      el("td", { text: f.label + (f.role ? ` [${f.role}]` : "") }),
      el("td", { text: (f.top_tokens || []).map((t) => JSON.stringify(t.token)).join(" ") }),
      el("td", { text: fmt(f.freq) }), el("td", { text: fmt(f.max_act) }))));
    $("search-note").textContent = `${r.total} match${r.total === 1 ? "" : "es"} (${r.kind})` +
      (r.cache.state !== "ready" ? "; token search waits for the activation cache" : "");
  } catch (e) { $("search-note").textContent = e.message; }
}
App.views.features = () => searchFeatures();

// --- feature page ----------------------------------------------------------------------------
function contextRow(c) {
  const top = Math.max(c.peak, 1e-9);
  const peakAt = c.acts.indexOf(Math.max(...c.acts));
  const spans = c.pieces.map((p, i) => {
    const a = Math.max(c.acts[i], 0) / top;
    return el("span", { class: "tok" + (i === peakAt ? " peak" : ""), title: c.acts[i].toFixed(3),
      style: `background: rgba(255,120,0,${Math.min(a, 1).toFixed(2)})`, text: p.replace(/\n/g, "\u21b5") });
  });
  return el("div", { class: "ctx" }, el("span", { class: "src", text: `${c.source} ${c.peak.toFixed(2)}` }), ...spans);
}

function histogram(h) {
  const box = $("hist");
  if (!h || !h.counts.length) { box.replaceChildren(el("span", { class: "muted", text: "never active" })); return; }
  const top = Math.max(...h.counts.map((c) => Math.log10(c + 1))) || 1;
  box.replaceChildren(...h.counts.map((c, i) => el("div", {
    title: `${h.edges[i].toFixed(3)}-${h.edges[i + 1].toFixed(3)}: ${c}`,
    style: `height:${(100 * Math.log10(c + 1) / top).toFixed(1)}%` })));
  const axis = el("div", { class: "hist-axis" }, el("span", { text: "0" }),
    el("span", { text: "count (log scale) by activation" }), el("span", { text: h.edges[h.edges.length - 1].toFixed(2) }));
  box.after(axis);
  App.histAxis = axis;
}

function lens(l) {
  const list = (xs) => xs.map((t) => el("span", { title: t.logit.toFixed(3), text: JSON.stringify(t.token) }));
  $("lens").replaceChildren(el("div", { class: "lens" }, el("b", { text: "promotes " }), ...list(l.promoted)),
    el("div", { class: "lens neg" }, el("b", { text: "suppresses " }), ...list(l.suppressed)));
}

function screen(s) {
  if (!s) { $("screen").replaceChildren(el("span", { class: "muted", text: "not in features.json" })); return; }
  const rows = [];
  if (s.role) rows.push(el("p", {}, el("b", { text: `role: ${s.role}` })));
  if (s.clamp) rows.push(el("p", { text: `clamp ${fmt(s.clamp.value)} (= ${fmt(s.clamp.x_max)} x max ${fmt(s.clamp.ref_max)})` }));
  for (const c of s.cheap) rows.push(el("p", { text: `cheap screen: objective ${fmt(c.objective)}, harmful score shift ${fmt(c.d_harmful_score)}, harmless ${fmt(c.d_harmless_score)}` }));
  for (const g of s.generation) {
    rows.push(el("p", { text: `generation screen: harmful refusal ${fmt(g.harmful.rate)} (n=${g.harmful.n}), gain ${fmt(g.gain.d)} [${fmt(g.gain.lo)}, ${fmt(g.gain.hi)}], over-refusal ${fmt(g.over_refusal.d)}; ${g.passes ? "passes" : "fails"}` }));
  }
  if (s.ranks) rows.push(el("p", { class: "muted", text: "ranks: " + Object.entries(s.ranks).map(([k, v]) => `${k} ${v}`).join(", ") }));
  $("screen").replaceChildren(...rows);
}

App.views.feature = async (args) => {
  const fid = parseInt(args[0], 10);
  $("fp-title").textContent = `Feature ${fid}`;
  $("contexts").replaceChildren(el("span", { class: "muted", text: "loading..." }));
  if (App.histAxis) { App.histAxis.remove(); App.histAxis = null; }
  try {
    const p = await api(`/api/features/${fid}`);
    $("fp-label").textContent = [p.label, p.notes].filter(Boolean).join(" - ");
    const b = p.bounds;
    $("fp-bounds").textContent = `clamp range [${fmt(b.lo)}, ${fmt(b.hi)}]: ${b.basis}`;
    $("fp-steer").onclick = () => { App.pending = { feature: fid, value: b.max_act ? 4 * b.max_act : 1 }; location.hash = "#/playground"; };
    if (p.card) {
      const c = p.card;
      $("density").textContent = `active on ${(100 * c.freq).toFixed(3)}% of ${c.n_tokens} tokens (log10 ${fmt(c.log10_freq)}); mean ${fmt(c.mean_act)}, max ${fmt(c.max_act)}`;
      $("contexts").replaceChildren(...(c.contexts.length ? c.contexts.map(contextRow) : [el("span", { class: "muted", text: "never active in the activation cache" })]));
      histogram(c.histogram);
    } else {
      $("density").textContent = "waiting for the activation cache";
      $("contexts").replaceChildren(el("span", { class: "muted", text: "the activation cache is being built; this page fills in when it is ready" }));
      $("hist").replaceChildren();
    }
    lens(p.logit_lens);
    $("nearest").replaceChildren(...p.nearest.map((n) => el("li", {}, el("a", { href: `#/feature/${n.feature}`, text: String(n.feature) }),
      el("span", { class: "muted", text: ` cos ${n.cosine.toFixed(3)} ${n.label}` }))));
    screen(p.screen);
  } catch (e) { $("contexts").replaceChildren(el("span", { class: "error", text: e.message })); }
};

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  $("search-go").onclick = searchFeatures;
  $("search").addEventListener("keydown", (e) => { if (e.key === "Enter") searchFeatures(); });
  try { await loadInfo(); } catch (e) { $("status").textContent = e.message; }
  pollCache();
  route();
});
