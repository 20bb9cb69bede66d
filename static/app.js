// Corral admin center: small progressive enhancements. Every page works without this file.
"use strict";

(function () {
  // Copy buttons: <button type="button" data-copy="element-id" hidden>Copy</button>
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      try {
        document.execCommand("copy") ? resolve() : reject(new Error("copy failed"));
      } catch (error) {
        reject(error);
      } finally {
        area.remove();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.hidden = false;
      const original = button.textContent;
      button.addEventListener("click", function () {
        const source = document.getElementById(button.dataset.copy);
        if (!source) return;
        copyText(source.textContent.trim()).then(
          function () { button.textContent = "Copied"; },
          function () { button.textContent = "Select and copy manually"; }
        );
        window.setTimeout(function () { button.textContent = original; }, 2500);
      });
    });

    // Escape closes an open confirmation disclosure and returns focus to its toggle.
    document.addEventListener("keydown", function (event) {
      if (event.key !== "Escape") return;
      const open = document.activeElement && document.activeElement.closest("details.confirm[open]");
      if (open) {
        open.open = false;
        open.querySelector("summary").focus();
      }
    });

    // Only one confirmation open at a time.
    document.querySelectorAll("details.confirm").forEach(function (details) {
      details.addEventListener("toggle", function () {
        if (!details.open) return;
        document.querySelectorAll("details.confirm[open]").forEach(function (other) {
          if (other !== details) other.open = false;
        });
      });
    });
  });
})();
