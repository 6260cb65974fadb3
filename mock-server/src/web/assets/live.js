// The status page, kept live: the server sends the overview's HTML (escaped by its
// templates) every few seconds as a server-sent event, and it replaces the one on the
// page. Without scripts the page is whole; it just stops updating.
"use strict";
(function () {
  if (!window.EventSource) return;
  var live = document.getElementById("live");
  if (!live) return;
  var events = new EventSource("/events");
  events.addEventListener("overview", function (event) {
    live.innerHTML = event.data;
    document.body.setAttribute("data-updated", String(Date.now()));
  });
})();
