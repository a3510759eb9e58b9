// A participant's session page: draw each ad's per-second figure (Plotly figure dicts from the server).
(function () {
  "use strict";
  const source = document.getElementById("session-figures");
  if (!source || typeof Plotly === "undefined") return;
  const figures = JSON.parse(source.textContent);
  for (const [id, figure] of Object.entries(figures)) {
    const node = document.getElementById(id);
    if (node) Plotly.newPlot(node, figure.data, figure.layout, { responsive: true, displaylogo: false });
  }
})();
