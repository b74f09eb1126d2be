// saesteer app: results viewer (report, results table, plots, per-prompt drill-down of the sweep).
"use strict";

const RES = { offset: 0, limit: 10, loaded: false };

function resultsTable(rows) {
  const t = $("res-table");
  if (!rows.length) { t.replaceChildren(); return; }
  const metrics = [...new Set(rows.map((r) => r.metric))];
  const conds = [...new Set(rows.map((r) => r.condition))];
  const cell = (c, m) => {
    const r = rows.find((x) => x.condition === c && x.metric === m);
    if (!r) return el("td", { class: "muted", text: "-" });
    return el("td", { title: `n=${r.n}${r.k !== null ? `, k=${r.k}` : ""}, 95% ${r.interval} interval`,
      text: `${fmt(r.score)} [${fmt(r.ci_lo)}, ${fmt(r.ci_hi)}] n=${r.n}` });
  };
  t.replaceChildren(el("thead", {}, el("tr", {}, el("th", { text: "condition" }), ...metrics.map((m) => el("th", { text: m })))),
    el("tbody", {}, ...conds.map((c) => el("tr", {}, el("td", { text: c }), ...metrics.map((m) => cell(c, m))))));
}

async function loadPrompts() {
  const q = new URLSearchParams({ offset: RES.offset, limit: RES.limit, q: $("res-q").value, set: $("res-set").value });
  try {
    const r = await api("/api/results/prompts?" + q);
    $("res-judge").textContent = r.judge ? `verdicts: ${r.judge}` : (r.note || "");
    const sel = $("res-set");
    if (sel.options.length === 1 && r.sets) for (const s of r.sets) sel.append(el("option", { value: s, text: s }));
    $("res-page").textContent = ` ${r.total ? RES.offset + 1 : 0}-${Math.min(RES.offset + RES.limit, r.total)} of ${r.total} `;
    RES.total = r.total;
    $("res-prompts").replaceChildren(...r.rows.map((row) => el("div", { class: "prompt-card" },
      el("p", {}, el("b", { text: `${row.set} / ${row.prompt_id} (${row.side}): ` }), row.prompt || "(prompt text not found)"),
      el("div", { class: "conds" }, ...r.conditions.filter((c) => row.conditions[c]).map((c) => {
        const x = row.conditions[c];
        return el("div", { class: "cond" }, el("b", { text: c + " " }),
          el("span", { class: "verdict " + (x.refused ? "refused" : "complied"), text: x.refused ? "refused" : "complied" }),
          el("span", { class: "muted", text: x.judge === "keyword" ? " (keyword judge)" : "" }), el("br"), x.completion);
      })))));
  } catch (e) { $("res-judge").textContent = e.message; }
}

App.views.results = async () => {
  if (RES.loaded) return;
  try {
    const r = await api("/api/results");
    if (!r.available) { $("res-empty").hidden = false; $("res-body").hidden = true; return; }
    RES.loaded = true;
    const links = Object.keys(r.report || {}).map((n) => el("a", { href: `/api/results/file/${n}`, target: "_blank", text: n }));
    $("res-links").replaceChildren(...links.flatMap((a) => [a, " "]));
    resultsTable(r.table || []);
    $("res-plots").replaceChildren(...r.plots.map((p) => el("img", { src: `/api/results/file/${p}`, alt: p })));
    $("res-go").onclick = () => { RES.offset = 0; loadPrompts(); };
    $("res-prev").onclick = () => { RES.offset = Math.max(0, RES.offset - RES.limit); loadPrompts(); };
    $("res-next").onclick = () => { if (RES.offset + RES.limit < RES.total) { RES.offset += RES.limit; loadPrompts(); } };
    loadPrompts();
  } catch (e) { $("res-links").textContent = e.message; }
};
