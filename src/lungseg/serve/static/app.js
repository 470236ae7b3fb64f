// lungseg serve: the page's script. Sends each file as the raw body of POST /v1/segment (its
// name never leaves the browser), draws the X-ray with its mask, shows the measurements, and
// lists several files in a table sortable by uncertainty. No libraries, nothing from elsewhere.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_BYTES = Number(document.body.dataset.maxUploadMb) * 1024 * 1024;
  const PARALLEL = 3; // requests in flight: enough for the server to batch them
  const FILL = [38, 208, 124];
  const EDGE = [255, 214, 10];
  const state = { items: [], selected: null, sort: null, outputs: [], nextId: 1 };

  // -- API -------------------------------------------------------------------------------------

  function authHeaders() {
    const key = $("api-key");
    return key && key.value ? { Authorization: `Bearer ${key.value}` } : {};
  }

  async function loadModels() {
    const note = $("model-note");
    const key = $("api-key");
    if (key && !key.value) {
      setModelChoice("enter the API key first");
      note.textContent = "This service needs an API key: enter it to see its models.";
      return;
    }
    try {
      const response = await fetch("/v1/models", { headers: authHeaders() });
      if (response.status === 401 || response.status === 429) {
        setModelChoice("API key not accepted");
        const data = await response.json().catch(() => ({}));
        note.textContent = response.status === 429 ? data.detail : "The API key is wrong: check it.";
        return;
      }
      if (response.status === 503) {
        note.textContent = "The models are loading…";
        setTimeout(loadModels, 1000);
        return;
      }
      const data = await response.json();
      const select = $("model");
      select.replaceChildren(...data.models.map((m) => {
        const option = new Option(`${m.name} (${m.backend})`, m.name, m.default, m.default);
        return option;
      }));
      state.outputs = data.outputs;
      note.textContent = "";
    } catch (error) {
      note.textContent = "The service does not answer.";
    }
  }

  function setModelChoice(text) {
    $("model").replaceChildren(new Option(text, "", true, true));
  }

  async function segment(item) {
    item.status = "busy";
    renderTable();
    if (item.file.size > MAX_BYTES) {
      fail(item, `file larger than the ${MAX_BYTES / 1048576} MB upload limit`);
      return;
    }
    const params = new URLSearchParams({ image: "true" });
    if ($("model").value) params.set("model", $("model").value);
    if ($("tta").checked) params.set("tta", "true");
    try {
      const response = await fetch(`/v1/segment?${params}`, {
        method: "POST",
        headers: { ...authHeaders(), "Content-Type": "application/octet-stream" },
        body: item.file,
      });
      const data = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
      if (response.status === 401) {
        fail(item, $("api-key") && $("api-key").value
          ? "the API key is wrong" : "the API key is missing: enter it above", "key");
        return;
      }
      if (!response.ok) {
        fail(item, data.detail || `HTTP ${response.status}`);
        return;
      }
      item.maskUrl = URL.createObjectURL(base64Blob(data.mask_png));
      item.imageUrl = URL.createObjectURL(base64Blob(data.image_png));
      delete data.mask_png;
      delete data.image_png;
      item.result = data;
      item.status = "done";
    } catch (error) {
      fail(item, "the service did not answer");
      return;
    }
    renderTable();
    if (!state.selected || state.selected.status !== "done") select(item);
  }

  function fail(item, message, kind = "file") {
    item.status = "error";
    item.error = message;
    item.errorKind = kind;
    renderTable();
    if (!state.selected || state.selected.status !== "done") select(item);
  }

  function base64Blob(text) {
    const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: "image/png" });
  }

  async function addFiles(files) {
    const added = Array.from(files).map((file) => ({
      id: state.nextId++, file, name: file.name, status: "queued", result: null, error: null,
    }));
    if (!added.length) return;
    state.items.push(...added);
    $("results").hidden = false;
    renderTable();
    announce();
    const queue = [...added];
    const worker = async () => {
      while (queue.length) {
        await segment(queue.shift());
        announce();
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, queue.length) }, worker));
  }

  function announce() {
    const items = state.items;
    const done = items.filter((i) => i.status === "done");
    const failed = items.filter((i) => i.status === "error" && i.errorKind !== "key");
    const refused = items.filter((i) => i.status === "error" && i.errorKind === "key");
    const waiting = items.length - done.length - failed.length - refused.length;
    const status = $("status");
    const stopped = failed.length + refused.length;
    status.classList.toggle("error", waiting === 0 && stopped > 0 && done.length === 0);
    if (waiting) {
      status.textContent = `Segmenting: ${done.length + stopped} of ${items.length} done…`;
      return;
    }
    const flagged = done.filter((i) => i.result.review).length;
    const parts = [`${done.length} ${done.length === 1 ? "X-ray" : "X-rays"} segmented`];
    if (done.length) parts.push(`${flagged} flagged for review`);
    if (failed.length) parts.push(`${failed.length} could not be read`);
    if (refused.length) {
      parts.push(`${refused.length} not sent: ${refused[0].error}`);
    }
    status.textContent = `${parts.join("; ")}.`;
  }

  // -- one file: details and viewer ------------------------------------------------------------

  const number = (n) => n.toLocaleString("en-US");
  const percent = (f) => `${(100 * f).toFixed(1)} %`;
  const area = (cm2) => (cm2 === null ? "—" : `${cm2.toFixed(1)} cm²`);

  async function select(item) {
    state.selected = item;
    renderTable();
    $("detail-name").textContent = item.name;
    const error = $("detail-error");
    const body = $("detail-body");
    const viewer = $("viewer");
    if (item.status === "error") {
      error.textContent = item.errorKind === "key"
        ? `Not segmented: ${item.error}.` : `Could not segment this file: ${item.error}.`;
      error.hidden = false;
      body.hidden = true;
      $("detail-image").textContent = "";
      viewer.dataset.state = "empty";
      $("viewer-empty").textContent = item.errorKind === "key"
        ? "No image: the service refused the API key." : "No image: the file could not be read.";
      return;
    }
    if (item.status !== "done") return;
    error.hidden = true;
    body.hidden = false;
    showMeasurements(item);
    viewer.dataset.state = "loading";
    if (!item.bitmaps) {
      const [image, mask] = await Promise.all([loadImage(item.imageUrl), loadImage(item.maskUrl)]);
      item.bitmaps = { image, mask };
    }
    if (state.selected === item) draw();
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = reject;
      image.src = url;
    });
  }

  function showMeasurements(item) {
    const r = item.result;
    const m = r.measurements;
    const pixels = r.image.height * r.image.width;
    const spacing = r.image.spacing_mm;
    $("detail-image").textContent = `${number(r.image.width)} × ${number(r.image.height)} px · ${r.image.mode}`
      + (spacing ? ` · pixel spacing ${spacing[0].toFixed(3)} × ${spacing[1].toFixed(3)} mm (${m.spacing_source})`
        : " · no pixel spacing in the file: areas in pixels only")
      + ` · right and left: ${m.orientation === "dicom" ? "from the DICOM header" : "assumed PA display"}`;
    const fields = {
      right_lung_px: number(m.right_lung_px), left_lung_px: number(m.left_lung_px),
      lung_px: number(m.lung_px), right_lung_fraction: percent(m.right_lung_px / pixels),
      left_lung_fraction: percent(m.left_lung_px / pixels), lung_fraction: percent(m.lung_fraction),
      right_lung_cm2: area(m.right_lung_cm2), left_lung_cm2: area(m.left_lung_cm2),
      lung_cm2: area(m.lung_cm2),
      uncertain_fraction: `${r.uncertain_fraction.toFixed(3)} (review above ${r.review_threshold})`,
      model: `${r.model.name}${r.model.tta ? " with test-time augmentation" : ""} · ${r.model.backend} · ${r.model.version}`,
      time: `${Math.round(r.timings_ms.total)} ms${r.batch_size > 1 ? ` (in a batch of ${r.batch_size})` : ""}`,
    };
    for (const [name, text] of Object.entries(fields)) {
      document.querySelector(`#details [data-field="${name}"]`).textContent = text;
    }
    // Where the cm² come from, under the areas (a phone has no width for it in the table).
    $("areas-note").textContent = "Right and left are the patient's (the right lung is on the "
      + "image's left). " + (m.lung_cm2 === null
        ? "Areas in cm² need the pixel spacing, which DICOM files state."
        : `Areas in cm² from ${m.spacing_source}.`);
    const flag = $("review");
    flag.className = `flag ${r.review ? "review" : "clear"}`;
    const uncertainty = `Uncertainty ${r.uncertain_fraction.toFixed(3)} is ${r.review ? "above" : "below"} the review threshold ${r.review_threshold} of ${r.model.name}.`;
    // The reason segment's review column gives; the uncertainty in words when it is the reason.
    const reason = r.review_reason || "";
    const why = m.lung_px === 0 ? "No lung was found in this image."
      : !reason || reason.startsWith("uncertain") ? uncertainty
      : `${reason.charAt(0).toUpperCase()}${reason.slice(1)}.`;
    flag.replaceChildren(strong(r.review ? "Review this mask" : "No review flag"), why);
    const stem = item.name.replace(/\.[^.]+$/, "");
    const download = $("download-mask");
    download.href = item.maskUrl;
    download.download = `${stem}_mask.png`;
    // DICOM SEG (issue "archives"): offered once the service lists the output.
    const seg = $("download-seg");
    seg.hidden = !(state.outputs.includes("dicom-seg") && r.image.mode === "DICOM");
    seg.onclick = (event) => { event.preventDefault(); downloadSeg(item, `${stem}_seg.dcm`); };
    $("download-note").textContent = "";
  }

  // The SEG of the mask shown: the same file, model and test-time augmentation give the same
  // mask (the service is deterministic), now written as a DICOM Segmentation object.
  async function downloadSeg(item, name) {
    const note = $("download-note");
    const params = new URLSearchParams({
      format: "dicom-seg", model: item.result.model.name, tta: String(item.result.model.tta),
    });
    note.textContent = "Making the DICOM SEG…";
    let response;
    try {
      response = await fetch(`/v1/segment?${params}`, {
        method: "POST", headers: { ...authHeaders(), "Content-Type": "application/octet-stream" }, body: item.file,
      });
    } catch (error) {
      note.textContent = "DICOM SEG failed: the service did not answer.";
      return;
    }
    if (!response.ok) {
      const data = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
      note.textContent = `DICOM SEG failed: ${data.detail}.`;
      return;
    }
    note.textContent = "DICOM SEG downloaded.";
    const link = Object.assign(document.createElement("a"), {
      href: URL.createObjectURL(await response.blob()), download: name,
    });
    link.click();
    URL.revokeObjectURL(link.href);
  }

  function strong(text) {
    const element = document.createElement("strong");
    element.textContent = text;
    return element;
  }

  function choice(name) {
    return document.querySelector(`input[name="${name}"]:checked`).value;
  }

  function draw() {
    const item = state.selected;
    if (!item || !item.bitmaps) return;
    const { image, mask } = item.bitmaps;
    const viewer = $("viewer");
    const canvas = $("canvas");
    const actual = choice("zoom") === "actual";
    viewer.classList.toggle("actual", actual);
    const scale = actual ? 1 : Math.min(viewer.clientWidth / image.width, viewer.clientHeight / image.height);
    const width = Math.max(1, Math.round(image.width * scale));
    const height = Math.max(1, Math.round(image.height * scale));
    const ratio = actual ? 1 : window.devicePixelRatio || 1;
    const w = Math.round(width * ratio);
    const h = Math.round(height * ratio);
    canvas.width = w;
    canvas.height = h;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const context = canvas.getContext("2d");
    context.imageSmoothingQuality = "high";
    context.drawImage(image, 0, 0, w, h);
    const alpha = Math.round(2.55 * Number($("opacity").value));
    if (alpha > 0) context.drawImage(overlay(mask, w, h, alpha, choice("style"), ratio), 0, 0);
    viewer.dataset.state = "ready";
  }

  function overlay(mask, w, h, alpha, style, ratio) {
    const layer = document.createElement("canvas");
    layer.width = w;
    layer.height = h;
    const context = layer.getContext("2d", { willReadFrequently: true });
    context.drawImage(mask, 0, 0, w, h);
    const pixels = context.getImageData(0, 0, w, h);
    const data = pixels.data;
    const inside = new Uint8Array(w * h);
    for (let i = 0; i < inside.length; i++) inside[i] = data[4 * i] > 127 ? 1 : 0;
    const reach = Math.max(1, Math.round(1.5 * ratio)); // outline width in device pixels
    const lung = (x, y) => x >= 0 && y >= 0 && x < w && y < h && inside[y * w + x] === 1;
    for (let y = 0, i = 0; y < h; y++) {
      for (let x = 0; x < w; x++, i++) {
        let colour = null;
        if (inside[i]) {
          let edge = false;
          for (let d = 1; d <= reach && !edge; d++) {
            edge = !lung(x - d, y) || !lung(x + d, y) || !lung(x, y - d) || !lung(x, y + d);
          }
          colour = edge ? EDGE : style === "fill" ? FILL : null;
        }
        const o = 4 * i;
        if (colour) {
          data[o] = colour[0]; data[o + 1] = colour[1]; data[o + 2] = colour[2];
          data[o + 3] = colour === EDGE ? Math.min(255, alpha + 80) : alpha;
        } else {
          data[o + 3] = 0;
        }
      }
    }
    context.putImageData(pixels, 0, 0);
    return layer;
  }

  // -- several files: the table ----------------------------------------------------------------

  // One unit for both lung columns: cm² when every segmented file states its pixel spacing,
  // else pixels for all (a column mixing the two could not be compared or sorted).
  function areaUnit() {
    const done = state.items.filter((i) => i.result);
    return done.length && done.every((i) => i.result.measurements.lung_cm2 !== null) ? "cm2" : "px";
  }

  function side(item, which) {
    if (!item.result) return null;
    const m = item.result.measurements;
    return areaUnit() === "cm2" ? m[`${which}_lung_cm2`] : m[`${which}_lung_px`];
  }

  function sideText(value) {
    if (value === null) return "";
    return areaUnit() === "cm2" ? value.toFixed(1) : number(value);
  }

  const SORT_KEYS = {
    name: (i) => i.name.toLowerCase(),
    right: (i) => side(i, "right"),
    left: (i) => side(i, "left"),
    fraction: (i) => i.result && i.result.measurements.lung_fraction,
    uncertainty: (i) => i.result && i.result.uncertain_fraction,
  };

  function sortedItems() {
    const items = [...state.items];
    if (!state.sort) return items;
    const key = SORT_KEYS[state.sort.key];
    const sign = state.sort.direction === "ascending" ? 1 : -1;
    const missing = (v) => v === null || v === undefined;
    return items.sort((a, b) => {
      const [x, y] = [key(a), key(b)];
      if (missing(x) || missing(y)) return missing(x) - missing(y) || a.id - b.id; // unread last
      return x < y ? -sign : x > y ? sign : a.id - b.id;
    });
  }

  function renderTable() {
    $("table-panel").hidden = state.items.length < 2;
    const unit = areaUnit() === "cm2" ? "cm²" : "px";
    for (const id of ["unit-right", "unit-left"]) $(id).textContent = `(${unit})`;
    const rows = sortedItems().map((item) => {
      const row = document.createElement("tr");
      row.classList.toggle("selected", item === state.selected);
      const name = document.createElement("button");
      name.type = "button";
      name.className = "name-button";
      name.textContent = item.name;
      name.addEventListener("click", () => {
        select(item);
        $("details").scrollIntoView({ block: "start" });
      });
      const nameCell = cell(name);
      if (item.error) {
        const message = document.createElement("div");
        message.className = "row-error";
        message.textContent = item.error;
        nameCell.append(message);
      }
      const r = item.result;
      const m = r && r.measurements;
      row.append(
        nameCell,
        cell(pill(item)),
        cell(sideText(side(item, "right")), "num"),
        cell(sideText(side(item, "left")), "num"),
        cell(m ? percent(m.lung_fraction) : "", "num"),
        cell(r ? r.uncertain_fraction.toFixed(3) : "", "num"),
      );
      return row;
    });
    document.querySelector("#files-table tbody").replaceChildren(...rows);
  }

  function cell(content, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.append(content);
    return td;
  }

  function pill(item) {
    const labels = {
      queued: ["busy", "Waiting"], busy: ["busy", "Segmenting…"], error: ["error", "Not read"],
    };
    const [kind, text] = item.status === "done"
      ? (item.result.review ? ["review", "Review"] : ["clear", "No flag"]) : labels[item.status];
    const span = document.createElement("span");
    span.className = `pill ${kind}`;
    span.textContent = text;
    return span;
  }

  function sortBy(key) {
    const first = key === "uncertainty" ? "descending" : "ascending";
    const again = state.sort && state.sort.key === key;
    const flip = { ascending: "descending", descending: "ascending" };
    state.sort = { key, direction: again ? flip[state.sort.direction] : first };
    for (const button of document.querySelectorAll("#files-table thead button")) {
      const th = button.closest("th");
      th.setAttribute("aria-sort", button.dataset.sort === key ? state.sort.direction : "none");
    }
    renderTable();
  }

  // A cell a spreadsheet would run as a formula is written as text.
  function csvCell(value) {
    let text = value === null || value === undefined ? "" : String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function exportCsv() {
    const unit = areaUnit() === "cm2" ? "cm2" : "px";
    const header = ["file", "result", `right_lung_${unit}`, `left_lung_${unit}`, "lung_fraction",
      "uncertain_fraction", "review", "model", "tta", "error"];
    const lines = [header.join(",")];
    for (const item of sortedItems()) {
      const r = item.result;
      lines.push([
        item.name, item.status === "done" ? "segmented" : item.status, side(item, "right"),
        side(item, "left"), r ? r.measurements.lung_fraction : "", r ? r.uncertain_fraction : "",
        r ? r.review_reason : "", r ? r.model.name : "", r ? r.model.tta : "", item.error || "",
      ].map(csvCell).join(","));
    }
    const blob = new Blob([`${lines.join("\r\n")}\r\n`], { type: "text/csv" });
    const link = Object.assign(document.createElement("a"), {
      href: URL.createObjectURL(blob), download: "lungseg-results.csv",
    });
    link.click();
    URL.revokeObjectURL(link.href);
  }

  function clearAll() {
    for (const item of state.items) {
      if (item.maskUrl) URL.revokeObjectURL(item.maskUrl);
      if (item.imageUrl) URL.revokeObjectURL(item.imageUrl);
    }
    state.items = [];
    state.selected = null;
    $("results").hidden = true;
    $("status").textContent = "Cleared.";
    $("status").classList.remove("error");
    $("viewer").dataset.state = "empty";
    renderTable();
  }

  // -- wiring ----------------------------------------------------------------------------------

  function init() {
    const input = $("files");
    input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("dragging");
      addFiles(e.dataTransfer.files);
    });
    // A file dropped beside the zone must not replace the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    const opacity = $("opacity");
    opacity.addEventListener("input", () => {
      $("opacity-value").value = `${opacity.value} %`;
      opacity.setAttribute("aria-valuetext", `${opacity.value} %`);
      draw();
    });
    for (const radio of document.querySelectorAll('input[name="style"], input[name="zoom"]')) {
      radio.addEventListener("change", draw);
    }
    for (const button of document.querySelectorAll("#files-table thead button")) {
      button.addEventListener("click", () => sortBy(button.dataset.sort));
    }
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(draw, 100);
    });
    $("export-csv").addEventListener("click", exportCsv);
    $("clear").addEventListener("click", clearAll);
    const key = $("api-key");
    if (key) key.addEventListener("change", loadModels);
    loadModels();
  }

  init();
})();
