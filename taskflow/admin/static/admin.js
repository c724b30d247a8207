// taskflow admin: confirmation dialogs, "select all", and live updates by polling.
// No dependencies; every page works without this script (forms post, pages reload).
(function () {
  "use strict";

  var POLL_MS = 5000;

  // Ask before a form with data-confirm (on the form or on the button used) is sent.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var button = event.submitter;
    var text = (button && button.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (text && !window.confirm(text)) {
      event.preventDefault();
    }
  });

  // A header checkbox that selects every checkbox of a name in its form.
  document.addEventListener("change", function (event) {
    var box = event.target;
    var name = box.getAttribute && box.getAttribute("data-select-all");
    if (!name || !box.form) {
      return;
    }
    var boxes = box.form.querySelectorAll('input[type="checkbox"][name="' + name + '"]');
    for (var i = 0; i < boxes.length; i++) {
      boxes[i].checked = box.checked;
    }
  });

  // Regions marked data-live are fetched again every few seconds and swapped in place.
  function refresh() {
    var regions = document.querySelectorAll("[data-live][id]");
    if (!regions.length || document.hidden) {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (response) {
        if (!response.ok || response.redirected) {
          return null;
        }
        return response.text();
      })
      .then(function (html) {
        if (!html) {
          return;
        }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        for (var i = 0; i < regions.length; i++) {
          var next = fresh.getElementById(regions[i].id);
          if (next && next.innerHTML !== regions[i].innerHTML) {
            regions[i].innerHTML = next.innerHTML;
          }
        }
        document.documentElement.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next poll tries again */ });
  }

  if (document.querySelector("[data-live]")) {
    window.setInterval(refresh, POLL_MS);
  }
})();
