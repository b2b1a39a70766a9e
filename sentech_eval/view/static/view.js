// sentech-eval view: the little behaviour the server-rendered pages need (no inline script anywhere).
// - a page waiting for numbers (#pending) reloads itself every two seconds;
// - the runs table sorts by a click on a column header and filters as you type;
// - the compare button is enabled once two runs are ticked.
"use strict";

function cellValue(row, index) {
  const cell = row.children[index];
  const text = cell ? cell.textContent.trim() : "";
  const number = parseFloat(text.replace(/^\$/, ""));
  return { text: text, number: Number.isNaN(number) ? null : number };
}

function makeSortable(table) {
  const headers = table.querySelectorAll("thead th");
  headers.forEach(function (th, index) {
    th.classList.add("sortable");
    th.addEventListener("click", function () {
      const ascending = !th.classList.contains("sorted-asc");
      headers.forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = cellValue(a, index), y = cellValue(b, index);
        let order;
        if (x.number !== null && y.number !== null) order = x.number - y.number;
        else order = x.text.localeCompare(y.text);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
}

function filterAsYouType(input, table) {
  input.addEventListener("input", function () {
    const needle = input.value.toLowerCase();
    Array.from(table.tBodies[0].rows).forEach(function (row) {
      row.classList.toggle("hidden", needle !== "" && !row.textContent.toLowerCase().includes(needle));
    });
  });
}

function compareButton(form) {
  const button = document.getElementById("compare-button");
  if (!button) return;
  const update = function () {
    button.disabled = form.querySelectorAll("input.pick:checked").length < 2;
  };
  form.addEventListener("change", update);
  update();
}

document.addEventListener("DOMContentLoaded", function () {
  if (document.getElementById("pending")) {
    window.setTimeout(function () { window.location.reload(); }, 2000);
  }
  const runs = document.getElementById("runs");
  if (runs) {
    makeSortable(runs);
    const input = document.getElementById("runs-filter");
    if (input) filterAsYouType(input, runs);
  }
  const form = document.getElementById("compare-form");
  if (form) compareButton(form);
  document.querySelectorAll("#summary, #history, #configs").forEach(makeSortable);
});
