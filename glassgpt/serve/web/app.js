// glassgpt chat page: plain JS, no build step. Talks to the same server's
// OpenAI-compatible API (/v1/models, /v1/chat/completions with stream: true).
// Conversations live in this browser's localStorage; the server keeps no chat history.
// No inline scripts, no inline handlers, no eval: the page keeps working under a strict
// Content-Security-Policy (script-src 'self').
"use strict";
const $ = (id) => document.getElementById(id);

// Shown as the system field's placeholder and sent when the field is empty, so what the
// user reads there is exactly what the model is given.
const DEFAULT_SYSTEM = "You are glassgpt, a helpful assistant. Answer in the language of the question.";
const KEY_CONVERSATIONS = "glassgpt.conversations", KEY_CURRENT = "glassgpt.current";

function newId() { return Date.now().toString(36) + Math.random().toString(36).slice(2, 8); }
function emptyConversation() {
  return { id: newId(), title: "", system: "", messages: [], usage: { prompt: 0, completion: 0, cost: 0 }, updated: Date.now() };
}

function loadConversations() {
  let list;
  // A corrupt entry (edited by hand, written by another page) must not leave a blank page.
  try { list = JSON.parse(localStorage.getItem(KEY_CONVERSATIONS) || "[]"); } catch (_) { list = []; }
  if (!Array.isArray(list)) list = [];
  // The earlier one-conversation page kept its history under these keys: carry it over once.
  const old = localStorage.getItem("glassgpt.messages");
  if (old !== null) {
    try {
      const msgs = JSON.parse(old);
      if (Array.isArray(msgs) && msgs.length) {
        const c = emptyConversation();
        c.messages = msgs;
        try { c.usage = JSON.parse(localStorage.getItem("glassgpt.usage")) || c.usage; } catch (_) {}
        list.push(c);
      }
    } catch (_) {}
    localStorage.removeItem("glassgpt.messages");
    localStorage.removeItem("glassgpt.usage");
  }
  return list;
}

const state = {
  conversations: loadConversations(),
  current: localStorage.getItem(KEY_CURRENT),
  shown: [],            // the messages on screen: what edit and regenerate cut from
  // the request being answered: {c, history, out}; its conversation keeps its place and shows the
  // answer arriving even if the user looks at another conversation meanwhile
  inflight: null,
  models: {}, images: [], controller: null, composing: false,
};
$("apikey").value = localStorage.getItem("glassgpt.key") || "";
$("system").placeholder = DEFAULT_SYSTEM;

function conv() { return state.conversations.find((c) => c.id === state.current); }
function save() {
  localStorage.setItem(KEY_CONVERSATIONS, JSON.stringify(state.conversations));
  localStorage.setItem(KEY_CURRENT, state.current || "");
}
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}
function setStatus(t) { $("status").textContent = t || ""; }
function textOf(content) {
  return typeof content === "string" ? content
    : content.filter((p) => p.type === "text").map((p) => p.text).join("\n");
}
function imagesOf(content) {
  return typeof content === "string" ? [] : content.filter((p) => p.type === "image_url").map((p) => p.image_url.url);
}
function titleOf(c) {
  if (c.title) return c.title;
  const first = c.messages.find((m) => m.role === "user");
  const t = first ? textOf(first.content).trim().replace(/\s+/g, " ") : "";
  return t ? (t.length > 40 ? t.slice(0, 40) + "…" : t) : "New chat";
}

// --- Markdown ------------------------------------------------------------------------------
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch]);
}
marked.use({
  gfm: true, breaks: true,
  renderer: {
    // Raw HTML in the model's text is shown as text, the way it was written, not interpreted.
    // DOMPurify below is the second line of defence, not the only one.
    html({ text }) { return escapeHtml(text); },
    // An image the model names would be fetched by the browser the moment it renders: a way
    // to send the conversation to any URL. Show it as a link the user may choose to open.
    image({ href, text }) { return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`; },
  },
});
const PURIFY = { FORBID_TAGS: ["style", "img", "form", "svg", "math"], FORBID_ATTR: ["style"] };
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  // links from the model open elsewhere and cannot reach back into this page
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});

function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  // plain-http pages on another host have no async clipboard: the older selection route
  const ta = document.createElement("textarea");
  ta.value = text; document.body.append(ta); ta.select();
  const ok = document.execCommand("copy"); ta.remove();
  return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
}
function addCopyButtons(el) {
  for (const pre of el.querySelectorAll("pre")) {
    const code = pre.querySelector("code") || pre;
    const lang = [...code.classList].find((k) => k.startsWith("language-"));
    const box = document.createElement("div"); box.className = "codeblock";
    const bar = document.createElement("div"); bar.className = "codebar";
    const label = document.createElement("span"); label.textContent = lang ? lang.slice(9) : "code";
    const btn = document.createElement("button"); btn.type = "button"; btn.className = "copy"; btn.textContent = "Copy";
    btn.addEventListener("click", () => {
      copyText(code.textContent).then(() => { btn.textContent = "Copied"; },
                                      () => { btn.textContent = "Copy failed"; });
      setTimeout(() => { btn.textContent = "Copy"; }, 2000);
    });
    bar.append(label, btn);
    pre.replaceWith(box);
    box.append(bar, pre);
  }
}
function renderMarkdown(el, text) {
  el.innerHTML = DOMPurify.sanitize(marked.parse(text || ""), PURIFY);
  addCopyButtons(el);
}

// --- sidebar --------------------------------------------------------------------------------
function renderSidebar() {
  const ul = $("conversations"); ul.innerHTML = "";
  const sorted = [...state.conversations].sort((a, b) => b.updated - a.updated);
  for (const c of sorted) {
    const li = document.createElement("li");
    li.className = "conv" + (c.id === state.current ? " active" : "");
    li.dataset.id = c.id;
    const title = document.createElement("button"); title.type = "button"; title.className = "title";
    title.textContent = titleOf(c); title.title = titleOf(c);
    title.addEventListener("click", () => select(c.id));
    const ren = document.createElement("button"); ren.type = "button"; ren.className = "rename"; ren.textContent = "✎";
    ren.title = "rename"; ren.setAttribute("aria-label", "rename");
    ren.addEventListener("click", () => startRename(li, c));
    const del = document.createElement("button"); del.type = "button"; del.className = "delete"; del.textContent = "×";
    del.title = "delete"; del.setAttribute("aria-label", "delete");
    del.addEventListener("click", () => {
      // two clicks: a conversation kept only in this browser is gone for good once deleted
      if (!del.classList.contains("confirm")) {
        del.classList.add("confirm"); del.textContent = "Delete?";
        setTimeout(() => { del.classList.remove("confirm"); del.textContent = "×"; }, 3000);
        return;
      }
      remove(c.id);
    });
    li.append(title, ren, del);
    ul.append(li);
  }
}
function startRename(li, c) {
  const input = document.createElement("input");
  input.className = "rename-input"; input.value = titleOf(c); input.setAttribute("aria-label", "conversation name");
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    // an unchanged name stays automatic (it follows the first question); an empty one goes back to it
    const name = input.value.trim();
    if (keep && name !== titleOf(c)) { c.title = name; save(); }
    renderSidebar();
  };
  input.addEventListener("keydown", (e) => {
    if (e.isComposing || e.keyCode === 229) return;  // Enter that confirms an IME candidate
    if (e.key === "Enter") { e.preventDefault(); finish(true); }
    if (e.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  li.querySelector(".title").replaceWith(input);
  input.focus(); input.select();
}
function select(id) {
  state.current = id; save(); render();
}
function remove(id) {
  if (state.inflight && state.inflight.c.id === id) state.controller.abort();  // no tokens for a deleted chat
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.current === id) {
    const next = [...state.conversations].sort((a, b) => b.updated - a.updated)[0];
    if (next) state.current = next.id; else newConversation();
  }
  save(); render();
}
function newConversation() {
  const cur = conv(), busyWith = state.inflight && state.inflight.c;
  if (cur && !cur.messages.length && cur !== busyWith) { state.current = cur.id; return cur; }  // already on an empty one
  // drop other empty conversations so "New chat" clicks do not pile up in the sidebar
  // (not one whose first question is being answered: it is empty only until the answer lands)
  state.conversations = state.conversations.filter((c) => c.messages.length || c === busyWith);
  const c = emptyConversation();
  state.conversations.push(c); state.current = c.id;
  return c;
}

// --- messages -------------------------------------------------------------------------------
function bubble(m, i, list) {
  const div = document.createElement("div");
  div.className = "msg " + m.role;
  const r = document.createElement("span"); r.className = "role"; r.textContent = m.role;
  const t = document.createElement("div"); t.className = "text";
  div.append(r, t);
  if (m.role === "assistant") renderMarkdown(t, textOf(m.content));
  else t.textContent = textOf(m.content);
  for (const src of imagesOf(m.content)) { const img = document.createElement("img"); img.src = src; img.alt = "attached image"; div.append(img); }
  if (m.stopped) { const n = document.createElement("span"); n.className = "note"; n.textContent = " (stopped)"; div.append(n); }
  if (list) {
    const acts = document.createElement("div"); acts.className = "actions";
    if (m.role === "user") {
      const b = document.createElement("button"); b.type = "button"; b.className = "edit"; b.textContent = "Edit";
      b.addEventListener("click", () => startEdit(div, t, list, i));
      acts.append(b);
    } else if (m.role === "assistant" && i === list.length - 1) {
      const b = document.createElement("button"); b.type = "button"; b.className = "regenerate"; b.textContent = "Regenerate";
      b.addEventListener("click", () => { if (!state.controller) complete(conv(), list.slice(0, i)); });
      acts.append(b);
    }
    if (acts.childElementCount) div.append(acts);
  }
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}
function startEdit(div, textEl, list, i) {
  if (state.controller || div.querySelector(".edit-box")) return;
  const m = list[i];
  const box = document.createElement("div"); box.className = "edit-box";
  const ta = document.createElement("textarea"); ta.className = "edit-input"; ta.value = textOf(m.content);
  ta.rows = Math.min(10, ta.value.split("\n").length + 1);
  const ok = document.createElement("button"); ok.type = "button"; ok.className = "save"; ok.textContent = "Save & send";
  const cancel = document.createElement("button"); cancel.type = "button"; cancel.className = "cancel"; cancel.textContent = "Cancel";
  const row = document.createElement("div"); row.className = "edit-buttons";
  row.append(ok, cancel);
  box.append(ta, row);
  textEl.hidden = true; textEl.after(box); div.classList.add("editing");
  ta.focus();
  cancel.addEventListener("click", () => { box.remove(); textEl.hidden = false; div.classList.remove("editing"); });
  ok.addEventListener("click", () => {
    const text = ta.value;
    if (!text.trim() || state.controller) return;
    // the edited question keeps its images; everything after it is cut and answered afresh
    const content = typeof m.content === "string" ? text
      : [...m.content.filter((p) => p.type !== "text"), { type: "text", text }];
    complete(conv(), [...list.slice(0, i), { role: "user", content }]);
  });
}
function renderMessages(list) {
  state.shown = list;
  $("messages").innerHTML = "";
  list.forEach((m, i) => bubble(m, i, list));
}
function render() {
  let c = conv();
  if (!c) c = newConversation();
  renderSidebar();
  if (state.inflight && state.inflight.c === c) {
    renderMessages(state.inflight.history);
    $("messages").append(state.inflight.out);
  } else renderMessages(c.messages);
  $("system").value = c.system || "";
  if (c.system) $("system-box").open = true;
  showUsage(c);
}
function showUsage(c) {
  const u = c.usage;
  $("usage").textContent = `${u.prompt + u.completion} tokens · $${u.cost.toFixed(6)}`;
}

// --- models ---------------------------------------------------------------------------------
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
function showModel(m) {
  const box = $("model-info"); box.innerHTML = "";
  if (!m) return;
  const id = document.createElement("strong"); id.className = "model-id"; id.textContent = m.id;
  box.append(id);
  // only what the server reports: a `stage` field when it sends one, else who owns the model
  const facts = [];
  if (m.stage) facts.push(["model-stage", "stage: " + m.stage]);
  if (m.owned_by) facts.push(["model-owner", "by " + m.owned_by]);
  if (m.context_window) facts.push(["model-context", m.context_window + "-token context"]);
  facts.push(["model-vision", m.vision ? "text + images" : "text only"]);
  for (const [cls, text] of facts) { const s = document.createElement("span"); s.className = cls; s.textContent = text; box.append(s); }
}
function modelChanged() {
  const m = state.models[$("model").value];
  const vision = !!(m && m.vision);
  $("attach").disabled = !vision;
  $("attach").title = vision ? "attach an image" : "this model has no image input";
  if (!vision && state.images.length) { state.images = []; showAttachments(); }  // would only earn a 400
  localStorage.setItem("glassgpt.model", $("model").value);
  showModel(m);
}

function attachFile(file) {
  return new Promise((resolve, reject) => {
    const rd = new FileReader();
    rd.addEventListener("load", () => { state.images.push(rd.result); showAttachments(); resolve(); });
    rd.addEventListener("error", () => reject(rd.error));
    rd.readAsDataURL(file);
  });
}
function showAttachments() {
  const box = $("attachments"); box.innerHTML = "";
  for (const src of state.images) { const img = document.createElement("img"); img.src = src; img.alt = "attached image"; box.append(img); }
}

// --- one request ----------------------------------------------------------------------------
function busy(on) {
  $("send").disabled = on; $("stop").hidden = !on;
  document.body.classList.toggle("busy", on);
}

function send() {
  const text = $("input").value;
  if (!text.trim() && !state.images.length) return;
  if (state.controller) return;
  // Images first, then the question: the order glassgpt's vision runs are trained on.
  const content = state.images.length
    ? [...state.images.map((url) => ({ type: "image_url", image_url: { url } })), { type: "text", text }]
    : text;
  $("input").value = ""; state.images = []; showAttachments();
  complete(conv(), [...state.shown, { role: "user", content }]);
}

// Answer `history` (the conversation up to and including a user message) in conversation `c`.
// The conversation is replaced by history + answer only when an answer arrives (or is stopped):
// a failed request leaves it as it was.
async function complete(c, history) {
  if (state.controller || !c) return;
  const model = $("model").value, card = state.models[model] || {};
  const system = (c.system || "").trim() || DEFAULT_SYSTEM;
  // only role and content go over the wire; `stopped` is this page's own note
  const wire = history.map((m) => ({ role: m.role, content: m.content }));
  const body = { model, messages: [{ role: "system", content: system }, ...wire], stream: true,
                 stream_options: { include_usage: true }, temperature: parseFloat($("temperature").value) };
  renderMessages(history);
  const out = bubble({ role: "assistant", content: "" }, history.length, null);
  out.classList.add("streaming");
  const textEl = out.querySelector(".text");
  state.controller = new AbortController(); busy(true);
  state.inflight = { c, history, out };
  let answer = "", stopped = false, failed = null, usage = null, painting = false;
  // re-render the Markdown at most once a frame, not once a token
  const paint = () => { painting = false; renderMarkdown(textEl, answer); $("messages").scrollTop = $("messages").scrollHeight; };
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
          for (const ch of chunk.choices || []) {
            if (ch.delta && ch.delta.content) {
              answer += ch.delta.content;
              if (!painting) { painting = true; requestAnimationFrame(paint); }
            }
          }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") stopped = true; else failed = e.message || String(e);
  }
  state.controller = null; state.inflight = null;
  if (usage) {  // tokens were spent even if the answer is then discarded: count them
    const pr = card.pricing || { prompt_per_1k: 0.002, completion_per_1k: 0.002 };
    c.usage.prompt += usage.prompt_tokens; c.usage.completion += usage.completion_tokens;
    c.usage.cost += usage.prompt_tokens / 1000 * pr.prompt_per_1k + usage.completion_tokens / 1000 * pr.completion_per_1k;
  }
  const here = state.current === c.id;
  if (failed) {
    // the question stays on screen beside the error (edit it to retry); the saved conversation is unchanged
    out.remove();
    if (here) { bubble({ role: "error", content: failed }, 0, null); state.shown = c.messages; }
    setStatus("");
  } else {
    const reply = { role: "assistant", content: answer };
    if (stopped) reply.stopped = true;
    c.messages = [...history, reply];
    c.updated = Date.now();
    if (here) render(); else renderSidebar();
  }
  if (here) showUsage(c);
  save();
  busy(false);
}

// --- wiring ---------------------------------------------------------------------------------
$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
// An input method (pinyin, kana, hangul…) takes Enter to confirm a candidate; that Enter is not
// "send". Chromium and Firefox say so with isComposing; Safari reports keyCode 229 and may
// fire compositionend before the keydown, hence the flag as well.
$("input").addEventListener("compositionstart", () => { state.composing = true; });
$("input").addEventListener("compositionend", () => { state.composing = false; });
$("input").addEventListener("keydown", (e) => {
  if (e.isComposing || e.keyCode === 229 || state.composing) return;
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("new").addEventListener("click", () => { newConversation(); save(); render(); $("input").focus(); });
$("system").addEventListener("input", () => { const c = conv(); if (c) { c.system = $("system").value; save(); } });
$("attach").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", async (e) => { for (const f of e.target.files) await attachFile(f); e.target.value = ""; });
$("model").addEventListener("change", modelChanged);
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
$("apikey").addEventListener("change", () => { localStorage.setItem("glassgpt.key", $("apikey").value.trim()); loadModels(); });
// another tab of this page changed the conversations: show them rather than overwrite them later
window.addEventListener("storage", (e) => {
  if (e.key === KEY_CONVERSATIONS && !state.controller) { state.conversations = loadConversations(); render(); }
});
render();
loadModels();
