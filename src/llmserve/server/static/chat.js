// The chat page: a plain client of the public OpenAI-compatible API.
//
// GET /v1/models fills the model picker; POST /v1/chat/completions with stream=true is read
// through fetch + ReadableStream as server-sent events. Stop aborts the fetch: the server sees
// the disconnect and cancels the generation. Settings and the API key live in localStorage.
(function () {
  "use strict";

  const STORE = "llmserve.";
  const $ = (id) => document.getElementById(id);
  const els = {
    model: $("model"), system: $("system"), temperature: $("temperature"), maxTokens: $("max-tokens"),
    apiKey: $("api-key"), clear: $("clear"), banner: $("banner"), messages: $("messages"), empty: $("empty"),
    composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    settings: $("settings"), settingsToggle: $("settings-toggle"), samplingDefaults: $("sampling-defaults"),
  };
  // cards: GET /v1/models by model id (each carries the sampling defaults in force for it)
  const state = { history: [], controller: null, cards: {} };

  // -- settings kept in the browser ------------------------------------------------------------
  const PERSISTED = { apiKey: "apiKey", system: "system", temperature: "temperature", maxTokens: "maxTokens" };

  function store(key, value) {
    try { localStorage.setItem(STORE + key, value); } catch (e) { /* storage disabled: keep going */ }
  }

  function stored(key) {
    try { return localStorage.getItem(STORE + key); } catch (e) { return null; }
  }

  function restoreSettings() {
    for (const [el, key] of Object.entries(PERSISTED)) {
      const value = stored(key);
      if (value !== null) els[el].value = value;
      els[el].addEventListener("input", () => store(key, els[el].value));
    }
    els.model.addEventListener("change", () => { store("model", els.model.value); showDefaults(); });
    els.apiKey.addEventListener("change", loadModels);
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const key = els.apiKey.value.trim();
    if (key) headers["Authorization"] = "Bearer " + key;
    return headers;
  }

  // -- errors: the server's own message, plus what to do about it -------------------------------
  function hintFor(status, retryAfter) {
    const wait = retryAfter ? retryAfter + " s" : "a moment";
    if (status === 401 || status === 403) return "Check the API key under Settings; it is sent as a Bearer token.";
    if (status === 429) return "Too many requests for this key. Wait " + wait + " and send again.";
    if (status === 503) return "The server is busy or still loading the model. Wait " + wait + " and send again.";
    if (status === 404) return "Pick another model; reload the page to refresh the list.";
    if (status === 413) return "The conversation is too large for the server. Start a new chat.";
    if (status === 400) return "Check the settings (max tokens, temperature), or start a new chat if the conversation is too long.";
    if (status >= 500) return "The server failed; its log has the details. Try again.";
    return "";
  }

  async function apiError(resp) {
    let message = resp.statusText || "request failed";
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (e) { /* not JSON: keep the status text */ }
    const retryAfter = resp.headers.get("Retry-After");
    return { status: resp.status, title: "Error " + resp.status, message: message, hint: hintFor(resp.status, retryAfter) };
  }

  function networkError(e) {
    return { status: 0, title: "Cannot reach the server", message: String(e && e.message || e),
             hint: "Check that llmserve is still running, then try again." };
  }

  function errorNode(err) {
    const box = document.createElement("div");
    box.className = "error";
    box.dataset.status = String(err.status);
    const title = document.createElement("strong");
    title.textContent = err.title;
    const message = document.createElement("span");
    message.className = "error-message";
    message.textContent = err.message;
    box.append(title, message);
    if (err.hint) {
      const hint = document.createElement("span");
      hint.className = "error-hint";
      hint.textContent = err.hint;
      box.append(hint);
    }
    return box;
  }

  function showBanner(err) {
    els.banner.replaceChildren(errorNode(err));
    els.banner.hidden = false;
  }

  function hideBanner() {
    els.banner.hidden = true;
    els.banner.replaceChildren();
  }

  // -- models ------------------------------------------------------------------------------------
  // An empty temperature field sends none: the server applies the model's default, shown as the
  // field's placeholder, with the other defaults (top_p ...) in the line below.
  function showDefaults() {
    const card = state.cards[els.model.value];
    const d = card && card.sampling_defaults;
    if (!d || d.temperature === undefined || d.temperature === null) {
      els.temperature.placeholder = "default";
      els.samplingDefaults.textContent = "";
      return;
    }
    els.temperature.placeholder = String(d.temperature);
    const shown = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens"]
      .filter((k) => d[k] !== null && d[k] !== undefined && !(k === "top_k" && d[k] === 0) &&
                     !(k === "min_p" && d[k] === 0) && !(k === "repetition_penalty" && d[k] === 1))
      .map((k) => k + " " + d[k]);
    els.samplingDefaults.textContent = "Model defaults (used when a field is empty): " + shown.join(", ") + ".";
  }

  function noModels() {
    if (els.model.options.length) return;
    const option = document.createElement("option");
    option.value = "";
    option.textContent = "No models available";
    option.disabled = true;
    els.model.append(option);
    els.model.value = "";
  }

  async function loadModels() {
    let resp;
    try {
      resp = await fetch("/v1/models", { headers: authHeaders() });
    } catch (e) {
      showBanner(networkError(e));
      noModels();
      return;
    }
    if (!resp.ok) {
      showBanner(await apiError(resp));
      noModels();
      return;
    }
    const data = await resp.json();
    const previous = els.model.value || stored("model");
    els.model.replaceChildren();
    state.cards = {};
    for (const card of data.data || []) {
      state.cards[card.id] = card;
      const option = document.createElement("option");
      option.value = card.id;
      const ready = !card.capabilities || card.capabilities.ready !== false;
      option.textContent = card.id + (ready ? "" : " (loading)");
      els.model.append(option);
    }
    if (previous && [...els.model.options].some((o) => o.value === previous)) els.model.value = previous;
    noModels();
    showDefaults();
    hideBanner();
  }

  // -- the conversation --------------------------------------------------------------------------
  function nearBottom() {
    const m = els.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function scrollDown() {
    els.messages.scrollTop = els.messages.scrollHeight;
  }

  function addMessage(role) {
    els.empty.hidden = true;
    const row = document.createElement("div");
    row.className = "msg " + role;
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    const content = document.createElement("div");
    content.className = "content";
    bubble.append(content);
    row.append(bubble);
    els.messages.append(row);
    scrollDown();
    return { row: row, bubble: bubble, content: content };
  }

  function setBusy(busy) {
    document.body.dataset.state = busy ? "streaming" : "idle";
    els.send.hidden = busy;
    els.stop.hidden = !busy;
  }

  function requestBody() {
    const messages = [];
    const system = els.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...state.history);
    const body = { model: els.model.value, messages: messages, stream: true, stream_options: { include_usage: true } };
    const temperature = parseFloat(els.temperature.value);
    if (Number.isFinite(temperature)) body.temperature = temperature;  // empty: the model's default
    const maxTokens = parseInt(els.maxTokens.value, 10);
    if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_tokens = maxTokens;
    return body;
  }

  // Server-sent events from a fetch body: yields each event's data ("[DONE]" included).
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
          if (data.length) yield data.join("\n");
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  function formatStats(s) {
    const parts = [];
    if (s.usage) {
      parts.push(s.usage.prompt_tokens + " prompt tokens", s.usage.completion_tokens + " completion tokens");
      const genSeconds = s.firstAt !== null ? (s.endAt - s.firstAt) / 1000 : 0;
      const n = s.usage.completion_tokens;
      // decode speed after the first token, as llama-server reports it
      const rate = n > 1 && genSeconds > 0 ? (n - 1) / genSeconds : n / ((s.endAt - s.startAt) / 1000);
      if (Number.isFinite(rate) && n > 0) parts.push(rate.toFixed(1) + " tokens/s");
    } else if (s.chunks) {
      parts.push("~" + s.chunks + " tokens");
    }
    if (s.firstAt !== null) parts.push(((s.firstAt - s.startAt) / 1000).toFixed(2) + " s to first token");
    if (s.stopped) parts.push("stopped");
    else if (s.finish === "length") parts.push("cut at max tokens");
    return parts;
  }

  async function send(text) {
    if (state.controller) return;
    hideBanner();
    const user = addMessage("user");
    user.content.textContent = text;
    state.history.push({ role: "user", content: text });
    const reply = addMessage("assistant");
    reply.row.classList.add("pending");
    const stats = { startAt: performance.now(), firstAt: null, endAt: null, usage: null, finish: null, chunks: 0, stopped: false };
    let answer = "";
    let failure = null;
    let frame = 0;
    const paint = () => {
      frame = 0;
      const follow = nearBottom();
      reply.content.innerHTML = window.llmMarkdown.render(answer);
      if (follow) scrollDown();
    };

    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify(requestBody()), signal: controller.signal,
      });
      if (!resp.ok) {
        failure = await apiError(resp);
      } else {
        for await (const data of sseData(resp.body)) {
          if (data === "[DONE]") break;
          const event = JSON.parse(data);
          if (event.error) {
            failure = { status: 0, title: "Generation failed", message: event.error.message || "unknown error",
                        hint: "The reply was cut short by a server error. Try again." };
            break;
          }
          if (event.usage) stats.usage = event.usage;
          for (const choice of event.choices || []) {
            const piece = choice.delta && choice.delta.content;
            if (piece) {
              if (stats.firstAt === null) { stats.firstAt = performance.now(); reply.row.classList.remove("pending"); }
              answer += piece;
              stats.chunks++;
              if (!frame) frame = requestAnimationFrame(paint);
            }
            if (choice.finish_reason) stats.finish = choice.finish_reason;
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") stats.stopped = true;
      else failure = networkError(e);
    } finally {
      stats.endAt = performance.now();
      state.controller = null;
      setBusy(false);
    }
    if (frame) cancelAnimationFrame(frame);
    paint();
    reply.row.classList.remove("pending");

    if (failure) {
      // the turn did not happen: drop it from the history, offer the text again
      state.history.pop();
      user.row.classList.add("failed");
      if (!answer) reply.row.remove();
      const where = answer ? reply.bubble : user.row;
      where.append(errorNode(failure));
      if (!els.prompt.value) els.prompt.value = text;
      if (failure.status === 401 || failure.status === 403) els.apiKey.focus();
      scrollDown();
      return;
    }
    state.history.push({ role: "assistant", content: answer });
    const meta = document.createElement("div");
    meta.className = "stats";
    for (const part of formatStats(stats)) {
      const span = document.createElement("span");
      span.textContent = part;
      meta.append(span);
    }
    reply.row.append(meta);
    scrollDown();
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function newChat() {
    stop();
    state.history = [];
    for (const row of [...els.messages.querySelectorAll(".msg")]) row.remove();
    els.empty.hidden = false;
    hideBanner();
    els.prompt.focus();
  }

  // -- the composer ------------------------------------------------------------------------------
  function autosize() {
    els.prompt.style.height = "auto";
    els.prompt.style.height = Math.min(els.prompt.scrollHeight, 200) + "px";
  }

  function submit() {
    const text = els.prompt.value.trim();
    if (!text || state.controller) return;
    els.prompt.value = "";
    autosize();
    send(text);
  }

  function wire() {
    els.composer.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
    els.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
    });
    els.prompt.addEventListener("input", autosize);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
    els.stop.addEventListener("click", stop);
    els.clear.addEventListener("click", newChat);
    els.settingsToggle.addEventListener("click", () => {
      const open = els.settings.classList.toggle("open");
      els.settingsToggle.setAttribute("aria-expanded", String(open));
    });
    els.messages.addEventListener("click", (e) => {
      const button = e.target.closest("button.copy");
      if (!button) return;
      const code = button.closest(".code-block").querySelector("code");
      if (code && navigator.clipboard) {
        navigator.clipboard.writeText(code.textContent).then(() => {
          button.textContent = "Copied";
          setTimeout(() => { button.textContent = "Copy"; }, 1200);
        }, () => {});
      }
    });
  }

  restoreSettings();
  wire();
  setBusy(false);
  loadModels();
  els.prompt.focus();
})();
