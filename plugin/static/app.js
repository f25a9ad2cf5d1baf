/*
 * Kizuna's embedded page: small vanilla JavaScript over the JSON API.
 *
 * Every API call goes through window.fetch, which App Bridge wraps to add
 * `Authorization: Bearer <ID token>`. Every string comes from the server's catalog
 * (#kizuna-i18n); every value a customer typed is put in the page as text (textContent),
 * never as HTML.
 */
(function () {
  "use strict";

  var messages = JSON.parse(document.getElementById("kizuna-i18n").textContent);
  var page = JSON.parse(document.getElementById("kizuna-page").textContent);
  var locale = page.locale;
  var SYMBOLS = { JPY: "¥", USD: "$", EUR: "€", GBP: "£", CAD: "$", AUD: "$", KRW: "₩" };
  var ZERO_DECIMAL = ["JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "TWD", "HUF"];
  var EN_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  // -- strings and formats (mirrors plugin/i18n.py) -------------------------------------------

  function t(key, params) {
    var text = Object.prototype.hasOwnProperty.call(messages, key) ? messages[key] : key;
    if (params) {
      Object.keys(params).forEach(function (name) {
        text = text.split("{" + name + "}").join(String(params[name]));
      });
    }
    return text;
  }

  function group(digits) {
    return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function fmtNumber(value, decimals) {
    var n = Number(value);
    if (!isFinite(n)) return "—";
    var fixed = Math.abs(n).toFixed(decimals || 0).split(".");
    return (n < 0 ? "-" : "") + group(fixed[0]) + (fixed[1] ? "." + fixed[1] : "");
  }

  function fmtMoney(amount, currency) {
    if (amount === null || amount === undefined || amount === "") return "—";
    currency = (currency || page.currency || "JPY").toUpperCase();
    var decimals = ZERO_DECIMAL.indexOf(currency) >= 0 ? 0 : 2;
    var n = Number(amount);
    var text = fmtNumber(Math.abs(n), decimals);
    var sign = n < 0 ? "-" : "";
    return SYMBOLS[currency] ? sign + SYMBOLS[currency] + text : sign + text + " " + currency;
  }

  function localParts(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return null;
    try {
      var parts = {};
      new Intl.DateTimeFormat("en-US", {
        timeZone: page.timezone || "UTC", year: "numeric", month: "numeric", day: "numeric",
        hour: "numeric", minute: "2-digit", hourCycle: "h23",
      }).formatToParts(d).forEach(function (p) { parts[p.type] = p.value; });
      return { y: +parts.year, m: +parts.month, d: +parts.day, h: parts.hour, min: parts.minute };
    } catch (e) {
      return { y: d.getUTCFullYear(), m: d.getUTCMonth() + 1, d: d.getUTCDate(), h: d.getUTCHours(), min: "00" };
    }
  }

  function fmtDate(iso, withTime) {
    if (!iso) return "—";
    var p = /^\d{4}-\d{2}-\d{2}$/.test(iso)
      ? { y: +iso.slice(0, 4), m: +iso.slice(5, 7), d: +iso.slice(8, 10) } : localParts(iso);
    if (!p) return "—";
    var time = withTime && p.h !== undefined ? " " + p.h + ":" + p.min : "";
    if (locale === "ja") return p.y + "年" + p.m + "月" + p.d + "日" + time;
    return EN_MONTHS[p.m - 1] + " " + p.d + ", " + p.y + time;
  }

  function fmtMonth(ym) {
    var y = +ym.slice(0, 4), m = +ym.slice(5, 7);
    return locale === "ja" ? y + "年" + m + "月" : EN_MONTHS[m - 1] + " " + y;
  }

  function fmtPercent(rate) {
    return rate === null || rate === undefined ? "—" : fmtNumber(rate * 100, 1) + "%";
  }

  // -- DOM --------------------------------------------------------------------------------------

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) return;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.slice(0, 2) === "on") node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" || typeof child === "number"
        ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function fill(tbody, rows, emptyText, columns) {
    tbody.textContent = "";
    if (!rows.length) {
      tbody.appendChild(el("tr", {}, el("td", { colspan: columns, class: "empty", text: emptyText })));
      return;
    }
    rows.forEach(function (row) { tbody.appendChild(row); });
  }

  /* App Bridge's toast in the admin; the page's own when there is none (opened alone). */
  function toast(message) {
    if (window.shopify && window.shopify.toast && window.parent !== window) {
      window.shopify.toast.show(message);
      return;
    }
    var box = $("#app-toast");
    box.textContent = message;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { box.hidden = true; }, 3000);
  }

  function badge(text, tone) { return el("span", { class: "badge" + (tone ? " badge-" + tone : ""), text: text }); }

  // -- API and navigation -----------------------------------------------------------------------

  function api(path, options) {
    options = options || {};
    var init = { method: options.method || "GET", headers: { Accept: "application/json" } };
    if (options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    return fetch(path, init).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      var body = type.indexOf("json") >= 0 ? response.json() : response.text();
      return body.then(function (data) {
        if (response.ok) return data;
        var error = new Error((data && data.message) || response.statusText);
        error.status = response.status;
        error.body = data;
        throw error;
      });
    });
  }

  function failed(error) {
    if (error && error.status === 422) return;
    toast(t("common.error"));
    if (window.console) console.error(error);
  }

  function pageUrl(path, params, token) {
    var query = new URLSearchParams();
    Object.keys(page.carried || {}).forEach(function (k) { query.set(k, page.carried[k]); });
    Object.keys(params || {}).forEach(function (k) { query.set(k, params[k]); });
    if (token) query.set("id_token", token);
    return path + "?" + query.toString();
  }

  /* A document load needs a fresh ID token on its URL (the server checks it, as Shopify's). */
  function navigate(path, params) {
    return window.shopify.idToken().then(function (token) {
      window.location.assign(pageUrl(path, params, token));
    });
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("[data-nav]");
    if (link) {
      event.preventDefault();
      navigate(link.getAttribute("data-nav"));
      return;
    }
    var lang = event.target.closest && event.target.closest("[data-locale-switch]");
    if (lang) {
      event.preventDefault();
      var current = new URLSearchParams(window.location.search);
      var keep = {};
      current.forEach(function (v, k) { if (k !== "id_token" && k !== "hmac") keep[k] = v; });
      keep.locale = lang.getAttribute("data-locale-switch");
      page.carried.locale = keep.locale;
      navigate(window.location.pathname, keep);
    }
  });

  // -- validation messages next to the field ----------------------------------------------------

  function clearErrors(form) {
    $all(".invalid", form).forEach(function (n) { n.classList.remove("invalid"); });
    $all(".field-error", form).forEach(function (n) { n.textContent = ""; });
    var formError = $("#form-error");
    if (formError) { formError.hidden = true; formError.textContent = ""; }
  }

  function fieldMessage(body) {
    var text = body && (body.message || (typeof body.error === "string" && body.error !== "validation" ? body.error : ""));
    return locale === "en" && text ? text : t("error.field_invalid");
  }

  /* Put a 422's message next to its field: `offset_days`, `steps[1].offset_days`, `steps.1.x`. */
  function showError(form, body) {
    var field = (body && body.field) || "";
    var message = fieldMessage(body);
    var stepMatch = /^steps\W+(\d+)\W+(\w+)/.exec(field);
    var target = null;
    if (stepMatch) {
      var row = $all("#steps tbody tr", form)[+stepMatch[1]];
      var name = stepMatch[2] === "discount" ? "coupon" : stepMatch[2];
      target = row && ($("[name='" + name + "']", row) || row.querySelector("input"));
      if (target) {
        target.parentNode.classList.add("invalid");
        target.setAttribute("aria-invalid", "true");
        var note = target.parentNode.querySelector(".field-error") ||
          target.parentNode.appendChild(el("p", { class: "field-error", role: "alert" }));
        note.textContent = message;
      }
    } else {
      var plain = field.replace(/\[\d+\]$/, "");  // trigger.product_ids[0] → its input
      var box = $("[data-field='" + plain + "']", form) ||
        $("[data-field='" + plain.split(".")[0] + "']", form);
      if (box) {
        box.classList.add("invalid");
        $(".field-error", box).textContent = message;
        target = box;
      }
    }
    var formError = $("#form-error");
    if (formError) {
      formError.textContent = target ? t("editor.invalid") : message;
      formError.hidden = false;
    }
  }

  // -- home -------------------------------------------------------------------------------------

  function initHome() {
    api("/api/analytics/summary").then(function (data) {
      var tbody = $("#segment-counts tbody");
      var order = ["prospect", "new", "repeat", "loyal", "dormant", "churned"];
      fill(tbody, order.map(function (name) {
        return el("tr", { "data-segment": name },
          el("td", {}, el("a", { href: "/app/customers", "data-nav": "/app/customers", text: t("segment." + name) })),
          el("td", { class: "num", text: fmtNumber(data.segments[name] || 0) }));
      }), t("common.none"), 2);
      $("[data-stat='birthdays_this_month']").textContent = fmtNumber(data.birthdays_this_month);
      var activity = data.activity || {};
      ["steps_today", "steps_week", "coupons_issued", "coupons_redeemed"].forEach(function (name) {
        if (activity[name] !== undefined) $("[data-stat='" + name + "']").textContent = fmtNumber(activity[name]);
      });
      var list = $("#attention-list");
      list.textContent = "";
      if (!data.attention.length) list.appendChild(el("li", { class: "subdued", text: t("home.all_good") }));
      data.attention.forEach(function (item) {
        list.appendChild(el("li", { "data-kind": item.kind },
          badge(item.kind === "reauth" ? "!" : String(item.count), "critical"),
          t("home.attention_" + item.kind, { count: fmtNumber(item.count || 0) })));
      });
    }).catch(failed);
    pollBackfill();
  }

  function pollBackfill() {
    api("/api/backfill").then(function (data) {
      var block = $("#backfill");
      var status = data.status || (data.progress && data.progress.status);
      if (!status || status === "none") return;
      var done = +(data.rows_done || 0), total = +(data.rows_total || 0);
      block.hidden = false;
      var percent = status === "done" ? 100 : (total ? Math.min(99, Math.round(done * 100 / total)) : 5);
      $("#backfill-bar").style.width = percent + "%";
      $(".progress", block).setAttribute("aria-valuenow", String(percent));
      $("#backfill-label").textContent = status === "done" ? t("home.backfill_done")
        : status === "failed" ? t("home.backfill_failed")
        : total ? t("home.backfill_progress", { done: fmtNumber(done), total: fmtNumber(total) })
        : t("home.backfill_rows", { done: fmtNumber(done) });
      if (status === "running") setTimeout(pollBackfill, 2000);
    }).catch(function () { /* no backfill yet: nothing to show */ });
  }

  // -- sequences ----------------------------------------------------------------------------------

  function listOf(data, key) {
    if (Array.isArray(data)) return data;
    return (data && (data[key] || data.items)) || [];
  }

  function setActive(id, active) {
    var verb = active ? "/activate" : "/deactivate";
    return api("/api/sequences/" + encodeURIComponent(id) + verb, { method: "POST", body: {} });
  }

  function initSequences() {
    api("/api/sequences").then(function (data) {
      var rows = listOf(data, "sequences").map(function (seq) {
        var sw = el("input", { type: "checkbox", role: "switch", "aria-label": seq.title || seq.id, "data-testid": "toggle-" + seq.id });
        sw.checked = !!seq.active;
        sw.addEventListener("change", function () {
          sw.disabled = true;
          setActive(seq.id, sw.checked).then(function () {
            toast(t(sw.checked ? "sequences.turned_on" : "sequences.turned_off"));
          }).catch(function (e) { sw.checked = !sw.checked; failed(e); })
            .then(function () { sw.disabled = false; });
        });
        var path = "/app/sequences/" + encodeURIComponent(seq.id);
        return el("tr", { "data-sequence": seq.id },
          el("td", { "data-raw": true }, el("a", { href: path, "data-nav": path, text: seq.title || seq.id })),
          el("td", { text: t("trigger." + (typeof seq.trigger === "string" ? seq.trigger : seq.trigger.kind)) }),
          el("td", { class: "num", text: fmtNumber(typeof seq.steps === "number" ? seq.steps : seq.steps.length) }),
          el("td", { class: "num", text: "v" + (seq.version || 1) }),
          el("td", {}, el("label", { class: "switch" }, sw, el("span"))));
      });
      fill($("#sequence-list tbody"), rows, t("sequences.empty"), 5);
    }).catch(failed);
  }

  // -- sequence editor ------------------------------------------------------------------------------

  function stepRow(step) {
    step = step || { key: "", offset_days: 0, send_hour: 10, title: "" };
    var pct = step.discount && step.discount.kind === "percentage" ? step.discount.value : "";
    var flow = el("input", { type: "checkbox", name: "flow_trigger", "aria-label": t("editor.flow") });
    flow.checked = !!step.flow_trigger;
    var row = el("tr", {},
      el("td", {}, el("input", { name: "key", value: step.key, "aria-label": t("editor.step_key") })),
      el("td", {}, el("input", { name: "offset_days", value: step.offset_days, inputmode: "numeric", "aria-label": t("editor.offset") })),
      el("td", {}, el("input", { name: "send_hour", value: step.send_hour, inputmode: "numeric", "aria-label": t("editor.send_hour") })),
      el("td", {}, el("input", { name: "title", value: step.title || "", "aria-label": t("editor.step_title") })),
      el("td", {}, el("input", { name: "tags", value: (step.tags || []).join(", "), "aria-label": t("editor.extra_tags") })),
      el("td", {}, el("input", { name: "coupon", value: pct, inputmode: "numeric", "aria-label": t("editor.coupon") })),
      el("td", {}, flow),
      el("td", {}, el("button", { type: "button", class: "button small", text: t("common.remove"),
        onclick: function () { row.remove(); } })));
    row.dataset.extra = JSON.stringify(step);
    return row;
  }

  function numberOrText(value) {
    var v = String(value).trim();
    return /^-?\d+$/.test(v) ? parseInt(v, 10) : v;
  }

  function readForm(form, base) {
    var def = JSON.parse(JSON.stringify(base || {}));
    def.id = $("#f-id").value.trim();
    def.title = $("#f-title").value.trim();
    def.trigger = Object.assign({}, def.trigger || {}, { kind: $("#f-kind").value, anchor: $("#f-anchor").value });
    ["product_ids", "consumption_days", "nth", "date_source", "segment"].forEach(function (name) {
      var box = $("[data-field='trigger." + name + "']", form);
      var value = $("[name='trigger." + name + "']", form).value.trim();
      if (box.hidden || !value) { delete def.trigger[name]; return; }
      def.trigger[name] = name === "product_ids"
        ? value.split(",").map(function (x) { return numberOrText(x); }) : numberOrText(value);
    });
    def.steps = $all("#steps tbody tr", form).map(function (row) {
      var step = JSON.parse(row.dataset.extra || "{}");
      step.key = $("[name=key]", row).value.trim();
      step.offset_days = numberOrText($("[name=offset_days]", row).value);
      step.send_hour = numberOrText($("[name=send_hour]", row).value);
      step.title = $("[name=title]", row).value;
      step.flow_trigger = $("[name=flow_trigger]", row).checked;
      var extra = $("[name=tags]", row).value.split(",").map(function (x) { return x.trim(); }).filter(Boolean);
      if (extra.length) step.tags = extra; else delete step.tags;
      var pct = $("[name=coupon]", row).value.trim();
      if (pct) step.discount = Object.assign({}, step.discount || {}, { kind: "percentage", value: numberOrText(pct) });
      else delete step.discount;
      return step;
    });
    def.exit = {};
    ["on_order", "on_redeem", "on_segment_left"].forEach(function (name) {
      def.exit[name] = $("[name='exit." + name + "']", form).checked;
    });
    delete def.version;
    delete def.active;
    return def;
  }

  function loadForm(form, def) {
    $("#f-id").value = def.id || "";
    $("#f-title").value = def.title || "";
    $("#f-kind").value = (def.trigger && def.trigger.kind) || "first_order";
    $("#f-anchor").value = (def.trigger && def.trigger.anchor) || "order";
    var trigger = def.trigger || {};
    ["product_ids", "consumption_days", "nth", "date_source", "segment"].forEach(function (name) {
      var input = $("[name='trigger." + name + "']", form);
      var value = trigger[name];
      if (value === undefined || value === null) value = input.tagName === "SELECT" ? input.options[0].value : "";
      input.value = Array.isArray(value) ? value.join(", ") : value;
    });
    showTriggerDetails(form);
    var tbody = $("#steps tbody");
    tbody.textContent = "";
    (def.steps || []).forEach(function (s) { tbody.appendChild(stepRow(s)); });
    var exit = def.exit || {};
    ["on_order", "on_redeem", "on_segment_left"].forEach(function (name) {
      $("[name='exit." + name + "']", form).checked = !!exit[name];
    });
  }

  /* Only the fields the chosen trigger reads are shown (and sent). */
  function showTriggerDetails(form) {
    var kind = $("#f-kind").value;
    $all("#trigger-details [data-kinds]", form).forEach(function (box) {
      box.hidden = box.getAttribute("data-kinds").split(" ").indexOf(kind) < 0;
    });
  }

  function initEditor() {
    var form = $("#sequence-form");
    $("#f-kind").addEventListener("change", function () { showTriggerDetails(form); });
    var editor = $("#editor");
    var state = { id: editor.dataset.sequenceId || null, base: {} };
    $("#add-step").addEventListener("click", function () { $("#steps tbody").appendChild(stepRow()); });

    function afterSave(data) {
      var def = data.definition || data;
      state.id = data.id || def.id;
      state.base = def;
      $("#f-id").readOnly = true;
      $("#activate").hidden = !!data.active;
      loadSequence(false);
    }

    /* Newest first: the version, when it was saved (shop time zone, the page's language),
       and how many steps it had. */
    function showVersions(history, current) {
      var rows = history.slice().reverse().map(function (v) {
        return el("tr", { "data-version": v.version },
          el("td", {}, "v" + v.version, v.version === current ? " " : null,
            v.version === current ? badge(t("editor.current"), "success") : null),
          el("td", { class: "saved-at", text: fmtDate(v.saved_at, true) }),
          el("td", { class: "num", text: fmtNumber(v.steps) }));
      });
      $("#versions").hidden = false;
      fill($("#version-list tbody"), rows, t("common.none"), 3);
    }

    /* The stored sequence: its versions always, the form only when asked (a first load). */
    function loadSequence(intoForm) {
      return api("/api/sequences/" + encodeURIComponent(state.id)).then(function (data) {
        if (intoForm) loadForm(form, data.definition);
        state.base = data.definition;
        $("#activate").hidden = !!data.active;
        showVersions(data.history || (data.versions || []).map(function (n) {
          return { version: n, saved_at: null, steps: null };
        }), data.version);
        return data;
      });
    }

    if (state.id) {
      $("#f-id").readOnly = true;
      loadSequence(true).catch(failed);
    } else {
      var templates = JSON.parse(document.getElementById("kizuna-templates").textContent);
      var grid = $("#template-list");
      templates.forEach(function (tpl) {
        var card = el("button", { type: "button", class: "template", "data-template": tpl.handle },
          el("strong", { text: tpl.title }), el("span", { class: "subdued", text: tpl.description || "" }));
        card.addEventListener("click", function () {
          $all(".template.selected").forEach(function (n) { n.classList.remove("selected"); });
          card.classList.add("selected");
          var def = JSON.parse(JSON.stringify(tpl.definition || {}));
          def.title = def.title || tpl.title;
          def.id = def.id || tpl.handle;
          state.base = def;
          loadForm(form, def);
        });
        grid.appendChild(card);
      });
      loadForm(form, { steps: [{ key: "step-1", offset_days: 7, send_hour: 10, title: "" }], exit: { on_redeem: true } });
    }

    function save() {
      clearErrors(form);
      var def = readForm(form, state.base);
      var request = state.id
        ? api("/api/sequences/" + encodeURIComponent(state.id), { method: "PUT", body: def })
        : api("/api/sequences", { method: "POST", body: { definition: def } });
      return request.then(function (data) {
        afterSave(data);
        toast(t("editor.saved"));
        return data;
      }).catch(function (error) {
        if (error.status === 422) showError(form, error.body);
        else failed(error);
        throw error;
      });
    }

    form.addEventListener("submit", function (event) { event.preventDefault(); save().catch(function () {}); });
    $("#preview-button").addEventListener("click", function () {
      save().then(function (seq) {
        return api("/api/sequences/" + encodeURIComponent(seq.id) + "/preview", { method: "POST", body: {} });
      }).then(showPreview).catch(function () {});
    });
    $("#activate").addEventListener("click", function () {
      setActive(state.id, true).then(function () {
        $("#activate").hidden = true;
        toast(t("editor.activated"));
      }).catch(failed);
    });
  }

  function showPreview(data) {
    var box = $("#preview");
    box.hidden = false;
    var count = data.would_enter || 0;
    $("#preview-summary").textContent = t("preview.summary", { count: fmtNumber(count) });
    var byStep = data.by_step || data.steps || {};
    var stepRows = Object.keys(byStep).map(function (key) {
      return el("tr", {}, el("td", { "data-raw": true, text: key }), el("td", { class: "num", text: fmtNumber(byStep[key]) }));
    });
    fill($("#preview-steps tbody"), stepRows, t("common.none"), 2);
    /* Names and emails are the shop's data: put in as text (el's textContent), never HTML. */
    var sample = (data.sample || []).map(function (c) {
      var named = c.first_name || c.last_name;
      var name = named ? customerName(c) : c.email || "#" + c.customer_id;
      var path = "/app/customers/" + c.customer_id;
      return el("tr", { "data-customer": c.customer_id },
        el("td", { "data-raw": true }, el("a", { href: path, "data-nav": path, text: name })),
        el("td", { "data-raw": true, class: "email", text: c.email || "" }),
        el("td", { "data-raw": true, text: c.step || "" }), el("td", { text: fmtDate(c.due_at, true) }));
    });
    fill($("#preview-sample tbody"), sample, t("common.none"), 4);
  }

  // -- customers ------------------------------------------------------------------------------------

  function customerName(c) {
    var name = [c.last_name, c.first_name];
    if (locale !== "ja") name.reverse();
    return name.filter(Boolean).join(" ") || c.name || t("customers.no_name");
  }

  function filterQuery(form) {
    var query = new URLSearchParams();
    new FormData(form).forEach(function (value, key) { if (String(value).trim()) query.set(key, String(value).trim()); });
    return query;
  }

  function customerRow(c) {
    var path = "/app/customers/" + c.id;
    return el("tr", { "data-customer": c.id },
      el("td", { "data-raw": true }, el("a", { href: path, "data-nav": path, text: customerName(c) })),
      el("td", { "data-raw": true, text: c.email || "" }),
      el("td", {}, c.segment ? badge(t("segment." + c.segment)) : null),
      el("td", { class: "num", text: fmtNumber(c.orders_count || 0) }),
      el("td", { class: "num", text: fmtMoney(c.total_spent, c.currency) }),
      el("td", { text: fmtDate(c.last_order_at) }));
  }

  function initCustomers() {
    var form = $("#customer-filters");
    var tbody = $("#customer-list tbody");
    var more = $("#more-customers");
    var state = { cursor: null, shown: 0 };
    function load(append) {
      clearErrors(form);
      var query = filterQuery(form);
      if (append && state.cursor) query.set("cursor", state.cursor);
      api("/api/customers?" + query.toString()).then(function (data) {
        var rows = listOf(data, "customers").map(customerRow);
        if (append) rows.forEach(function (r) { tbody.appendChild(r); });
        else fill(tbody, rows, t("customers.empty"), 6);
        state.shown = (append ? state.shown : 0) + rows.length;
        state.cursor = data.next_cursor || null;
        more.hidden = !state.cursor;
        $("#customer-total").textContent = t("customers.total_count", { count: fmtNumber(state.shown) + (state.cursor ? "+" : "") });
      }).catch(function (error) {
        if (error.status === 400 || error.status === 422) showError(form, error.body); else failed(error);
      });
    }
    form.addEventListener("submit", function (event) { event.preventDefault(); load(false); });
    more.addEventListener("click", function () { load(true); });
    $("#export-csv").addEventListener("click", function () {
      download("/api/customers/export.csv?" + filterQuery(form).toString(), "customers.csv");
    });
    load(false);
  }

  /* A download through fetch (so App Bridge adds the token), saved from a blob URL. */
  function download(path, filename) {
    return fetch(path).then(function (response) {
      if (!response.ok) throw new Error(response.statusText);
      return response.blob();
    }).then(function (blob) {
      var url = URL.createObjectURL(blob);
      var a = el("a", { href: url, download: filename });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    }).catch(failed);
  }

  /* A decision in words: the catalog's reason text (crm.decisions.REASONS, sent by the page). */
  function reasonText(d) {
    var reasons = JSON.parse(document.getElementById("kizuna-reasons").textContent);
    var text = reasons[d.reason] || d.reason || d.decision || "";
    var detail = Object.assign({ step: d.step || "" }, d.detail || {});
    return text.replace(/\{(\w+)\}/g, function (_, name) {
      var v = detail[name];
      if (v === undefined || v === null) return "?";
      return /^\d{4}-\d{2}-\d{2}T/.test(String(v)) ? fmtDate(String(v), true) : String(v);
    });
  }

  /* Orders and enrolments, both carried by GET /api/customers/<id>. Until a locale has the
     key, a status reads as its code ("held_out" → "held out"). */
  function customerHistory(c) {
    function label(key, fallback) { var text = t(key); return text === key ? fallback : text; }
    var orders = listOf(c, "orders").map(function (o) {
      return el("tr", { "data-order": o.id, "data-cancelled": o.cancelled ? "true" : "false" },
        el("td", {}, el("span", { "data-raw": true, text: o.name || ("#" + o.id) }),
          o.cancelled ? badge(label("customers.cancelled", "cancelled"), "critical") : null),
        el("td", { text: fmtDate(o.created_at) }),
        el("td", { class: "num", text: fmtMoney(o.total, o.currency) }));
    });
    fill($("#orders tbody"), orders, t("common.none"), 3);
    var enrolments = listOf(c, "enrolments").map(function (e) {
      var status = label("enrolment." + e.status, String(e.status).replace(/_/g, " "));
      return el("tr", { "data-sequence": e.sequence_id, "data-status": e.status },
        el("td", { "data-raw": true, text: e.sequence_title || e.sequence_id }),
        el("td", {}, badge(status, e.status === "active" ? "success" : null)),
        el("td", { "data-raw": true, text: e.step_title || "—" }),
        el("td", { text: fmtDate(e.due_at, true) }));
    });
    fill($("#enrolments tbody"), enrolments, t("common.none"), 4);
  }

  function initCustomer() {
    var id = $("#customer").dataset.customerId;
    api("/api/customers/" + id).then(function (c) {
      $("#customer-name").textContent = customerName(c);
      $("#customer-name").setAttribute("data-raw", "");
      var facts = $("#customer-facts");
      facts.textContent = "";
      [[t("customers.email"), c.email || "—"],
       [t("customers.orders"), fmtNumber(c.orders_count || 0)],
       [t("customers.spent"), fmtMoney(c.total_spent, c.currency)],
       [t("customers.first_order"), fmtDate(c.first_order_at)],
       [t("customers.last_order"), fmtDate(c.last_order_at)],
       [t("customers.birthday"), fmtDate(c.birthday)],
       [t("customers.consent"), t("consent." + String(c.email_marketing_state || "not_subscribed").toLowerCase())]
      ].forEach(function (pair) {
        facts.appendChild(el("div", {}, el("dt", { text: pair[0] }),
          el("dd", { text: pair[1], "data-long": pair[1].length > 14 })));
      });
      $("#customer-facts dd").setAttribute("data-raw", "");  // the e-mail address
      var segs = $("#customer-segments");
      segs.textContent = "";
      if (c.segment) segs.appendChild(badge(t("segment." + c.segment), "info"));
      (c.tags || []).forEach(function (tag) { segs.appendChild(badge(tag)).setAttribute("data-raw", ""); });
      customerHistory(c);
    }).catch(failed);
    api("/api/customers/" + id + "/log").then(function (data) {
      var rows = listOf(data, "entries").slice().reverse().map(function (d) {
        return el("tr", { "data-reason": d.reason || d.decision || "", "data-step": d.step || "" },
          el("td", { text: fmtDate(d.at, true) }), el("td", { "data-raw": true, text: d.sequence || "" }),
          el("td", { text: reasonText(d) }));
      });
      fill($("#decision-log tbody"), rows, t("common.none"), 3);
    }).catch(failed);
  }

  // -- analytics: inline SVG, rendered here ---------------------------------------------------------

  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k]; else node.setAttribute(k, attrs[k]);
    });
    return node;
  }

  function f2Chart(rows) {
    var box = $("#f2-chart");
    box.textContent = "";
    if (!rows.length) { box.appendChild(el("p", { class: "empty", text: t("analytics.no_data") })); return; }
    var W = 900, H = 240, left = 44, bottom = 28, top = 12;
    var max = Math.max(0.1, Math.max.apply(null, rows.map(function (r) { return r.rate; })));
    max = Math.ceil(max * 10) / 10;
    var chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": t("analytics.f2") });
    var slot = (W - left) / rows.length, bar = Math.min(36, slot * 0.6);
    for (var g = 0; g <= 4; g++) {
      var y = top + (H - top - bottom) * (1 - g / 4);
      chart.appendChild(svg("line", { x1: left, x2: W, y1: y, y2: y, stroke: "#ebebeb" }));
      chart.appendChild(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", text: fmtNumber(max * g / 4 * 100) + "%" }));
    }
    rows.forEach(function (r, i) {
      var x = left + slot * i + (slot - bar) / 2, scale = (H - top - bottom) / max;
      var hAll = r.rate * scale, hWin = r.rate_window * scale;
      var all = svg("rect", { x: x, y: H - bottom - hAll, width: bar, height: hAll, fill: "#a4e8f2", rx: 3 });
      all.appendChild(svg("title", { text: fmtMonth(r.month) + " · " + t("analytics.f2_all") + " " + fmtPercent(r.rate) + " (" + fmtNumber(r.second_buyers) + "/" + fmtNumber(r.customers) + ")" }));
      chart.appendChild(all);
      var win = svg("rect", { x: x, y: H - bottom - hWin, width: bar, height: hWin, fill: "#1f8aa6", rx: 3, "data-month": r.month });
      win.appendChild(svg("title", { text: fmtMonth(r.month) + " · " + t("analytics.f2_window") + " " + fmtPercent(r.rate_window) }));
      chart.appendChild(win);
      if (rows.length <= 14 || i % Math.ceil(rows.length / 12) === 0) {
        chart.appendChild(svg("text", { x: x + bar / 2, y: H - 8, "text-anchor": "middle", text: fmtMonth(r.month) }));
      }
    });
    box.appendChild(chart);
  }

  function heatColour(v) {
    var light = 96 - Math.round(v * 50);
    return "hsl(191, 70%, " + light + "%)";
  }

  function cohortTable(cohorts, currency) {
    var table = $("#cohort-table");
    var head = el("tr", {}, el("th", { text: t("analytics.cohort") }), el("th", { class: "num", text: t("common.customers") }));
    cohorts.months.forEach(function (m) { head.appendChild(el("th", { class: "num", text: t("analytics.month_n", { n: m }) })); });
    $("thead", table).textContent = "";
    $("thead", table).appendChild(head);
    var rows = cohorts.rows.map(function (r) {
      var tr = el("tr", { "data-month": r.month }, el("td", { text: fmtMonth(r.month) }), el("td", { class: "num", text: fmtNumber(r.customers) }));
      r.ltv.forEach(function (v, i) {
        var cell = el("td", { text: fmtMoney(v, currency) });
        cell.style.background = heatColour(r.heat[i]);
        if (r.heat[i] > 0.65) cell.style.color = "#fff";
        tr.appendChild(cell);
      });
      return tr;
    });
    fill($("tbody", table), rows, t("analytics.no_data"), 2 + cohorts.months.length);
  }

  function funnelChart(id, seq, currency) {
    var f = seq.funnel;
    var stages = [[t("analytics.entered"), f.entered]];
    seq.steps.forEach(function (title, i) { stages.push([title, f.steps[i] || 0, true]); });
    stages.push([t("analytics.ordered"), f.ordered]);
    var W = 900, rowH = 26, H = stages.length * rowH + 4, left = 200;
    var max = Math.max(1, f.entered);
    var chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": seq.title });
    stages.forEach(function (s, i) {
      var w = (W - left - 80) * s[1] / max, y = i * rowH + 2;
      var label = svg("text", { x: left - 8, y: y + 16, "text-anchor": "end", text: s[0] });
      if (s[2]) label.setAttribute("data-raw", "");
      chart.appendChild(label);
      chart.appendChild(svg("rect", { x: left, y: y, width: Math.max(w, 1), height: rowH - 6, rx: 3,
        fill: i === stages.length - 1 ? "#29845a" : "#1f8aa6" }));
      chart.appendChild(svg("text", { x: left + Math.max(w, 1) + 6, y: y + 16, text: fmtNumber(s[1]) }));
    });
    var stats = el("dl", { class: "stats" });
    [[t("analytics.revenue"), fmtMoney(f.revenue, currency)],
     [t("analytics.discounts"), fmtMoney(f.discounts, currency)],
     [t("analytics.cost"), fmtMoney(f.cost, currency)],
     [t("analytics.cpo"), f.cost_per_order === null ? "—" : fmtMoney(f.cost_per_order, currency)]
    ].forEach(function (p) { stats.appendChild(el("div", {}, el("dt", { text: p[0] }), el("dd", { text: p[1] }))); });
    var wrap = el("div", { class: "funnel chart", "data-sequence": id }, el("h3", { "data-raw": true, text: seq.title }));
    wrap.appendChild(chart);
    wrap.appendChild(stats);
    return wrap;
  }

  function initAnalytics() {
    api("/api/analytics").then(function (data) {
      if (data.pending) { $("#analytics-as-of").textContent = t("analytics.pending"); return; }
      var currency = data.currency || page.currency;
      var asOf = t("analytics.as_of", { date: fmtDate(data.computed_at, true) });
      $("#analytics-as-of").textContent = data.refreshing ? asOf + " · " + t("analytics.pending") : asOf;
      f2Chart(data.f2);
      cohortTable(data.cohorts, currency);
      var funnels = $("#funnels");
      funnels.textContent = "";
      var ids = Object.keys(data.sequences);
      if (!ids.length) funnels.appendChild(el("p", { class: "empty", text: t("common.none") }));
      var holdoutRows = [];
      ids.forEach(function (id) {
        var seq = data.sequences[id];
        funnels.appendChild(funnelChart(id, seq, currency));
        var h = seq.holdout;
        if (h && h.holdout.customers) {
          holdoutRows.push(el("tr", {}, el("td", { "data-raw": true, text: seq.title }), el("td", { class: "num", text: fmtPercent(h.treated.rate) }),
            el("td", { class: "num", text: fmtPercent(h.holdout.rate) }),
            el("td", { class: "num", text: h.lift === null ? "—" : (h.lift >= 0 ? "+" : "") + fmtNumber(h.lift * 100, 1) + " pt" })));
        }
      });
      fill($("#holdout-table tbody"), holdoutRows, t("analytics.no_holdout"), 4);
      var defaults = data.calculator_defaults || {};
      if (defaults.first_order_value) $("#c-first").value = Math.round(+defaults.first_order_value);
      if (defaults.ltv) $("#c-ltv").value = Math.round(+defaults.ltv);
      calculate();
    }).catch(failed);
    $("#calculator").addEventListener("input", function () {
      clearTimeout(calculate.timer);
      calculate.timer = setTimeout(calculate, 250);
    });
  }

  function calculate() {
    var query = filterQuery($("#calculator"));
    api("/api/analytics/calculator?" + query.toString()).then(function (r) {
      var out = $("#calculator-result");
      out.textContent = "";
      [[t("analytics.cpo"), fmtMoney(r.cpo)],
       [t("analytics.first_ratio"), r.first_order_ratio === null ? "—" : fmtNumber(r.first_order_ratio, 2) + "×"],
       [t("analytics.ltv_ratio"), r.ltv_ratio === null ? "—" : fmtNumber(r.ltv_ratio, 2) + "×"],
       [t("analytics.ltv_margin"), fmtMoney(r.ltv_margin)]
      ].forEach(function (p) { out.appendChild(el("div", {}, el("dt", { text: p[0] }), el("dd", { text: p[1] }))); });
    }).catch(function (error) {
      if (error.status !== 422) failed(error);
    });
  }

  // -- settings -------------------------------------------------------------------------------------

  function initSettings() {
    var form = $("#settings-form");
    function show(data) {
      var s = data.settings;
      Object.keys(s).forEach(function (name) {
        var input = form.elements.namedItem(name);
        if (input) input.value = s[name] === null ? "" : (/spent|cost/.test(name) ? String(Math.round(+s[name] * 100) / 100) : s[name]);
      });
      if (data.timezone) $("#shop-timezone").textContent = data.timezone;
    }
    api("/api/settings").then(show).catch(failed);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearErrors(form);
      var body = {};
      $all("input[name]", form).forEach(function (input) {
        var v = input.value.trim();
        body[input.name] = v === "" ? null : (/^-?\d+$/.test(v) && !/spent|cost/.test(input.name) ? parseInt(v, 10) : v);
      });
      api("/api/settings", { method: "PUT", body: body }).then(function (data) {
        show(data);
        toast(t("settings.saved"));
      }).catch(function (error) {
        if (error.status === 422) showError(form, error.body); else failed(error);
      });
    });
    $("#privacy-export").addEventListener("click", function () { download("/api/settings/export.csv", "kizuna-customers.csv"); });
    $("#privacy-erase").addEventListener("click", function () {
      var typed = window.prompt(t("settings.erase_confirm"));
      if (!typed) return;
      api("/api/settings/erase", { method: "POST", body: { confirm: typed.trim() } })
        .then(function () { toast(t("settings.erased")); }).catch(failed);
    });
  }

  var pages = {
    home: initHome, sequences: initSequences, customers: initCustomers, analytics: initAnalytics, settings: initSettings,
  };
  if (page.page === "sequences" && $("#editor")) initEditor();
  else if (page.page === "customers" && $("#customer")) initCustomer();
  else if (pages[page.page]) pages[page.page]();
  document.documentElement.dataset.ready = "1";
})();
