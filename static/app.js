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

// Dynamic group rule editor: <div data-rule-editor data-preview-url data-explain-url> around a textarea
// name="rule" (or data-rule and data-kind on a saved group's page). As the rule is typed, the preview API
// answers with the members it selects now, or the first problem with a caret under it; the "Check" button asks
// "does this device (or user) match, and why?". Without this script the form's own buttons do the same.
(function () {
  "use strict";

  const DEBOUNCE_MS = 400;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function csrfToken(root) {
    const input = (root.closest("form") || document).querySelector('input[name="csrf_token"]') ||
      document.querySelector('input[name="csrf_token"]');
    return input ? input.value : "";
  }

  function postJson(url, body, token, signal) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": token },
      body: JSON.stringify(body),
      signal: signal,
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        return { ok: response.ok, status: response.status, data: data };
      });
    });
  }

  function ruleError(data) {
    const errors = (data && data.errors) || [];
    for (let i = 0; i < errors.length; i += 1) {
      if (errors[i].type === "rule_error") return errors[i];
    }
    return null;
  }

  function renderProblem(target, data, textarea) {
    const box = el("div", "rule-error");
    box.setAttribute("role", "alert");
    const error = ruleError(data);
    const message = el("p");
    message.appendChild(el("strong", null, error ? error.message : (data && data.detail) || "That did not work."));
    box.appendChild(message);
    if (error && error.excerpt) box.appendChild(el("pre", "rule-excerpt", error.excerpt));
    if (error && textarea) {
      const show = el("button", "btn btn-sm btn-link", "Show it in the rule");
      show.type = "button";
      show.addEventListener("click", function () {
        textarea.focus();
        textarea.setSelectionRange(error.offset, Math.min(textarea.value.length, error.offset + error.length));
      });
      box.appendChild(show);
    }
    target.replaceChildren(box);
  }

  function kindOf(root) {
    if (root.dataset.kind) return root.dataset.kind;
    const form = root.closest("form");
    const field = form && form.elements.namedItem("dynamic_kind");
    if (!field) return "device";
    if (field instanceof RadioNodeList) return field.value || "device";
    return field.value || "device";
  }

  function plural(n, word) {
    return n.toLocaleString() + " " + word + (n === 1 ? "" : "s");
  }

  function renderPreview(target, data, kind) {
    const wrap = document.createDocumentFragment();
    const count = el("p", "preview-count");
    count.appendChild(el("strong", null, plural(data.count, kind)));
    count.appendChild(document.createTextNode(data.count === 1 ? " matches now" : " match now"));
    count.appendChild(el("span", "muted small", " (among the " + kind + "s you may see)"));
    count.appendChild(document.createTextNode("."));
    wrap.appendChild(count);
    if (data.members && data.members.length) {
      const list = el("ul", "preview-members");
      data.members.forEach(function (m) {
        const item = el("li");
        item.appendChild(el("span", null, m.name));
        item.appendChild(document.createTextNode(" "));
        item.appendChild(el("span", "muted mono small", m.detail || ""));
        list.appendChild(item);
      });
      wrap.appendChild(list);
      if (data.count > data.members.length) {
        wrap.appendChild(el("p", "muted small", "and " + (data.count - data.members.length).toLocaleString() + " more."));
      }
    }
    target.replaceChildren(wrap);
  }

  function explanationNode(node) {
    const item = el("li", "explain-node explain-node--" + (node.result ? "true" : "false"));
    const mark = el("span", "explain-mark", node.result ? "✓" : "✗");
    mark.setAttribute("aria-hidden", "true");
    item.appendChild(mark);
    item.appendChild(el("span", "visually-hidden", node.result ? "true:" : "false:"));
    item.appendChild(document.createTextNode(" "));
    if (node.type === "condition") {
      item.appendChild(el("code", null, node.text));
      const seen = el("span", "muted small", " — " + node.attribute + " is ");
      if (node.actual === null) seen.appendChild(el("em", null, "null (no value)"));
      else seen.appendChild(el("code", null, String(node.actual)));
      item.appendChild(seen);
    } else {
      item.appendChild(el("strong", null, node.operator));
      const trueCount = node.children.filter(function (c) { return c.result; }).length;
      const summary = node.operator === "-not"
        ? "the condition is " + (node.result ? "false" : "true")
        : trueCount + " of " + node.children.length + " true";
      item.appendChild(el("span", "muted small", " " + summary));
      const list = el("ul", "explain-tree");
      node.children.forEach(function (child) { list.appendChild(explanationNode(child)); });
      item.appendChild(list);
    }
    return item;
  }

  function renderExplain(target, data) {
    const wrap = el("div", "explain-result");
    const verdict = el("p", "explain-verdict explain-verdict--" + (data.matches ? "yes" : "no"));
    verdict.appendChild(el("strong", null, data.subject.name));
    if (data.subject.detail) {
      verdict.appendChild(document.createTextNode(" "));
      verdict.appendChild(el("span", "muted mono small", data.subject.detail));
    }
    verdict.appendChild(document.createTextNode(data.matches ? " matches the rule." : " does not match the rule."));
    wrap.appendChild(verdict);
    if (data.note) wrap.appendChild(el("p", "hint", data.note));
    const tree = el("ul", "explain-tree explain-tree--root");
    tree.appendChild(explanationNode(data.explanation));
    wrap.appendChild(tree);
    target.replaceChildren(wrap);
  }

  function ruleEditor(root) {
    const textarea = root.querySelector('textarea[name="rule"]');
    const preview = root.querySelector("#rule-preview");
    const explainOut = root.querySelector("#rule-explain");
    const explainButton = root.querySelector("[data-explain-button]");
    const lookup = root.querySelector("#explain-lookup");
    const token = csrfToken(root);
    let timer = null;
    let controller = null;
    let sequence = 0;

    function ruleText() {
      return textarea ? textarea.value : root.dataset.rule || "";
    }

    function refresh() {
      if (!preview || !textarea) return;
      const rule = textarea.value;
      if (!rule.trim()) {
        preview.replaceChildren(el("p", "muted small", "The members this rule selects show here as you type."));
        textarea.removeAttribute("aria-invalid");
        return;
      }
      if (controller) controller.abort();
      controller = new AbortController();
      const mine = ++sequence;
      const kind = kindOf(root);
      preview.setAttribute("aria-busy", "true");
      postJson(root.dataset.previewUrl, { dynamic_kind: kind, rule: rule, limit: 10 }, token, controller.signal)
        .then(function (result) {
          if (mine !== sequence) return;
          preview.removeAttribute("aria-busy");
          if (result.ok) {
            textarea.removeAttribute("aria-invalid");
            renderPreview(preview, result.data, kind);
          } else {
            if (ruleError(result.data)) textarea.setAttribute("aria-invalid", "true");
            renderProblem(preview, result.data, textarea);
          }
        })
        .catch(function (error) {
          if (error.name === "AbortError" || mine !== sequence) return;
          preview.removeAttribute("aria-busy");
          preview.replaceChildren(el("p", "muted small", "The preview is not available right now."));
        });
    }

    function schedule() {
      window.clearTimeout(timer);
      timer = window.setTimeout(refresh, DEBOUNCE_MS);
    }

    if (textarea && preview && root.dataset.previewUrl) {
      document.querySelectorAll("[data-no-script]").forEach(function (node) { node.hidden = true; });
      textarea.addEventListener("input", schedule);
      const form = root.closest("form");
      if (form) {
        form.querySelectorAll('input[name="dynamic_kind"]').forEach(function (radio) {
          radio.addEventListener("change", refresh);
        });
      }
      if (textarea.value.trim()) refresh();
    }

    if (explainButton && explainOut && lookup && root.dataset.explainUrl) {
      explainButton.addEventListener("click", function (event) {
        event.preventDefault();
        const value = lookup.value.trim();
        if (!value) {
          lookup.focus();
          return;
        }
        explainOut.setAttribute("aria-busy", "true");
        postJson(root.dataset.explainUrl, { dynamic_kind: kindOf(root), rule: ruleText(), lookup: value }, token)
          .then(function (result) {
            explainOut.removeAttribute("aria-busy");
            if (result.ok) renderExplain(explainOut, result.data);
            else renderProblem(explainOut, result.data, textarea);
          })
          .catch(function () {
            explainOut.removeAttribute("aria-busy");
            explainOut.replaceChildren(el("p", "muted small", "The check is not available right now."));
          });
      });
      lookup.addEventListener("keydown", function (event) {
        if (event.key === "Enter") {
          event.preventDefault();
          explainButton.click();
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-rule-editor]").forEach(ruleEditor);
  });
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

// Assignment editor: <form data-assignment-editor data-preview-url data-platform> with rows of selects
// (row_mode, row_target, row_filter, row_filter_mode). On every change the reach preview API answers how many
// devices the rows would reach; without this script the form's "Preview reach" button does the same.
(function () {
  "use strict";

  function rowsOf(form) {
    const rows = [];
    form.querySelectorAll("tr[data-row]").forEach(function (tr) {
      const value = function (name) {
        const input = tr.querySelector('[name="' + name + '"]');
        return input ? input.value : "";
      };
      const target = value("row_target");
      if (!target) return;
      const row = { mode: value("row_mode") };
      if (target === "all_devices" || target === "all_users") {
        row.target = target;
      } else {
        row.target = "group";
        row.group_id = target;
      }
      const filter = value("row_filter");
      if (filter && row.mode === "include") {
        row.filter_id = filter;
        row.filter_mode = value("row_filter_mode");
      }
      rows.push(row);
    });
    return rows;
  }

  function editor(form) {
    const out = form.querySelector("#reach-preview");
    const tokenInput = form.querySelector('input[name="csrf_token"]');
    let controller = null;
    form.querySelectorAll("[data-no-script]").forEach(function (node) { node.hidden = true; });

    function show(text, strong) {
      const node = document.createElement("span");
      if (strong === undefined) {
        node.className = "muted small";
        node.textContent = text;
      } else {
        node.append(text[0]);
        const b = document.createElement("strong");
        b.textContent = strong;
        node.append(b, text[1]);
      }
      out.replaceChildren(node);
    }

    function update() {
      if (controller) controller.abort();
      controller = new AbortController();
      out.setAttribute("aria-busy", "true");
      fetch(form.dataset.previewUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          "Accept": "application/json",
          "X-CSRF-Token": tokenInput ? tokenInput.value : "",
        },
        body: JSON.stringify({ platform: form.dataset.platform, assignments: rowsOf(form) }),
        signal: controller.signal,
      }).then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      }).then(function (result) {
        out.removeAttribute("aria-busy");
        if (result.ok) {
          show(["These assignments would reach ", " device(s)."], result.data.devices.toLocaleString());
        } else {
          show((result.data && result.data.detail) || "These assignments cannot be previewed.");
        }
      }).catch(function (error) {
        if (error.name === "AbortError") return;
        out.removeAttribute("aria-busy");
        show("The preview is not available right now.");
      });
    }

    form.addEventListener("change", update);
    update();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form[data-assignment-editor]").forEach(editor);
  });
})();

// Settings catalog picker: <section data-settings-picker> with a search box (data-settings-search), a category
// select (data-settings-category) and settings (data-setting data-name data-category) inside category
// fieldsets. As the person types or picks, settings that do not match are hidden (their values stay in the
// form); Enter in the search box does not submit. Without this script the "Find" button does the same.
(function () {
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-settings-picker]").forEach(function (picker) {
      var search = picker.querySelector("[data-settings-search]");
      var category = picker.querySelector("[data-settings-category]");
      var none = picker.querySelector("[data-settings-none]");
      if (!search || !category) { return; }
      picker.querySelectorAll("[data-no-script]").forEach(function (node) { node.hidden = true; });
      function apply() {
        var needle = search.value.trim().toLowerCase();
        var chosen = category.value;
        var any = false;
        picker.querySelectorAll("fieldset[data-category]").forEach(function (group) {
          var shown = 0;
          group.querySelectorAll("[data-setting]").forEach(function (setting) {
            var match = (!chosen || setting.getAttribute("data-category") === chosen) &&
              (!needle || setting.getAttribute("data-name").indexOf(needle) !== -1);
            setting.hidden = !match;
            if (match) { shown += 1; }
          });
          group.hidden = shown === 0;
          if (shown) { any = true; }
        });
        if (none) { none.hidden = any; }
      }
      search.addEventListener("input", apply);
      category.addEventListener("change", apply);
      search.addEventListener("keydown", function (event) {
        if (event.key === "Enter") { event.preventDefault(); apply(); }
      });
    });
  });
})();
