// While the last readings are stored and the session validated, poll; then go back to the panel.
(() => {
  "use strict";
  const outcomeUrl = document.getElementById("end-config").dataset.outcomeUrl;
  async function poll() {
    try {
      const outcome = await (await fetch(outcomeUrl, { credentials: "same-origin" })).json();
      if (outcome.ended) {
        location.replace(outcome.next || location.href);
        return;
      }
    } catch (error) {
      // Network hiccup: try again below.
    }
    setTimeout(poll, 1000);
  }
  poll();
})();
