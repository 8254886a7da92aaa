// The zeroshot page: pick or drop an image, type labels, POST /v1/classify, show ranked labels.
// Plain browser JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

(() => {
  const KEY_STORAGE = "zeroshot.apiKey";
  const $ = (id) => document.getElementById(id);
  const form = $("classify-form");
  const fileInput = $("image");
  const drop = $("drop");
  const preview = $("preview");
  const imageName = $("image-name");
  const labelsInput = $("labels");
  const templatesInput = $("templates");
  const topKInput = $("top-k");
  const modeInput = $("mode");
  const minCosineInput = $("min-cosine");
  const abstainedOut = $("abstained");
  const apiKeyInput = $("api-key");
  const modelOut = $("model");
  const statusOut = $("status");
  const errorOut = $("error");
  const resultsOut = $("results");
  const timingOut = $("timing");

  let image = null; // the File to classify
  let previewUrl = null;
  let inFlight = null; // AbortController of the running request
  let requestSeq = 0; // only the latest request may paint the page

  // -- helpers ---------------------------------------------------------------------------------

  function storage() {
    try {
      return window.localStorage;
    } catch {
      return null; // storage disabled: the key just is not remembered
    }
  }

  function authHeaders() {
    const key = apiKeyInput.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  /** Labels from the textarea: one per line, commas also separate; blanks dropped. */
  function parseLabels(text) {
    return text
      .split(/[\n,]/)
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
  }

  /** The message of the API's error body {"error": {"code", "message", "detail"}}, or a fallback. */
  async function errorMessage(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON (a proxy's HTML error page, say)
    }
    const err = body && typeof body === "object" ? body.error : null;
    if (err && typeof err.message === "string" && err.message) {
      return { message: err.message, code: typeof err.code === "string" ? err.code : "" };
    }
    const text = response.statusText ? ` ${response.statusText}` : "";
    return { message: `The server answered HTTP ${response.status}${text}.`, code: "" };
  }

  function setState(state) {
    form.dataset.state = state;
    resultsOut.setAttribute("aria-busy", state === "loading" ? "true" : "false");
  }

  function showError(message, code) {
    errorOut.textContent = "";
    const strong = document.createElement("strong");
    strong.textContent = "Error: ";
    const msg = document.createElement("span");
    msg.className = "message";
    msg.textContent = message;
    errorOut.append(strong, msg);
    errorOut.dataset.code = code || "";
    errorOut.hidden = false;
  }

  function clearError() {
    errorOut.hidden = true;
    errorOut.textContent = "";
    delete errorOut.dataset.code;
  }

  function showModel(model) {
    if (model && model.name) {
      modelOut.textContent = model.version ? `${model.name} · ${model.version}` : model.name;
      modelOut.dataset.state = "ready";
      modelOut.dataset.name = model.name;
      modelOut.dataset.version = model.version || "";
    }
  }

  const percent = (p) => `${(100 * p).toFixed(1)}%`;

  function renderResults(labels) {
    resultsOut.textContent = "";
    for (const [rank, item] of labels.entries()) {
      const li = document.createElement("li");
      li.dataset.label = item.label;
      li.dataset.probability = String(item.probability);
      li.dataset.cosine = String(item.cosine);
      li.dataset.rank = String(rank + 1);

      const label = document.createElement("span");
      label.className = "label";
      label.textContent = item.label;

      const bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${Math.max(0, Math.min(1, item.probability)) * 100}%`;
      bar.append(fill);

      const prob = document.createElement("span");
      prob.className = "probability";
      prob.textContent = percent(item.probability);

      const cos = document.createElement("span");
      cos.className = "cosine";
      cos.title = "cosine similarity";
      cos.textContent = item.cosine.toFixed(3);

      li.append(label, bar, prob, cos);
      resultsOut.append(li);
    }
  }

  // Whether the image matches none of the labels, by which score and threshold (the API's `abstain`).
  function renderAbstention(result) {
    const rule = result.abstain;
    abstainedOut.hidden = !rule;
    abstainedOut.dataset.abstained = String(Boolean(result.abstained));
    if (!rule) {
      abstainedOut.textContent = "";
      return;
    }
    const how = `${rule.score} ${rule.value.toFixed(3)} ${result.abstained ? "<" : "≥"} ${rule.threshold}`;
    const who = rule.source === "calibration" ? ", the label set's calibrated threshold" : "";
    abstainedOut.textContent = result.abstained
      ? `None of these labels: ${how}${who}. The ranking below is what the model would pick anyway.`
      : `A match: ${how}${who}.`;
  }

  // -- the image -------------------------------------------------------------------------------

  function setImage(file) {
    if (!file) return;
    image = file;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.alt = `preview of ${file.name || "the image"}`;
    preview.hidden = false;
    drop.classList.add("has-image");
    const kb = (file.size / 1024).toFixed(1);
    imageName.textContent = `${file.name || "pasted image"} (${kb} KiB)`;
    // Re-run on a new image once there is something to rank it against.
    if (parseLabels(labelsInput.value).length > 0) classify();
  }

  preview.addEventListener("error", () => {
    // Not something the browser can show (it may still be the server's to judge): no broken icon.
    preview.hidden = true;
    drop.classList.remove("has-image");
  });

  fileInput.addEventListener("change", () => setImage(fileInput.files && fileInput.files[0]));

  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
      drop.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    drop.addEventListener(type, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) setImage(file);
  });
  // A file dropped next to the drop zone must not make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  document.addEventListener("paste", (e) => {
    const items = (e.clipboardData && e.clipboardData.files) || [];
    for (const file of items) {
      if (file.type.startsWith("image/")) {
        setImage(file);
        break;
      }
    }
  });

  // -- classify --------------------------------------------------------------------------------

  async function classify() {
    const seq = ++requestSeq;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;

    const body = new FormData();
    if (image) body.append("image", image, image.name || "image");
    // One field holding a JSON array: unambiguous for labels that contain commas or brackets.
    body.append("labels", JSON.stringify(parseLabels(labelsInput.value)));
    body.append("templates", templatesInput.value);
    const topK = topKInput.value.trim();
    if (topK) body.append("top_k", topK);
    body.append("mode", modeInput.value);
    const minCosine = minCosineInput.value.trim();
    if (minCosine) body.append("min_cosine", minCosine);

    clearError();
    abstainedOut.hidden = true;
    setState("loading");
    statusOut.textContent = "Classifying…";
    try {
      const response = await fetch("/v1/classify", {
        method: "POST",
        body,
        headers: authHeaders(),
        signal: controller.signal,
      });
      if (seq !== requestSeq) return;
      if (!response.ok) {
        const { message, code } = await errorMessage(response);
        if (seq !== requestSeq) return;
        resultsOut.textContent = "";
        timingOut.textContent = "";
        showError(message, code);
        statusOut.textContent = "Classification failed.";
        setState("error");
        return;
      }
      const data = await response.json();
      if (seq !== requestSeq) return;
      showModel(data.model);
      const first = (data.results && data.results[0]) || {};
      const labels = first.labels || [];
      renderResults(labels);
      renderAbstention(first);
      const t = data.timing_ms || {};
      timingOut.textContent =
        typeof t.total_ms === "number" ? `Answered in ${t.total_ms.toFixed(1)} ms on the server.` : "";
      statusOut.textContent = `${labels.length} label${labels.length === 1 ? "" : "s"} ranked.`;
      setState("done");
    } catch (err) {
      if (seq !== requestSeq || (err && err.name === "AbortError")) return;
      resultsOut.textContent = "";
      showError(`Could not reach the server: ${err && err.message ? err.message : err}`, "network");
      statusOut.textContent = "Classification failed.";
      setState("error");
    } finally {
      if (inFlight === controller) inFlight = null;
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    classify();
  });

  // Ctrl/Cmd+Enter in the labels box submits (Enter alone makes a new line).
  labelsInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  // -- the API key, kept in localStorage ---------------------------------------------------------

  const store = storage();
  if (store) apiKeyInput.value = store.getItem(KEY_STORAGE) || "";
  apiKeyInput.addEventListener("input", () => {
    if (!store) return;
    const key = apiKeyInput.value.trim();
    if (key) store.setItem(KEY_STORAGE, key);
    else store.removeItem(KEY_STORAGE);
  });
  apiKeyInput.addEventListener("change", loadModel);

  // -- the model, on load ------------------------------------------------------------------------

  async function loadModel() {
    try {
      const response = await fetch("/v1/models", { headers: authHeaders() });
      if (!response.ok) {
        const { message } = await errorMessage(response);
        modelOut.textContent = `unavailable: ${message}`;
        modelOut.dataset.state = "error";
        return;
      }
      showModel(await response.json());
    } catch (err) {
      modelOut.textContent = "unavailable: could not reach the server";
      modelOut.dataset.state = "error";
    }
  }

  loadModel();
})();
