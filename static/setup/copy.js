// Copy buttons beside read-only link fields: <button class="copy" data-copy="ID-OF-THE-INPUT">.
// The Clipboard API where the page may use it (HTTPS or localhost), else the selection and execCommand.
(() => {
  "use strict";

  function copyText(input) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(input.value);
    input.focus();
    input.select();
    return document.execCommand("copy") ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function flash(button, text) {
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = text;
    clearTimeout(Number(button.dataset.timer));
    button.dataset.timer = String(setTimeout(() => { button.textContent = label; }, 2000));
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.copy[data-copy]");
    if (!button) return;
    const input = document.getElementById(button.dataset.copy);
    if (!input) return;
    copyText(input).then(
      () => { flash(button, "Copied"); button.dataset.copied = input.value; },
      () => { input.select(); flash(button, "Press Ctrl+C"); },
    );
  });
})();
