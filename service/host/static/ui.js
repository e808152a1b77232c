// The imgcls upload page: POST /classify with the chosen images (and min_score when set), show top-k bars,
// "not sure" for images the model abstains on (top-1 score below min_score), or each image's error.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("form"), files = $("files"), drop = $("drop"), topk = $("topk"), statusLine = $("status");
  const minScore = $("minscore"), picker = $("modelpick");
  const apiKey = $("apikey");
  let models = [];

  // with API keys (imgcls serve --api-keys-file), the page asks for one and sends it as a Bearer token
  function auth() {
    const key = apiKey.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }
  const results = $("results"), curl = $("curl"), submit = $("submit");
  let chosen = [];

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => (k === "text" ? (node.textContent = v) : node.setAttribute(k, v)));
    (children || []).forEach((c) => node.appendChild(c));
    return node;
  }

  function quote(name) { return "'" + String(name).replace(/'/g, "'\\''") + "'"; }

  function updateCurl() {
    const names = chosen.length ? chosen.map((f) => f.name) : ["image.jpg"];
    const parts = names.map((n) => "-F " + quote("images=@" + n));
    const threshold = minScore.value.trim() ? ["-F", "min_score=" + minScore.value.trim()] : [];
    const model = models.length > 1 ? ["-F", quote("model=" + picker.value)] : [];
    const key = $("key-row").hidden ? [] : ["-H", '"Authorization: Bearer $IMGCLS_API_KEY"'];
    curl.value = ["curl", "-s", ...key, ...parts, ...model, "-F", "top_k=" + topk.value, ...threshold,
                  location.origin + "/classify"].join(" ");
  }

  function describe(model) {
    $("model").textContent = `Model ${model.name} · version ${model.version} · ${model.precision} on ` +
      `${model.provider} · ${model.num_classes} classes (${model.arch})`;
    const fallback = (model.calibration || {}).min_score;
    $("minscore-default").textContent = fallback ? `Empty: the model's default, ${fallback}.`
      : "Empty: the model's default (none: it never abstains).";
    minScore.placeholder = fallback ? String(fallback) : "none";
  }

  async function loadModel() {
    // every served model (GET /models); with several, a picker chooses which one answers
    try {
      const response = await fetch("/models", { headers: auth() });
      if (response.status === 401) {
        $("key-row").hidden = false;
        updateCurl();
        throw new Error("this server needs an API key: enter it above");
      }
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
      models = body.models;
      if (!models.length) throw new Error("no model is loaded");
      picker.replaceChildren(...models.map((m) => el("option", { value: m.name, text: m.name })));
      $("modelpick-row").hidden = models.length < 2;
      describe(models[0]);
      updateCurl();
    } catch (error) {
      $("model").textContent = "Model description unavailable: " + error.message;
    }
  }

  apiKey.addEventListener("change", loadModel);

  picker.addEventListener("change", () => {
    describe(models.find((m) => m.name === picker.value) || models[0]);
    updateCurl();
  });

  function bars(predictions) {
    return el("ol", { class: "bars" }, predictions.map((p) => {
      const pct = (p.score * 100).toFixed(1) + "%";
      return el("li", { class: "bar", "data-label": p.label, "data-score": String(p.score) }, [
        el("div", { class: "text" }, [el("span", { class: "label", text: p.label }), el("span", { class: "pct", text: pct })]),
        el("div", { class: "track", role: "progressbar", "aria-label": p.label, "aria-valuemin": "0",
                    "aria-valuemax": "100", "aria-valuenow": (p.score * 100).toFixed(1) },
           [el("div", { class: "fill", style: "width:" + pct })]),
      ]);
    }));
  }

  function render(file, result, requestError, threshold) {
    const thumb = el("img", { src: URL.createObjectURL(file), alt: "" });
    thumb.addEventListener("error", () => thumb.replaceWith(el("div", { class: "thumb none", text: "no preview" })));
    const body = el("div", { class: "body" }, [el("p", { class: "name", text: file.name })]);
    const unsure = Boolean(result && result.abstained);
    if (unsure) {
      const top = (result.predictions[0].score * 100).toFixed(1) + "%";
      body.appendChild(el("p", { class: "unsure", text: `Not sure: the top score ${top} is below min_score ${threshold}` }));
    }
    if (result && result.predictions) body.appendChild(bars(result.predictions));
    const error = (result && result.error) || requestError;
    if (error) body.appendChild(el("p", { class: "error", role: "alert", text: "Not classified: " + error.message + " (" + error.reason + ")" }));
    const outcome = error ? " failed" : unsure ? " abstained" : " ok";
    return el("li", { class: "result" + outcome, "data-name": file.name }, [thumb, body]);
  }

  async function classify(event) {
    event.preventDefault();
    if (!chosen.length) { statusLine.textContent = "Choose at least one image first."; files.focus(); return; }
    const data = new FormData();
    chosen.forEach((f) => data.append("images", f, f.name));
    data.append("top_k", topk.value);
    if (models.length > 1) data.append("model", picker.value);
    if (minScore.validity.badInput) { statusLine.textContent = "Abstain below: enter a number from 0 to 1."; minScore.focus(); return; }
    if (minScore.value.trim()) data.append("min_score", minScore.value.trim());
    submit.disabled = true;
    statusLine.textContent = `Classifying ${chosen.length} image(s)…`;
    results.replaceChildren();
    try {
      const response = await fetch("/classify", { method: "POST", body: data, headers: auth() });
      const answer = await response.json();
      const list = answer.results || [];
      const requestError = list.length ? null : answer.error;
      chosen.forEach((file, i) =>
        results.appendChild(render(file, list.find((r) => r.position === i), requestError, answer.min_score)));
      const failed = list.filter((r) => r.error).length + (requestError ? chosen.length : 0);
      const unsure = list.filter((r) => r.abstained).length;
      const abstained = answer.min_score ? `, ${unsure} abstained (top score below min_score ${answer.min_score})` : "";
      statusLine.textContent = `Done: ${chosen.length - failed - unsure} classified${abstained}, ${failed} not classified` +
        (answer.timing ? ` in ${Math.round(answer.timing.total_ms)} ms.` : ".");
    } catch (error) {
      statusLine.textContent = "The request failed: " + error.message;
    } finally {
      submit.disabled = false;
      results.setAttribute("aria-busy", "false");
    }
  }

  function choose(list) {
    chosen = Array.from(list || []);
    statusLine.textContent = chosen.length ? `${chosen.length} image(s) chosen: ${chosen.map((f) => f.name).join(", ")}` : "";
    updateCurl();
  }

  files.addEventListener("change", () => { choose(files.files); if (chosen.length) form.requestSubmit(); });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); choose(e.dataTransfer.files); if (chosen.length) form.requestSubmit(); });
  topk.addEventListener("change", updateCurl);
  minScore.addEventListener("input", updateCurl);
  form.addEventListener("submit", classify);
  $("copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(curl.value); statusLine.textContent = "curl command copied."; }
    catch (_) { curl.select(); statusLine.textContent = "Press Ctrl+C to copy the selected command."; }
  });
  updateCurl();
  loadModel();
})();
