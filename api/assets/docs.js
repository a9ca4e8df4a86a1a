"use strict";
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => (k === "class" ? (e.className = v) : e.setAttribute(k, v)));
  kids.flat().forEach((k) => e.append(k instanceof Node ? k : document.createTextNode(String(k))));
  return e;
};
let doc;
// A schema with its references expanded (up to a depth), for reading.
function expand(schema, depth) {
  if (!schema || depth > 6) return schema;
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return expand(doc.components.schemas[name], depth + 1);
  }
  const out = Array.isArray(schema) ? [] : {};
  for (const [k, v] of Object.entries(schema)) out[k] = typeof v === "object" && v !== null ? expand(v, depth + 1) : v;
  return out;
}
function example(schema, depth) {
  schema = expand(schema, 0);
  if (!schema || depth > 5) return null;
  if (schema.example !== undefined) return schema.example;
  const one = schema.oneOf || schema.anyOf;
  if (one) return example(one.find((s) => s.type !== "null") || one[0], depth + 1);
  let type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (schema.enum) return schema.enum[0];
  if (type === "object" || schema.properties) {
    const o = {};
    for (const [k, v] of Object.entries(schema.properties || {})) o[k] = example(v, depth + 1);
    return o;
  }
  if (type === "array") return [example(schema.items, depth + 1)];
  if (type === "integer" || type === "number") return 0;
  if (type === "boolean") return true;
  if (schema.format === "uuid") return "00000000-0000-0000-0000-000000000000";
  if (schema.format === "date-time") return "2026-11-22T10:00:00Z";
  return type === "string" ? "…" : null;
}
function schemaBlock(title, content) {
  const [type, media] = Object.entries(content || {})[0] || [];
  if (!media) return [];
  return [el("div", {}, el("b", {}, title), " ", el("span", { class: "muted" }, type)),
          el("pre", {}, JSON.stringify(example(media.schema, 0), null, 2))];
}
function operation(path, method, op) {
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  const sec = op.security || doc.security || [];
  const names = sec.map((s) => Object.keys(s).join(" + ")).filter(Boolean);
  body.append(el("p", { class: "muted" }, names.length ? "Auth: " + names.join(" or ") : "Public"));
  if (op.parameters && op.parameters.length) {
    body.append(el("b", {}, "Parameters"),
      el("table", {}, op.parameters.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name)),
        el("td", { class: "muted" }, p.in + (p.required ? ", required" : "")), el("td", {}, p.description || "")))));
  }
  if (op.requestBody) body.append(...schemaBlock("Request body", op.requestBody.content));
  body.append(el("b", {}, "Responses"));
  const rows = Object.entries(op.responses || {}).map(([code, r]) =>
    el("tr", {}, el("td", {}, el("code", {}, code)), el("td", {}, r.description || "")));
  body.append(el("table", {}, rows));
  for (const [code, r] of Object.entries(op.responses || {})) {
    if (code.startsWith("2") && r.content) body.append(...schemaBlock(code, r.content));
  }
  return el("details", { class: "op", id: method + " " + path },
    el("summary", {}, el("span", { class: "m " + method }, method.toUpperCase()), el("span", { class: "path" }, path),
       el("span", { class: "muted" }, op.summary || "")), body);
}
fetch("/openapi.json").then((r) => r.json()).then((d) => {
  doc = d;
  document.getElementById("info").textContent = `${d.info.title} ${d.info.version} · OpenAPI ${d.openapi} · ` + (d.info.description || "");
  const byTag = {};
  for (const [path, item] of Object.entries(d.paths)) {
    for (const method of ["get", "post", "put", "patch", "delete"]) {
      if (!item[method]) continue;
      const tag = (item[method].tags || ["other"])[0];
      (byTag[tag] = byTag[tag] || []).push(operation(path, method, item[method]));
    }
  }
  const main = document.getElementById("main");
  main.replaceChildren(...Object.entries(byTag).flatMap(([tag, ops]) => [el("h2", {}, tag), ...ops]));
}).catch((e) => { document.getElementById("main").textContent = "Cannot read /openapi.json: " + e; });
