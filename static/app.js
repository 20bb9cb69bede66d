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

    // Only one confirmation open at a time ("toggle" does not bubble: listen while capturing, so details
    // swapped in later by a live fragment are covered too). A panel with a form field focuses it.
    document.addEventListener("toggle", function (event) {
      const details = event.target;
      if (!(details instanceof HTMLDetailsElement) || !details.matches("details.confirm") || !details.open) return;
      document.querySelectorAll("details.confirm[open]").forEach(function (other) {
        if (other !== details) other.open = false;
      });
      const field = details.querySelector(
        ".confirm-panel textarea, .confirm-panel input[type=text], .confirm-panel input[type=tel]"
      );
      const panel = details.querySelector(".confirm-panel");
      if (field && !(document.activeElement && panel.contains(document.activeElement))) field.focus();
    }, true);

    document.querySelectorAll("[data-refresh][data-fragment][id]").forEach(liveFragment);
  });

  // Live fragments: <section id="x" data-refresh="/url" data-fragment="name"> is fetched again every 5 s
  // (header X-Fragment: name) and swapped in, for as long as the server keeps data-refresh on it. Skipped
  // while the tab is hidden or the person is using a control inside it; stops on errors or after 30 min.
  // Without this script the section's own "Refresh" link does the same.
  const REFRESH_MS = 5000;
  const REFRESH_FOR_MS = 30 * 60 * 1000;

  function liveFragment(section) {
    const id = section.id;
    const url = section.dataset.refresh;
    const fragment = section.dataset.fragment;
    const started = Date.now();
    let failures = 0;

    function busy(current) {
      return document.hidden ||
        current.querySelector("details[open]") !== null ||
        (current.contains(document.activeElement) && document.activeElement !== current);
    }

    function schedule() {
      if (Date.now() - started < REFRESH_FOR_MS) window.setTimeout(tick, REFRESH_MS);
    }

    function tick() {
      const current = document.getElementById(id);
      if (!current || !current.hasAttribute("data-refresh")) return;
      if (busy(current)) { schedule(); return; }
      fetch(url, {
        headers: { "X-Fragment": fragment },
        credentials: "same-origin",
        cache: "no-store",
        redirect: "error", // signed out: the sign-in page is not a fragment
      })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
          if (!fresh) return; // not what we asked for: stop
          failures = 0;
          const live = document.getElementById(id);
          if (!live) return;
          const changed = live.textContent !== fresh.textContent ||
            live.hasAttribute("data-refresh") !== fresh.hasAttribute("data-refresh");
          if (changed && !busy(live)) {
            live.replaceWith(document.adoptNode(fresh));
            const announcer = document.querySelector('[data-announce-for="' + id + '"]');
            if (announcer) announcer.textContent = "Updated at " + new Date().toLocaleTimeString() + ".";
          }
          const now = document.getElementById(id);
          if (now && now.hasAttribute("data-refresh")) schedule();
        })
        .catch(function () {
          failures += 1;
          if (failures < 4) schedule();
        });
    }

    schedule();
  }
})();

// Bulk selection on the device list: <form data-bulk-form> holds the rows' checkboxes (name="device_ids"),
// a "select all on this page" box (data-bulk-all, hidden without this script), the action (data-bulk-type)
// and parts shown only for one action (data-bulk-for="<action>", or "destructive" for wipe and retire).
// Counts (data-bulk-count) follow the selection. Without this script every part shows; the server checks.
(function () {
  function bulkForm(form) {
    const all = form.querySelector("[data-bulk-all]");
    const type = form.querySelector("[data-bulk-type]");
    const submit = form.querySelector("[data-bulk-submit]");
    const boxes = function () {
      return Array.prototype.slice.call(form.querySelectorAll('input[type="checkbox"][name="device_ids"]'));
    };

    function update() {
      const list = boxes();
      const selected = list.filter(function (box) { return box.checked; }).length;
      list.forEach(function (box) {
        const row = box.closest("tr");
        if (row) row.classList.toggle("is-selected", box.checked);
      });
      form.querySelectorAll("[data-bulk-count]").forEach(function (el) { el.textContent = String(selected); });
      if (all) {
        all.checked = selected > 0 && selected === list.length;
        all.indeterminate = selected > 0 && selected < list.length;
      }
      const chosen = type ? type.value : "";
      const option = type && type.selectedOptions ? type.selectedOptions[0] : null;
      const destructive = Boolean(option && option.dataset.destructive === "true");
      form.querySelectorAll("[data-bulk-for]").forEach(function (part) {
        const show = part.dataset.bulkFor === chosen || (part.dataset.bulkFor === "destructive" && destructive);
        part.hidden = !show;
        // Hidden inputs are not sent and do not block the form.
        part.querySelectorAll("input, select, textarea").forEach(function (input) { input.disabled = !show; });
      });
      if (submit) {
        submit.disabled = selected === 0 || !chosen;
        submit.classList.toggle("btn-danger", destructive);
        submit.classList.toggle("btn-primary", !destructive);
      }
    }

    if (all) {
      all.hidden = false;
      all.addEventListener("change", function () {
        boxes().forEach(function (box) { box.checked = all.checked; });
        update();
      });
    }
    form.addEventListener("change", update);
    update();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-bulk-form]").forEach(bulkForm);
  });
})();
