// glassgpt chat page: plain JS, no build step. Talks to the same server's
// OpenAI-compatible API (/v1/models, /v1/chat/completions with stream: true).
"use strict";
const $ = (id) => document.getElementById(id);
const state = {
  messages: JSON.parse(localStorage.getItem("glassgpt.messages") || "[]"),
  usage: JSON.parse(localStorage.getItem("glassgpt.usage") || '{"prompt":0,"completion":0,"cost":0}'),
  models: {}, images: [], controller: null,
};
$("apikey").value = localStorage.getItem("glassgpt.key") || "";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}
function save() {
  localStorage.setItem("glassgpt.messages", JSON.stringify(state.messages));
  localStorage.setItem("glassgpt.usage", JSON.stringify(state.usage));
}
function setStatus(t) { $("status").textContent = t || ""; }

function bubble(role, text, images) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const r = document.createElement("span");
  r.className = "role";
  r.textContent = role === "error" ? "error" : role;
  const t = document.createElement("span");
  t.className = "text";
  t.textContent = text || "";
  div.append(r, t);
  for (const src of images || []) { const img = document.createElement("img"); img.src = src; div.append(img); }
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}
function render() {
  $("messages").innerHTML = "";
  for (const m of state.messages) {
    if (typeof m.content === "string") bubble(m.role, m.content);
    else bubble(m.role, m.content.filter((p) => p.type === "text").map((p) => p.text).join("\n"),
                m.content.filter((p) => p.type === "image_url").map((p) => p.image_url.url));
  }
  showUsage();
}
function showUsage() {
  const u = state.usage;
  $("usage").textContent = `${u.prompt + u.completion} tokens · $${u.cost.toFixed(6)}`;
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) { setStatus(body.error ? body.error.message : "cannot list models"); return; }
    const sel = $("model"), prev = sel.value || localStorage.getItem("glassgpt.model");
    sel.innerHTML = "";
    for (const m of body.data) {
      state.models[m.id] = m;
      const o = document.createElement("option"); o.value = o.textContent = m.id; sel.append(o);
    }
    if (prev && state.models[prev]) sel.value = prev;
    modelChanged();
    setStatus("");
  } catch (e) { setStatus("cannot reach the server: " + e); }
}
function modelChanged() {
  const m = state.models[$("model").value];
  const vision = !!(m && m.vision);
  $("attach").disabled = !vision;
  $("attach").title = vision ? "attach an image" : "this model has no image input";
  if (!vision && state.images.length) { state.images = []; showAttachments(); }  // would only earn a 400
  localStorage.setItem("glassgpt.model", $("model").value);
}

function attachFile(file) {
  return new Promise((resolve, reject) => {
    const rd = new FileReader();
    rd.onload = () => { state.images.push(rd.result); showAttachments(); resolve(); };
    rd.onerror = () => reject(rd.error);
    rd.readAsDataURL(file);
  });
}
function showAttachments() {
  const box = $("attachments"); box.innerHTML = "";
  for (const src of state.images) { const img = document.createElement("img"); img.src = src; img.alt = "attached image"; box.append(img); }
}

function busy(on) {
  $("send").disabled = on; $("stop").hidden = !on;
}

async function send() {
  const text = $("input").value;
  if (!text.trim() && !state.images.length) return;
  if (state.controller) return;
  // Images first, then the question: the order glassgpt's vision runs are trained on.
  const content = state.images.length
    ? [...state.images.map((url) => ({ type: "image_url", image_url: { url } })), { type: "text", text }]
    : text;
  const userMsg = { role: "user", content };
  bubble("user", text, state.images);
  $("input").value = ""; state.images = []; showAttachments();
  const model = $("model").value, card = state.models[model] || {};
  const body = { model, messages: [...state.messages, userMsg], stream: true,
                 stream_options: { include_usage: true }, temperature: parseFloat($("temperature").value) };
  const out = bubble("assistant", ""); out.classList.add("streaming");
  const textEl = out.querySelector(".text");
  state.controller = new AbortController(); busy(true);
  let answer = "", stopped = false, failed = null, usage = null;
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                   signal: state.controller.signal });
    if (!r.ok) {
      let msg = r.status + " " + r.statusText;
      try { const e = await r.json(); if (e.error) msg = e.error.message; } catch (_) {}
      throw new Error(msg);
    }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i); buf = buf.slice(i + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) { failed = chunk.error.message; continue; }
          if (chunk.usage) usage = chunk.usage;
          for (const c of chunk.choices || []) {
            if (c.delta && c.delta.content) { answer += c.delta.content; textEl.textContent = answer; }
          }
          $("messages").scrollTop = $("messages").scrollHeight;
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") stopped = true; else failed = e.message || String(e);
  }
  out.classList.remove("streaming");
  state.controller = null; busy(false);
  if (failed) {
    out.remove();
    bubble("error", failed);
    setStatus("");
    return;  // the failed turn is not kept in the history
  }
  if (stopped) {
    const note = document.createElement("span"); note.className = "note"; note.textContent = " (stopped)"; out.append(note);
  }
  state.messages.push(userMsg, { role: "assistant", content: answer });
  if (usage) {
    const pr = card.pricing || { prompt_per_1k: 0.002, completion_per_1k: 0.002 };
    state.usage.prompt += usage.prompt_tokens; state.usage.completion += usage.completion_tokens;
    state.usage.cost += usage.prompt_tokens / 1000 * pr.prompt_per_1k + usage.completion_tokens / 1000 * pr.completion_per_1k;
  }
  showUsage(); save();
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("new").addEventListener("click", () => {
  state.messages = []; state.usage = { prompt: 0, completion: 0, cost: 0 }; save(); render();
});
$("attach").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", async (e) => { for (const f of e.target.files) await attachFile(f); e.target.value = ""; });
$("model").addEventListener("change", modelChanged);
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
$("apikey").addEventListener("change", () => { localStorage.setItem("glassgpt.key", $("apikey").value.trim()); loadModels(); });
render();
loadModels();
