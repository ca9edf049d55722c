// The API reference page (/docs): renders /openapi.json with no third-party script.
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function resolve(schema, spec) {
  let s = schema || {};
  for (let i = 0; i < 5 && s.$ref; i += 1) {
    s = s.$ref.split("/").slice(1).reduce((o, k) => (o || {})[k], spec) || {};
  }
  return s;
}

function typeOf(schema, spec) {
  const s = resolve(schema, spec);
  if (s.anyOf) return s.anyOf.map((x) => typeOf(x, spec)).join(" | ");
  if (s.type === "array") return `array of ${typeOf(s.items, spec)}`;
  if (schema && schema.$ref) return schema.$ref.split("/").pop();
  return s.type || (s.contentMediaType ? "file" : "any");
}

function table(rows, head) {
  const t = el("table");
  const tr = el("tr");
  head.forEach((h) => tr.appendChild(el("th", h)));
  t.appendChild(tr);
  rows.forEach((cells) => {
    const row = el("tr");
    cells.forEach((c, i) => row.appendChild(el("td", c, i === 0 ? "mono" : "")));
    t.appendChild(row);
  });
  return t;
}

function operation(method, path, op, spec) {
  const box = el("details");
  const head = el("summary");
  head.appendChild(el("span", method.toUpperCase(), "method"));
  head.appendChild(el("span", path, "path"));
  head.appendChild(el("span", op.summary || "", "summary"));
  box.appendChild(head);
  if (op.description) box.appendChild(el("p", op.description));
  const params = (op.parameters || []).map((p) => [
    p.name, `${p.in}${p.required ? ", required" : ""}`, typeOf(p.schema, spec),
    p.description || (p.schema || {}).description || ""]);
  const body = op.requestBody ? Object.entries(op.requestBody.content || {}) : [];
  body.forEach(([media, content]) => {
    const s = resolve(content.schema, spec);
    const required = new Set(s.required || []);
    Object.entries(s.properties || {}).forEach(([name, prop]) => params.push([
      name, `body (${media})${required.has(name) ? ", required" : ""}`, typeOf(prop, spec),
      resolve(prop, spec).description || prop.description || ""]));
  });
  if (params.length) box.appendChild(table(params, ["field", "where", "type", "description"]));
  const responses = Object.entries(op.responses || {}).map(([status, r]) => [
    status, r.description || ""]);
  box.appendChild(table(responses, ["status", "when"]));
  return box;
}

async function main() {
  const root = document.getElementById("operations");
  try {
    const resp = await fetch("openapi.json");
    const spec = await resp.json();
    document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
    root.textContent = "";
    const byTag = new Map();
    Object.entries(spec.paths || {}).forEach(([path, ops]) => {
      Object.entries(ops).forEach(([method, op]) => {
        const tag = (op.tags || ["other"])[0];
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push(operation(method, path, op, spec));
      });
    });
    byTag.forEach((ops, tag) => {
      root.appendChild(el("h2", tag));
      ops.forEach((op) => root.appendChild(op));
    });
  } catch (err) {
    root.textContent = `cannot read openapi.json: ${err}`;
  }
}

main();
