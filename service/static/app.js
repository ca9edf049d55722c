// ASEN++ search page: upload or pick an item, choose an attribute, see results + attention;
// optionally take another attribute from a second reference (a composed query) and keep one
// result per group (e.g. per product). The query's value for each attribute is shown (an
// upload's from POST /v1/tag, an item's tags); choosing another value searches "like this,
// but with" it (but_with).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PAGE_SIZE = 24;
  const state = {
    mode: "upload", file: null, itemId: null, offset: 0, total: 0, blobs: [],
    ref2: { on: false, source: "upload", file: null, itemId: null },
    values: null, valuesToken: 0, valueLists: {}, tagged: new Map(),   // file or item id -> values
  };

  // ---------------------------------------------------------------- HTTP helpers
  function apiKey() { return $("api-key").value.trim(); }

  function headers(extra = {}) {
    const h = { ...extra };
    if (apiKey()) h["X-API-Key"] = apiKey();
    return h;
  }

  async function api(path, options = {}) {
    const res = await fetch(path, { ...options, headers: headers(options.headers || {}) });
    const type = res.headers.get("content-type") || "";
    const body = type.includes("application/json") ? await res.json() : await res.text();
    if (!res.ok) {
      const err = body && body.error ? body.error : { message: `HTTP ${res.status}` };
      const retry = res.headers.get("retry-after");
      throw new Error(err.message + (retry ? ` (retry in ${retry}s)` : ""));
    }
    return body;
  }

  // Item images: plain URLs when no key is needed, authenticated blobs otherwise.
  async function setImage(img, url) {
    if (!apiKey()) { img.src = url; return; }
    const res = await fetch(url, { headers: headers() });
    if (!res.ok) return;
    const blobUrl = URL.createObjectURL(await res.blob());
    state.blobs.push(blobUrl);
    img.src = blobUrl;
  }

  // An image_url made relative to the page (behind a path prefix too), used as given: it is
  // already percent-encoded, and decoding or splitting it would lose ids containing "/".
  function rel(url) { return url.startsWith("/") ? url.slice(1) : url; }

  function setStatus(text, isError = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  }

  // ---------------------------------------------------------------- setup
  async function loadAttributes() {
    try {
      const data = await api("v1/attributes");
      for (const id of ["attribute", "attribute2"]) {
        const select = $(id);
        select.innerHTML = "";
        for (const a of data.attributes) {
          const opt = document.createElement("option");
          opt.value = a.name;
          opt.textContent = `${a.name.replace(/_/g, " ")} (${a.index_size})`;
          select.appendChild(opt);
        }
      }
      if (data.attributes.length > 1) $("attribute2").value = data.attributes[1].name;
      const group = $("group-by");
      group.length = 1;  // keep "no grouping"
      for (const column of data.metadata_columns || []) {
        const opt = document.createElement("option");
        opt.value = column;
        opt.textContent = column.replace(/_/g, " ");
        group.appendChild(opt);
      }
      state.valueLists = {};
      for (const a of data.attributes) {
        const listed = a.facets && a.facets.values;   // a tagged attribute's values
        if (Array.isArray(listed) && listed.length) {
          state.valueLists[a.name] = listed.map((v) => (typeof v === "string" ? v : v.value));
        }
      }
      $("version").textContent = `index ${data.index_version} · model ${data.model.version}`;
      updateButton();
      setStatus("");
    } catch (e) {
      $("version").textContent = "not ready";
      setStatus(`Service not ready: ${e.message}`, true);
      setTimeout(loadAttributes, 3000);
    }
  }

  async function loadCatalog() {
    try {
      const page = await api(`v1/items?offset=${state.offset}&limit=${PAGE_SIZE}`);
      state.total = page.total;
      const grid = $("catalog-grid");
      grid.innerHTML = "";
      for (const item of page.items) {
        const b = document.createElement("button");
        b.type = "button";
        b.title = item.id;
        b.dataset.id = item.id;
        b.classList.toggle("picked", item.id === state.itemId);
        const img = document.createElement("img");
        img.alt = item.id;
        img.loading = "lazy";
        setImage(img, rel(item.image_url) + "?max_side=160");
        b.appendChild(img);
        b.addEventListener("click", () => pickItem(item, img));
        grid.appendChild(b);
      }
      const last = Math.min(state.offset + PAGE_SIZE, state.total);
      $("page-info").textContent = `${state.offset + 1}–${last} of ${state.total}`;
      $("prev-page").disabled = state.offset === 0;
      $("next-page").disabled = last >= state.total;
    } catch (e) {
      setStatus(`Cannot list the catalog: ${e.message}`, true);
    }
  }

  function hasSecondReference() {
    const r = state.ref2;
    return !r.on || (r.source === "upload" ? !!r.file : !!r.itemId);
  }

  function updateButton() {
    const hasQuery = state.mode === "upload" ? !!state.file : !!state.itemId;
    $("search").disabled = !(hasQuery && $("attribute").value && hasSecondReference());
  }

  // ---------------------------------------------------------------- second reference
  async function loadItemIds() {
    try {
      const page = await api("v1/items?offset=0&limit=200");
      const list = $("item-ids");
      list.innerHTML = "";
      for (const item of page.items) {
        const opt = document.createElement("option");
        opt.value = item.id;
        list.appendChild(opt);
      }
    } catch (e) {
      setStatus(`Cannot list the catalog: ${e.message}`, true);
    }
  }

  function toggleCompose(on) {
    state.ref2.on = on;
    $("compose-body").classList.toggle("hidden", !on);
    if (on && !$("item-ids").children.length) loadItemIds();
    updateButton();
  }

  function setRef2Source(source) {
    state.ref2.source = source;
    $("file2").classList.toggle("hidden", source !== "upload");
    $("item2").classList.toggle("hidden", source !== "item");
    showRef2();
    updateButton();
  }

  function showRef2() {
    const img = $("ref2-img");
    const r = state.ref2;
    if (r.source === "upload" && r.file) {
      img.src = URL.createObjectURL(r.file);
      img.hidden = false;
    } else if (r.source === "item" && r.itemId) {
      // one path segment, "/" as %2F: the server's image_url encodes an id the same way
      setImage(img, `v1/items/${encodeURIComponent(r.itemId)}/image?max_side=160`);
      img.hidden = false;
    } else {
      img.hidden = true;
    }
  }

  function pickRef2Item(preview) {
    const typed = $("item2").value;   // ids are exact: " a" and "a" are two ids
    state.ref2.itemId = typed.trim() ? typed : null;
    if (preview) showRef2();
    updateButton();
  }

  function switchTab(mode) {
    state.mode = mode;
    for (const t of document.querySelectorAll(".tab")) {
      const on = t.dataset.tab === mode;
      t.classList.toggle("active", on);
      t.setAttribute("aria-selected", String(on));
    }
    $("pane-upload").classList.toggle("hidden", mode !== "upload");
    $("pane-catalog").classList.toggle("hidden", mode !== "catalog");
    if (mode === "catalog" && !$("catalog-grid").children.length) loadCatalog();
    loadValues();
    updateButton();
  }

  function pickFile(file) {
    if (!file) return;
    state.file = file;
    const img = $("query-img");
    img.src = URL.createObjectURL(file);
    img.hidden = false;
    $("query-caption").textContent = file.name;
    $("overlay-img").hidden = true;
    loadValues();
    updateButton();
  }

  function pickItem(item, thumb) {
    state.itemId = item.id;
    for (const b of $("catalog-grid").children) {
      b.classList.toggle("picked", b.dataset.id === item.id);
    }
    const img = $("query-img");
    setImage(img, rel(item.image_url));
    img.hidden = false;
    $("query-caption").textContent = item.id;
    $("overlay-img").hidden = true;
    loadValues();
    updateButton();
  }

  // ---------------------------------------------------------------- the query's values
  // state.values: attribute -> {value, confidence, source, values, next} of the query now
  // shown; a select per attribute, its predicted value first chosen.
  function fromUploadTags(tags) {
    const out = {};
    for (const [attr, t] of Object.entries(tags)) {
      out[attr] = { value: t.value, confidence: t.confidence, source: "prediction",
        values: t.values, next: t.alternatives };
    }
    return out;
  }

  async function tagImage(blob) {
    const form = new FormData();
    form.append("image", blob);
    return fromUploadTags((await api("v1/tag", { method: "POST", body: form })).tags);
  }

  // An item's own tags (GET /v1/items/{id}) with the attributes' value lists; without them,
  // its image tagged as an upload.
  async function itemValues(itemId) {
    const item = await api(`v1/items/${encodeURIComponent(itemId)}`);
    const tags = item.tags || {};
    const names = Object.keys(tags).filter((a) => state.valueLists[a]);
    if (names.length) {
      const out = {};
      for (const a of names) out[a] = { ...tags[a], values: state.valueLists[a], next: [] };
      return out;
    }
    const res = await fetch(rel(item.image_url), { headers: headers() });
    if (!res.ok) throw new Error(`HTTP ${res.status} for the item's image`);
    return tagImage(await res.blob());
  }

  async function loadValues() {
    const token = ++state.valuesToken;
    state.values = null;
    renderValues();
    const source = state.mode === "upload" ? state.file : state.itemId;
    if (!source) return;
    try {
      const values = state.tagged.get(source) ||
        (state.mode === "upload" ? await tagImage(source) : await itemValues(source));
      state.tagged.set(source, values);
      if (token !== state.valuesToken) return;   // another query was chosen meanwhile
      state.values = values;
      renderValues();
    } catch (e) {
      if (token === state.valuesToken) setStatus(`Cannot tag the query: ${e.message}`, true);
    }
  }

  function percent(p) { return `${Math.round(100 * p)}%`; }

  function valueRow(attr, tag) {
    const row = document.createElement("label");
    row.className = "value-row";
    row.dataset.attribute = attr;
    const head = document.createElement("span");
    head.className = "value-head";
    const name = document.createElement("span");
    name.textContent = attr.replace(/_/g, " ");
    const conf = document.createElement("span");
    conf.className = "conf";
    conf.textContent = tag.source === "label" ? "label" : percent(tag.confidence);
    conf.title = tag.source === "label" ? "the catalog's own label"
      : "calibrated confidence" + (tag.next && tag.next.length ? "; next: " +
        tag.next.map((n) => `${n.value} ${percent(n.confidence)}`).join(", ") : "");
    head.append(name, conf);
    const select = document.createElement("select");
    select.id = `value-${attr}`;
    select.dataset.attribute = attr;
    select.dataset.predicted = tag.value;
    for (const v of tag.values.includes(tag.value) ? tag.values : [tag.value, ...tag.values]) {
      const opt = document.createElement("option");
      opt.value = v;
      opt.textContent = v;
      select.appendChild(opt);
    }
    select.value = tag.value;
    select.addEventListener("change", () => { markChanged(); search(); });
    row.append(head, select);
    return row;
  }

  function renderValues() {
    const grid = $("values-grid");
    grid.innerHTML = "";
    const values = state.values || {};
    $("values").classList.toggle("hidden", !Object.keys(values).length);
    for (const [attr, tag] of Object.entries(values)) grid.appendChild(valueRow(attr, tag));
    const labelled = Object.values(values).some((t) => t.source === "label");
    $("values-note").textContent = (labelled ? "its labels and predicted values"
      : "its predicted values") + ": choose another";
    markChanged();
  }

  // The attributes set to another value than the query's: the "but with" of a search.
  function butWith() {
    const out = {};
    for (const s of document.querySelectorAll("#values-grid select")) {
      if (s.value !== s.dataset.predicted) out[s.dataset.attribute] = s.value;
    }
    return out;
  }

  function markChanged() {
    const targets = butWith();
    for (const row of document.querySelectorAll("#values-grid .value-row")) {
      row.classList.toggle("changed", row.dataset.attribute in targets);
    }
    $("values-reset").disabled = !Object.keys(targets).length;
  }

  function resetValues() {
    for (const s of document.querySelectorAll("#values-grid select")) s.value = s.dataset.predicted;
    markChanged();
    if (!$("search").disabled) search();
  }

  // ---------------------------------------------------------------- search
  function fmt(ms) { return ms == null ? "–" : `${ms.toFixed(1)} ms`; }

  function renderResults(data, attributes) {
    for (const u of state.blobs.splice(0)) URL.revokeObjectURL(u);
    const grid = $("results");
    grid.innerHTML = "";
    $("empty").classList.toggle("hidden", data.results.length > 0);
    if (!data.results.length) $("empty").textContent = "No matching items.";
    const scores = data.results.map((r) => r.score);
    const hi = Math.max(...scores);
    const lo = Math.min(...scores);
    for (const r of data.results) {
      const card = document.createElement("article");
      card.className = "result-card";
      card.dataset.id = r.id;
      const thumb = document.createElement("div");
      thumb.className = "thumb";
      const img = document.createElement("img");
      img.alt = r.id;
      img.loading = "lazy";
      setImage(img, rel(r.image_url) + "?max_side=320");
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = `#${r.rank}`;
      thumb.append(img, rank);

      const body = document.createElement("div");
      body.className = "body";
      const id = document.createElement("div");
      id.className = "id";
      id.textContent = r.id;
      const bar = document.createElement("div");
      bar.className = "scorebar";
      const fill = document.createElement("span");
      // bar length: position within this result list (best = full)
      const rel01 = hi > lo ? (r.score - lo) / (hi - lo) : 1;
      fill.style.width = `${15 + 85 * rel01}%`;
      bar.appendChild(fill);
      const score = document.createElement("div");
      score.className = "score";
      score.textContent = `score ${r.score.toFixed(4)}`;
      const meta = document.createElement("div");
      meta.className = "meta";
      for (const [key, value] of Object.entries(r.metadata)) {
        if (key === "image" || key === "split") continue;
        const line = document.createElement("div");
        line.textContent = `${key.replace(/_/g, " ")}: ${value}`;
        if (attributes.includes(key)) line.className = "hl";
        meta.appendChild(line);
      }
      body.append(id, bar, score);
      if (r.scores && Object.keys(r.scores).length > 1) {
        const per = document.createElement("div");
        per.className = "scores";
        per.textContent = Object.entries(r.scores)
          .map(([a, v]) => `${a.replace(/_/g, " ")} ${v.toFixed(3)}`).join(" · ");
        body.appendChild(per);
      }
      if (r.group != null) {
        const group = document.createElement("span");
        group.className = "group";
        group.textContent = r.group;
        group.title = `best item of its ${$("group-by").value.replace(/_/g, " ")}`;
        body.appendChild(group);
      }
      body.appendChild(meta);
      card.append(thumb, body);
      grid.appendChild(card);
    }
    const t = data.timings;
    $("timings").textContent =
      `total ${fmt(t.total_ms)} · decode ${fmt(t.decode_ms)} · queue ${fmt(t.queue_ms)} · ` +
      `model ${fmt(t.embed_ms)} · search ${fmt(t.search_ms)}`;
  }

  async function explain(attribute) {
    const form = new FormData();
    form.append("attribute", attribute);
    if (state.mode === "upload") form.append("image", state.file);
    else form.append("item_id", state.itemId);
    const data = await api("v1/explain", { method: "POST", body: form });
    const img = $("overlay-img");
    img.src = `data:image/png;base64,${data.overlay_png}`;
    img.hidden = false;
    $("overlay-attr").textContent = attribute.replace(/_/g, " ");
  }

  // Both references of a composed query: the main one (upload or picked item) for the main
  // attribute, the second for its own attribute; weights sum to 1.
  function composeForm(attribute, k, groupBy) {
    const form = new FormData();
    const refs = [];
    const w2 = parseFloat($("weight2").value);
    const ref = (attr, weight, source, file, itemId) => {
      if (source === "upload") {
        form.append("images", file);
        refs.push({ attribute: attr, weight, image: refs.filter((r) => "image" in r).length });
      } else {
        refs.push({ attribute: attr, weight, item_id: itemId });
      }
    };
    ref(attribute, 1 - w2, state.mode, state.file, state.itemId);
    const r2 = state.ref2;
    ref($("attribute2").value, w2, r2.source === "upload" ? "upload" : "catalog", r2.file,
      r2.itemId);
    form.append("references", JSON.stringify(refs));
    form.append("k", String(k));
    if (groupBy) form.append("group_by", groupBy);
    return form;
  }

  function jsonPost(body) {
    return { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) };
  }

  // The request of a search: "like this, but with" when values were changed (targets), else
  // a composed query with a second reference, else the plain upload or by-item search.
  function searchRequest(attribute, k, groupBy, targets) {
    const extra = groupBy ? { group_by: groupBy } : {};
    if (Object.keys(targets).length) {
      if (state.mode !== "upload") {
        return ["v1/search/by-item", jsonPost({ item_id: state.itemId, but_with: targets, k,
          ...extra })];
      }
      const form = new FormData();
      form.append("image", state.file);
      form.append("but_with", JSON.stringify(targets));
      form.append("k", String(k));
      if (groupBy) form.append("group_by", groupBy);
      return ["v1/search", { method: "POST", body: form }];
    }
    if (state.ref2.on) {
      return ["v1/search/compose", { method: "POST", body: composeForm(attribute, k, groupBy) }];
    }
    if (state.mode === "upload") {
      const form = new FormData();
      form.append("image", state.file);
      form.append("attribute", attribute);
      form.append("k", String(k));
      if (groupBy) form.append("group_by", groupBy);
      return ["v1/search", { method: "POST", body: form }];
    }
    return ["v1/search/by-item", jsonPost({ item_id: state.itemId, attribute, k, ...extra })];
  }

  async function search() {
    const attribute = $("attribute").value;
    const k = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 12));
    const groupBy = $("group-by").value;
    const targets = butWith();
    const manipulated = Object.keys(targets).length > 0;
    const attributes = manipulated ? Object.keys(targets)
      : state.ref2.on ? [attribute, $("attribute2").value] : [attribute];
    $("search").disabled = true;
    setStatus("Searching…");
    try {
      const [path, options] = searchRequest(attribute, k, groupBy, targets);
      const data = await api(path, options);
      renderResults(data, attributes);
      const per = groupBy ? ` (one per ${groupBy.replace(/_/g, " ")})` : "";
      const what = manipulated
        ? "like this, but with " + Object.entries(data.query.but_with || targets)
          .map(([a, v]) => `${a.replace(/_/g, " ")} ${v}`).join(" and ")
        : "for " + attributes.map((a) => a.replace(/_/g, " ")).join(" + ");
      setStatus(`${data.results.length} results ${what}${per}`);
      await explain(attribute);
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      updateButton();
    }
  }

  // ---------------------------------------------------------------- wiring
  function init() {
    const saved = sessionStorage.getItem("asen-api-key");
    if (saved) $("api-key").value = saved;
    $("key-form").addEventListener("submit", (e) => e.preventDefault());
    $("api-key").addEventListener("change", () => {
      sessionStorage.setItem("asen-api-key", apiKey());
      loadAttributes();
    });
    for (const t of document.querySelectorAll(".tab")) {
      t.addEventListener("click", () => switchTab(t.dataset.tab));
    }
    $("file").addEventListener("change", (e) => pickFile(e.target.files[0]));
    const dz = $("dropzone");
    dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("over"); });
    dz.addEventListener("dragleave", () => dz.classList.remove("over"));
    dz.addEventListener("drop", (e) => {
      e.preventDefault();
      dz.classList.remove("over");
      pickFile(e.dataTransfer.files[0]);
    });
    $("attribute").addEventListener("change", updateButton);
    $("compose-on").addEventListener("change", (e) => toggleCompose(e.target.checked));
    for (const radio of document.querySelectorAll("input[name=ref2-source]")) {
      radio.addEventListener("change", () => { if (radio.checked) setRef2Source(radio.value); });
    }
    $("file2").addEventListener("change", (e) => {
      state.ref2.file = e.target.files[0] || null;
      showRef2();
      updateButton();
    });
    $("item2").addEventListener("input", () => pickRef2Item(false));
    $("item2").addEventListener("change", () => pickRef2Item(true));
    $("ref2-img").addEventListener("error", () => { $("ref2-img").hidden = true; });
    $("weight2").addEventListener("input", () => {
      $("weight2-value").textContent = parseFloat($("weight2").value).toFixed(2);
    });
    $("search").addEventListener("click", search);
    $("values-reset").addEventListener("click", resetValues);
    $("prev-page").addEventListener("click", () => {
      state.offset = Math.max(0, state.offset - PAGE_SIZE);
      loadCatalog();
    });
    $("next-page").addEventListener("click", () => {
      state.offset += PAGE_SIZE;
      loadCatalog();
    });
    loadAttributes();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
