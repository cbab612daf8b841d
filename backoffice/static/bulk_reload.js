// The bulk reload's progress, live: asks the page's JSON (same origin, the session cookie) every
// data-poll-ms while the run goes on and rewrites the figures in place. Without this script the
// page shows the same figures as drawn, and refreshes itself (<noscript>) while the run goes on.
"use strict";
(function () {
  const section = document.getElementById("bulk-reload");
  if (!section) return;
  const url = section.dataset.stateUrl;
  const pollMs = Number(section.dataset.pollMs) || 1000;
  const maxFailures = 10;
  let failures = 0;
  let state = section.dataset.state;
  let sawRunning = state === "running";

  function show(data) {
    for (const element of section.querySelectorAll("[data-field]")) {
      const value = data[element.dataset.field];
      if (value !== undefined && value !== null) element.textContent = String(value);
    }
    const bar = section.querySelector("progress");
    if (bar) {
      bar.max = Math.max(data.total, 1);
      bar.value = data.done;
      bar.textContent = data.done + " / " + data.total;
    }
  }

  async function poll() {
    try {
      const reply = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                      headers: {"Accept": "application/json"}});
      if (!reply.ok || !(reply.headers.get("Content-Type") || "").includes("json")) throw new Error();
      const data = await reply.json();
      failures = 0;
      show(data);
      state = data.state;
      if (data.running) { sawRunning = true; }
      else if (sawRunning) { window.location.replace(window.location.pathname); return; }
      if (data.running) window.setTimeout(poll, pollMs);
    } catch (error) {
      failures += 1;
      if (failures < maxFailures) window.setTimeout(poll, pollMs * 2);
    }
  }

  if (state === "running") window.setTimeout(poll, pollMs);
})();
