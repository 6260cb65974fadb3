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

// A job's own page: its output grows line by line, as text (never markup), and its
// state is told when it ends.
(function () {
  if (!window.EventSource) return;
  var output = document.getElementById("output");
  if (!output || !output.dataset.events) return;
  var events = new EventSource(output.dataset.events);
  events.addEventListener("line", function (event) {
    output.appendChild(document.createTextNode(event.data + "\n"));
    document.body.setAttribute("data-updated", String(Date.now()));
  });
  events.addEventListener("end", function (event) {
    var state = document.getElementById("state");
    if (state) state.textContent = event.data;
    events.close();
  });
})();
