// The console works without this file; it adds live refresh and confirmations.
"use strict";

// While a status settles the page asks to be refreshed: fetch it again and swap the live region,
// keeping scroll position and focus (a full reload would lose both).
function refreshLive() {
  const seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) return;
  setTimeout(async () => {
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok || response.redirected) { location.reload(); return; }
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      const current = document.getElementById("live");
      if (fresh && current) current.replaceWith(fresh);
      if (page.body.dataset.refresh) {
        document.body.dataset.refresh = page.body.dataset.refresh;
      } else {
        delete document.body.dataset.refresh;
      }
    } catch (_) { /* the next round tries again */ }
    refreshLive();
  }, seconds * 1000);
}

document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

refreshLive();
