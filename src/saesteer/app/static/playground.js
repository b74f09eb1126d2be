// saesteer app: steering playground (three outputs streamed side by side over server-sent events).
"use strict";

const PG = { controller: null, features: [], initialised: false };
const ROW_IDS = ["baseline", "steered", "conditional"];

async function featureBounds(fid) {
  const p = await api(`/api/features/${fid}?brief=1`);
  return p.bounds;
}

function addFeature(fid, value) {
  const row = { feature: fid, value: value };
  const box = el("div", { class: "feat" });
  const idIn = el("input", { type: "number", min: "0", value: String(fid), style: "width:6em", class: "f-id" });
  const slider = el("input", { type: "range", step: "any", class: "f-slider" });
  const num = el("input", { type: "number", step: "any", value: String(value), style: "width:7em", class: "f-value" });
  const note = el("span", { class: "muted" });
  const setValue = (v) => { row.value = v; num.value = String(v); slider.value = String(v); updateCommand(); };
  async function setBounds() {
    row.feature = parseInt(idIn.value, 10);
    try {
      const b = await featureBounds(row.feature);
      slider.min = String(b.lo); slider.max = String(b.hi); slider.value = String(row.value);
      note.textContent = `range [${fmt(b.lo)}, ${fmt(b.hi)}] (${b.basis})`;
    } catch (e) { note.textContent = e.message; }
    updateCommand();
  }
  idIn.addEventListener("change", setBounds);
  slider.addEventListener("input", () => setValue(parseFloat(slider.value)));
  num.addEventListener("change", () => setValue(parseFloat(num.value)));
  const remove = el("button", { text: "x", onclick: () => { PG.features = PG.features.filter((r) => r !== row); box.remove(); updateCommand(); } });
  box.append("feature ", idIn, " clamp ", slider, num, remove, el("br"), note);
  $("pg-features").append(box);
  PG.features.push(row);
  setBounds();
}

function addMessage(role, content) {
  const sel = el("select", {}, ...["user", "assistant", "system"].map((r) => el("option", { value: r, text: r })));
  sel.value = role;
  const ta = el("textarea", { rows: "2" });
  ta.value = content || "";
  const box = el("div", { class: "msg" }, sel, ta, el("button", { text: "x", onclick: () => { box.remove(); updateCommand(); } }));
  ta.addEventListener("change", updateCommand);
  $("pg-messages").append(box);
}

function requestBody() {
  const chat = $("pg-mode-chat").checked;
  const body = {
    features: PG.features.map((r) => ({ feature: r.feature, value: r.value })),
    max_new_tokens: parseInt($("pg-max").value, 10),
    do_sample: $("pg-sample").checked,
    gate: { enabled: $("gate-enabled").checked },
  };
  const gf = $("gate-feature").value, gt = $("gate-threshold").value;
  if (body.gate.enabled && gf !== "") body.gate.feature = parseInt(gf, 10);
  if (body.gate.enabled && gt !== "") body.gate.threshold = parseFloat(gt);
  if (chat) {
    body.messages = [...$("pg-messages").querySelectorAll(".msg")].map((m) => ({
      role: m.querySelector("select").value, content: m.querySelector("textarea").value }));
  } else body.prompt = $("pg-prompt").value;
  return body;
}

let commandTimer = null;
function updateCommand() {
  clearTimeout(commandTimer);
  commandTimer = setTimeout(async () => {
    try {
      const r = await api("/api/command", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(requestBody()) });
      $("pg-command").textContent = r.command;
      $("pg-error").textContent = "";
    } catch (e) { $("pg-error").textContent = e.message; }
  }, 200);
}

function showGate(g) {
  const span = $("gate-decision");
  span.replaceChildren(el("span", { text: `score ${fmt(g.score, 4)} vs threshold ${fmt(g.threshold, 4)}: ` }),
    el("span", { class: g.fires ? "fires" : "holds", id: "gate-verdict", text: g.fires ? "fires (steered)" : "does not fire (not steered)" }),
    el("span", { class: "muted", text: ` at ${g.hook}, ${g.reduce} token` }));
}

function handleEvent(type, d, rows) {
  if (type === "meta") {
    $("pg-command").textContent = d.command;
  } else if (type === "start") {
    $("pg-timing").textContent = `started after ${d.queue_wait_s.toFixed(2)} s in the queue`;
  } else if (type === "gate") {
    showGate(d);
  } else if (type === "token") {
    $("out-" + rows[d.row]).textContent += d.text;
  } else if (type === "row_done") {
    $("st-" + rows[d.row]).textContent = `done: ${d.n_tokens} tokens`;
  } else if (type === "end") {
    if (d.cancelled) $("pg-timing").textContent = "stopped";
    else $("pg-timing").textContent = `${d.seconds.toFixed(2)} s; first token after ${fmt(d.first_token_s)} s; ${fmt(d.tokens_per_s)} tokens/s over all outputs`;
  } else if (type === "error") {
    $("pg-error").textContent = d.error;
  }
}

async function runGeneration() {
  $("pg-error").textContent = "";
  for (const r of ROW_IDS) { $("out-" + r).textContent = ""; $("st-" + r).textContent = ""; }
  const gateOn = $("gate-enabled").checked;
  $("gate-decision").textContent = gateOn ? "scoring..." : "off";
  if (!gateOn) $("st-conditional").textContent = "gate off: enable the gate to see this output";
  const ctrl = new AbortController();
  PG.controller = ctrl;
  $("pg-run").disabled = true; $("pg-stop").disabled = false;
  try {
    const res = await fetch("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()), signal: ctrl.signal });
    if (!res.ok) {
      let msg = `HTTP ${res.status}`;
      try { msg = (await res.json()).error || msg; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "", rows = ROW_IDS;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
        let type = "message", data = "";
        for (const line of chunk.split("\n")) {
          if (line.startsWith("event: ")) type = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        const d = JSON.parse(data);
        if (type === "meta") rows = d.rows;
        handleEvent(type, d, rows);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") $("pg-error").textContent = e.message;
  } finally {
    $("pg-run").disabled = false; $("pg-stop").disabled = true; PG.controller = null;
  }
}

function initPlayground() {
  if (PG.initialised) return;
  PG.initialised = true;
  const info = App.info || {};
  document.querySelectorAll("input[name=pg-mode]").forEach((r) => r.addEventListener("change", () => {
    const chat = $("pg-mode-chat").checked;
    $("pg-chat").hidden = !chat; $("pg-prompt").hidden = chat;
    if (chat && !$("pg-messages").children.length) addMessage("user", $("pg-prompt").value);
    updateCommand();
  }));
  $("pg-add-msg").onclick = () => addMessage("user", "");
  $("pg-add-feature").onclick = () => addFeature(0, 0);
  $("pg-run").onclick = runGeneration;
  $("pg-stop").onclick = () => { if (PG.controller) PG.controller.abort(); };
  for (const id of ["pg-prompt", "pg-max", "pg-sample", "gate-enabled", "gate-feature", "gate-threshold"]) {
    $(id).addEventListener("change", updateCommand);
  }
  if (info.gate) {
    $("gate-default").textContent = `default: ${info.gate.description}`;
    if (info.gate.feature !== null && info.gate.feature !== undefined) $("gate-feature").value = String(info.gate.feature);
    $("gate-threshold").value = String(info.gate.threshold);
  }
  const first = info.chosen !== null && info.chosen !== undefined ? info.chosen : 0;
  if (!App.pending) addFeature(first, 0);
}

App.views.playground = () => {
  initPlayground();
  if (App.pending) {
    const p = App.pending; App.pending = null;
    const have = PG.features.find((r) => r.feature === p.feature);
    if (!have) addFeature(p.feature, Number(p.value.toPrecision(3)));
  }
  updateCommand();
};
