// dsfs ui: the parts of a page fetched after it loads, from the JSON API (text set as text only).
"use strict";

async function getJSON(url) {
  const response = await fetch(url, {headers: {"Accept": "application/json"}});
  const doc = await response.json();
  if (!response.ok) throw new Error(doc.error || response.statusText);
  return doc;
}

function element(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

// Change-set table: added / modified / removed counts, computed by the server on first request.
async function fillChangeSets() {
  for (const row of document.querySelectorAll("tr[data-changeset]")) {
    try {
      const doc = await getJSON(row.dataset.api);
      for (const cell of row.querySelectorAll("td[data-field]")) cell.textContent = doc[cell.dataset.field];
      row.classList.add("loaded");
    } catch (err) {
      row.querySelector("td[data-field]").textContent = "error: " + err.message;
    }
  }
}

function table(rows) {
  const t = element("table", null, {id: "preview-table"});
  rows.forEach((cells, i) => {
    const tr = element("tr");
    for (const cell of cells) tr.append(element(i === 0 ? "th" : "td", cell));
    t.append(tr);
  });
  return t;
}

// File page: an image, the head of a CSV/TSV as a table, or the head of a text file.
async function fillPreview() {
  const box = document.getElementById("preview");
  if (!box) return;
  let doc;
  try {
    doc = await getJSON(box.dataset.api);
  } catch (err) {
    box.replaceChildren(element("p", "preview failed: " + err.message, {class: "error"}));
    return;
  }
  const parts = [];
  if (doc.kind === "image") parts.push(element("img", null, {id: "preview-image", src: box.dataset.image, alt: "preview"}));
  if (doc.kind === "table") parts.push(table(doc.rows));
  if (doc.kind === "text") parts.push(element("pre", doc.text, {id: "preview-text"}));
  if (doc.kind === "none") parts.push(element("p", "no preview: " + doc.reason, {class: "muted"}));
  if (doc.truncated) parts.push(element("p", "(the first part only)", {class: "muted"}));
  if (doc.checked === false) {
    parts.push(element("p", "not checked against the file's sha256: the head of a big compressed file " +
                            "is shown without reading all of it", {class: "muted", id: "preview-unchecked"}));
  }
  box.replaceChildren(...parts);
  box.dataset.kind = doc.kind;
}

document.addEventListener("DOMContentLoaded", () => {
  fillChangeSets();
  fillPreview();
});
