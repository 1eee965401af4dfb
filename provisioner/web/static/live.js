// Live parts of a page: <main data-live="URL"> names a Server-Sent Events stream whose
// messages are {element id: HTML} (rendered by the server's own templates). Forms with
// data-confirm ask first. No other script runs on these pages (CSP: script-src 'self').
(function () {
  "use strict";
  var status = function (text, ok) {
    var el = document.getElementById("live-status");
    if (el) { el.title = text; el.className = "live " + (ok ? "ok" : "bad"); }
  };
  var main = document.querySelector("main[data-live]");
  if (main && window.EventSource) {
    var source = new EventSource(main.getAttribute("data-live"));
    source.onopen = function () { status("live", true); };
    source.onmessage = function (event) {
      var parts = JSON.parse(event.data);
      Object.keys(parts).forEach(function (id) {
        var el = document.getElementById(id);
        if (el) { el.innerHTML = parts[id]; }
      });
      document.body.setAttribute("data-updated", String(Date.now()));
      status("live", true);
    };
    source.addEventListener("signed-out", function () {
      source.close();
      status("signed out: reload the page to sign in again", false);
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        status("no live updates: reload the page", false);
      } else {
        status("reconnecting…", false);
      }
    };
  }
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });
})();
