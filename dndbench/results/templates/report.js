// dndbench report: sortable tables, and filtering, sorting and paging of the unit cards.
// Plain JavaScript, no libraries; without it every card is shown.
(function () {
  "use strict";

  // -- sortable tables ---------------------------------------------------------------------------
  function cellValue(row, index, numeric) {
    var cell = row.children[index];
    if (!cell) { return numeric ? NaN : ""; }
    var raw = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
    return numeric ? parseFloat(raw) : raw.trim().toLowerCase();
  }

  function sortTable(table, index, numeric, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
      if (numeric) {
        var xn = isNaN(x), yn = isNaN(y);
        if (xn || yn) { return xn === yn ? 0 : (xn ? 1 : -1); }  // missing values last
        return descending ? y - x : x - y;
      }
      return descending ? y.localeCompare(x) : x.localeCompare(y);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, index) {
      th.setAttribute("tabindex", "0");
      function activate() {
        var descending = th.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(heads, function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        sortTable(table, index, th.getAttribute("data-type") === "num", descending);
      }
      th.addEventListener("click", activate);
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); activate(); }
      });
    });
  });

  // -- unit cards --------------------------------------------------------------------------------
  var container = document.getElementById("cards");
  if (!container) { return; }
  var cards = Array.prototype.slice.call(container.querySelectorAll("article.card"));
  var data = cards.map(function (card) {
    return {
      el: card,
      order: parseInt(card.getAttribute("data-order"), 10),
      layer: card.getAttribute("data-layer"),
      disagree: parseFloat(card.getAttribute("data-disagree")) || 0,
      fails: JSON.parse(card.getAttribute("data-fails") || "[]"),
      scores: JSON.parse(card.getAttribute("data-scores") || "{}"),
      text: card.getAttribute("data-text") || "",
      settings: Array.prototype.map.call(card.querySelectorAll("tr[data-setting]"),
                                         function (tr) { return tr.getAttribute("data-setting"); })
    };
  });
  function byId(id) { return document.getElementById(id); }
  var controls = { layer: byId("f-layer"), setting: byId("f-setting"), fail: byId("f-fail"),
                   disagree: byId("f-disagree"), text: byId("f-text"), sort: byId("f-sort"),
                   desc: byId("f-desc"), size: byId("f-size") };
  var pagers = Array.prototype.slice.call(document.querySelectorAll("nav.pager"));
  var count = byId("count");
  var page = 0;

  function metricValue(item, metric, setting) {
    if (setting) {
      var own = item.scores[setting];
      return own && typeof own[metric] === "number" ? own[metric] : NaN;
    }
    var total = 0, n = 0;
    Object.keys(item.scores).forEach(function (s) {
      if (typeof item.scores[s][metric] === "number") { total += item.scores[s][metric]; n += 1; }
    });
    return n ? total / n : NaN;
  }

  function selected() {
    var setting = controls.setting.value, layer = controls.layer.value;
    var query = controls.text.value.trim().toLowerCase();
    return data.filter(function (item) {
      if (layer && item.layer !== layer) { return false; }
      if (setting && item.settings.indexOf(setting) < 0) { return false; }
      if (controls.fail.checked) {
        if (setting ? item.fails.indexOf(setting) < 0 : item.fails.length === 0) { return false; }
      }
      if (controls.disagree.checked && !(item.disagree > 0)) { return false; }
      return !query || item.text.indexOf(query) >= 0;
    });
  }

  function sortItems(items) {
    var key = controls.sort.value, setting = controls.setting.value;
    var sign = controls.desc.checked ? -1 : 1;
    function value(item) {
      if (key === "disagree") { return item.disagree; }
      if (key === "fails") { return setting ? (item.fails.indexOf(setting) >= 0 ? 1 : 0) : item.fails.length; }
      if (key.indexOf("metric:") === 0) { return metricValue(item, key.slice(7), setting); }
      return item.order;
    }
    return items.slice().sort(function (a, b) {
      var x = value(a), y = value(b);
      var xn = isNaN(x), yn = isNaN(y);
      if (xn || yn) { return xn === yn ? a.order - b.order : (xn ? 1 : -1); }  // missing last
      return (x - y) * sign || a.order - b.order;
    });
  }

  function button(label, target, current, disabled) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (current) { b.setAttribute("aria-current", "page"); }
    b.disabled = !!disabled;
    b.addEventListener("click", function () { page = target; render(); });
    return b;
  }

  function drawPager(pages) {
    pagers.forEach(function (nav) {
      while (nav.firstChild) { nav.removeChild(nav.firstChild); }
      if (pages <= 1) { return; }
      nav.appendChild(button("‹ prev", page - 1, false, page === 0));
      for (var i = 0; i < pages; i += 1) {
        if (i === 0 || i === pages - 1 || Math.abs(i - page) <= 2) {
          nav.appendChild(button(String(i + 1), i, i === page, false));
        } else if (Math.abs(i - page) === 3) {
          var gap = document.createElement("span");
          gap.textContent = "…";
          nav.appendChild(gap);
        }
      }
      nav.appendChild(button("next ›", page + 1, false, page === pages - 1));
    });
  }

  function render() {
    var items = sortItems(selected());
    var size = parseInt(controls.size.value, 10) || items.length || 1;
    var pages = Math.max(1, Math.ceil(items.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    var start = page * size, end = Math.min(items.length, start + size);
    var shown = {};
    items.forEach(function (item, i) {
      container.appendChild(item.el);
      if (i >= start && i < end) { shown[item.order] = true; }
    });
    var setting = controls.setting.value;
    data.forEach(function (item) {
      item.el.hidden = !shown[item.order];
      Array.prototype.forEach.call(item.el.querySelectorAll("tr[data-setting]"), function (tr) {
        tr.hidden = !!setting && tr.getAttribute("data-setting") !== setting;
      });
    });
    drawPager(pages);
    count.textContent = items.length
      ? "Showing units " + (start + 1) + "–" + end + " of " + items.length +
        (items.length < data.length ? " (" + data.length + " in all)" : "") + "."
      : "No unit matches the filters (" + data.length + " in all).";
  }

  // the view is kept in the address (#setting=dnd&fail=1&page=2), so a view can be shared
  var keys = { layer: "layer", setting: "setting", fail: "fail", disagree: "disagree", text: "q",
               sort: "sort", desc: "desc", size: "size" };
  function readHash() {
    var pairs = window.location.hash.replace(/^#/, "").split("&");
    pairs.forEach(function (pair) {
      var at = pair.indexOf("=");
      if (at < 0) { return; }
      var key = decodeURIComponent(pair.slice(0, at)), value = decodeURIComponent(pair.slice(at + 1));
      if (key === "page") { page = Math.max(0, (parseInt(value, 10) || 1) - 1); return; }
      Object.keys(keys).forEach(function (name) {
        if (keys[name] !== key) { return; }
        var el = controls[name];
        if (el.type === "checkbox") { el.checked = value === "1"; }
        else if (el.tagName === "SELECT") {
          if (Array.prototype.some.call(el.options, function (o) { return o.value === value; })) { el.value = value; }
        } else { el.value = value; }
      });
    });
  }
  function defaultValue(el) {
    if (el.tagName !== "SELECT") { return ""; }
    for (var i = 0; i < el.options.length; i += 1) {
      if (el.options[i].defaultSelected) { return el.options[i].value; }
    }
    return el.options.length ? el.options[0].value : "";
  }
  function writeHash() {
    var parts = [];
    Object.keys(keys).forEach(function (name) {
      var el = controls[name];
      var value = el.type === "checkbox" ? (el.checked ? "1" : "") : el.value;
      if (value !== defaultValue(el)) { parts.push(keys[name] + "=" + encodeURIComponent(value)); }
    });
    if (page > 0) { parts.push("page=" + (page + 1)); }
    var target = window.location.href.split("#")[0] + (parts.length ? "#" + parts.join("&") : "");
    try {
      window.history.replaceState(null, "", target);
    } catch (e) {
      // some browsers refuse to rewrite file:// addresses; the view still works without it
    }
  }

  Object.keys(controls).forEach(function (name) {
    var el = controls[name];
    el.addEventListener(el.type === "search" ? "input" : "change", function () {
      page = 0; render(); writeHash();
    });
  });
  pagers.forEach(function (nav) { nav.addEventListener("click", writeHash); });
  readHash();
  render();
})();
