// shardq dashboard: the overview's charts, and no polling from a hidden tab. Everything else is server-rendered HTML that htmx
// refreshes in place. Polls only while the tab is visible: a background tab costs the server nothing.
(function () {
  "use strict";
  // htmx polls the live tables ("every Ns"); a tab in the background skips its turns.
  document.addEventListener("htmx:beforeRequest", function (e) {
    if (document.hidden) { e.preventDefault(); }
  });
  var rates = document.getElementById("chart-rates");
  var depth = document.getElementById("chart-depth");
  if (!rates || !depth || typeof uPlot === "undefined") { return; }
  var status = document.getElementById("chart-status");
  var resolution = "1s";
  var plots = {};
  var timer = null;
  var css = getComputedStyle(document.documentElement);
  function color(name) { return css.getPropertyValue(name).trim() || "#888"; }
  function opts(el, series) {
    return {
      width: Math.max(280, el.clientWidth), height: 220,
      series: [{}].concat(series.map(function (s) {
        return { label: s[0], stroke: color(s[1]), width: 2, points: { show: false } };
      })),
      axes: [{ stroke: color("--muted") }, { stroke: color("--muted") }],
    };
  }
  var RATE_SERIES = [["submitted", "--accent"], ["completed", "--ok"], ["failed", "--danger"]];
  var DEPTH_SERIES = [["pending", "--accent"], ["scheduled", "--muted"], ["in_progress", "--ok"],
                      ["dead_letter", "--danger"]];
  function columns(s, names) {
    return [s.t].concat(names.map(function (n) { return s[n[0]]; }));
  }
  function draw(data) {
    var s = data.series;
    var r = columns(s, RATE_SERIES), d = columns(s, DEPTH_SERIES);
    if (!plots.rates) {
      plots.rates = new uPlot(opts(rates, RATE_SERIES), r, rates);
      plots.depth = new uPlot(opts(depth, DEPTH_SERIES), d, depth);
    } else {
      plots.rates.setData(r);
      plots.depth.setData(d);
    }
    rates.dataset.points = String(s.t.length);
    if (status) {
      status.textContent = s.t.length ? "" : "Collecting: the first points appear within seconds.";
    }
  }
  function load() {
    if (document.hidden) { return; }
    fetch("/ui/history.json?resolution=" + resolution, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(draw)
      .catch(function (e) { if (status) { status.textContent = "Charts could not load: " + e.message; } });
  }
  function schedule() {
    clearInterval(timer);
    timer = setInterval(load, resolution === "1s" ? 2000 : 10000);
  }
  document.querySelectorAll(".range button").forEach(function (b) {
    b.addEventListener("click", function () {
      resolution = b.dataset.range;
      document.querySelectorAll(".range button").forEach(function (o) {
        o.setAttribute("aria-pressed", String(o === b));
      });
      load();
      schedule();
    });
  });
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { load(); } });
  window.addEventListener("resize", function () {
    if (plots.rates) {
      plots.rates.setSize({ width: Math.max(280, rates.clientWidth), height: 220 });
      plots.depth.setSize({ width: Math.max(280, depth.clientWidth), height: 220 });
    }
  });
  load();
  schedule();
})();
