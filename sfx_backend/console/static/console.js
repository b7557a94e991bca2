/* sfx console: one script for every page (body[data-page] says which). It talks to the public API and
 * the admin API with the browser's cookies; state-changing requests repeat the CSRF cookie in
 * X-CSRF-TOKEN. No token is ever visible here (the auth cookies are HttpOnly) or stored. */
"use strict";
(function () {
  var body = document.body;
  var page = body.getAttribute("data-page");

  // -- small helpers -------------------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; } else if (attrs[key] !== null && attrs[key] !== undefined) {
        node.setAttribute(key, attrs[key]);
      }
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }
  function cookie(name) {
    var found = document.cookie.split("; ").filter(function (c) { return c.indexOf(name + "=") === 0; })[0];
    return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
  }
  function when(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }
  function day(iso) { return iso ? new Date(iso).toLocaleDateString() : "—"; }
  function money(cents, currency) {
    return ((cents || 0) / 100).toLocaleString(undefined, {style: "currency", currency: (currency || "usd").toUpperCase()});
  }
  function showError(err, where) {
    var target = $(where || "form-error") || $("flash");
    if (target) { target.hidden = false; target.textContent = err && err.message ? err.message : String(err); }
  }
  function clearError(where) { var t = $(where || "form-error"); if (t) { t.textContent = ""; } }
  function flash(text) { var f = $("flash"); f.hidden = false; f.textContent = text; }
  function toSignIn() {
    window.location.assign("/console/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
  }

  // -- the API, with the cookies ---------------------------------------------------------------------
  function refreshCookies() {
    return fetch("/console/auth/refresh", {method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-TOKEN": cookie("csrf_refresh_token"), "Accept": "application/json"}})
      .then(function (r) { return r.ok; }).catch(function () { return false; });
  }
  function api(method, path, data, extraHeaders, retried) {
    var headers = {"Accept": "application/json"};
    if (data !== undefined) { headers["Content-Type"] = "application/json"; }
    if (method !== "GET") { headers["X-CSRF-TOKEN"] = cookie("csrf_access_token"); }
    Object.keys(extraHeaders || {}).forEach(function (k) { headers[k] = extraHeaders[k]; });
    return fetch(path, {method: method, headers: headers, credentials: "same-origin", cache: "no-store",
                        body: data === undefined ? undefined : JSON.stringify(data)})
      .then(function (r) {
        if (r.status === 401 && !retried && cookie("csrf_refresh_token")) {
          return refreshCookies().then(function (ok) {
            if (ok) { return api(method, path, data, extraHeaders, true); }
            toSignIn(); throw new Error("Your sign-in has ended; sign in again.");
          });
        }
        return r.text().then(function (text) {
          var json = null;
          try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
          if (!r.ok) {
            var err = new Error((json && json.detail) || ("The request failed (" + r.status + ")."));
            err.status = r.status; err.problem = json; throw err;
          }
          return json;
        });
      });
  }

  // -- charts (Chart.js, vendored) -----------------------------------------------------------------
  var charts = {};
  function chart(id, config) {
    if (!window.Chart) { return null; }
    if (charts[id]) { charts[id].destroy(); }
    config.options = Object.assign({responsive: true, maintainAspectRatio: false, animation: false,
                                    plugins: {legend: {position: "bottom"}}}, config.options || {});
    charts[id] = new window.Chart($(id), config);
    return charts[id];
  }
  var COLORS = {used: "#2f6fdf", reserved: "#f2a93b", limit: "#c0392b", line: "#1b9e77", failed: "#c0392b",
                succeeded: "#1b9e77", queued: "#8e8e93", running: "#2f6fdf", canceled: "#b4a7d6", cost: "#e67e22"};

  // -- sign in, sign up, sign out ------------------------------------------------------------------
  function formJson(form) {
    var out = {};
    Array.prototype.forEach.call(form.elements, function (field) {
      if (!field.name || field.disabled) { return; }
      if (field.type === "checkbox") { out[field.name] = field.checked; } else if (field.value !== "") { out[field.name] = field.value; }
    });
    return out;
  }
  function authForm(form, path) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearError();
      var button = form.querySelector("button[type=submit]");
      button.disabled = true;
      api("POST", path, formJson(form), {}, true)
        .then(function () { window.location.assign(form.getAttribute("data-next") || "/console/"); })
        .catch(function (err) { showError(err); form.elements.password.value = ""; form.elements.password.focus(); })
        .then(function () { button.disabled = false; });
    });
  }
  var signOut = $("sign-out");
  if (signOut) {
    signOut.addEventListener("click", function () {
      api("POST", "/console/auth/logout", {}).catch(function () { return null; })
        .then(function () { window.location.assign("/console/login"); });
    });
  }

  // -- producer: this period -----------------------------------------------------------------------
  function loadAllGenerations(from) {
    var items = [];
    function next(pageNo) {
      return api("GET", "/usage/history?per_page=100&page=" + pageNo + "&from=" + from).then(function (res) {
        items = items.concat(res.generations.items);
        if (items.length < res.generations.total && pageNo < 20) { return next(pageNo + 1); }
        return items;
      });
    }
    return next(1);
  }
  function home() {
    api("GET", "/auth/verify").then(function (res) {
      if (body.getAttribute("data-verification") === "on" && res.user.email_verified === false && res.user.status === "trial") {
        $("verify-banner").hidden = false;
      }
    }).catch(function () { return null; });
    var resend = $("resend-verification");
    resend.addEventListener("click", function () {
      api("POST", "/auth/email/resend", {}).then(function (r) { flash(r.message || "Sent."); }).catch(function (e) { showError(e, "flash"); });
    });
    api("GET", "/usage/current").then(function (usage) {
      $("u-used").textContent = usage.used; $("u-reserved").textContent = usage.reserved;
      $("u-remaining").textContent = usage.remaining; $("u-limit").textContent = usage.monthly_limit;
      $("usage-figures").setAttribute("aria-busy", "false");
      $("plan-line").textContent = "Plan: " + usage.plan + " · " + usage.monthly_limit + " generations a period · renews " +
        day(usage.period_end) + (usage.overage_allowed ? " · overage allowed" : "");
      var start = new Date(usage.period_start), end = new Date(usage.period_end);
      return loadAllGenerations(usage.period_start.slice(0, 10)).then(function (generations) {
        var labels = [], keys = [], used = {}, reserved = {};
        for (var d = new Date(Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate())); d < end; d.setUTCDate(d.getUTCDate() + 1)) {
          var key = d.toISOString().slice(0, 10);
          keys.push(key); labels.push(key.slice(5)); used[key] = 0; reserved[key] = 0;
        }
        generations.forEach(function (g) {
          var key = (g.created_at || "").slice(0, 10);
          if (!(key in used)) { return; }
          if (g.status === "succeeded") { used[key] += 1; } else if (g.status === "queued" || g.status === "running") { reserved[key] += 1; }
        });
        // The running total stops at today; the limit spans the whole period.
        var today = new Date().toISOString().slice(0, 10), running = 0;
        var cumulative = keys.map(function (k) { running += used[k] + reserved[k]; return k <= today ? running : null; });
        chart("usage-chart", {type: "bar", data: {labels: labels, datasets: [
          {label: "Used", data: keys.map(function (k) { return used[k]; }), backgroundColor: COLORS.used, stack: "day", order: 2},
          {label: "Reserved", data: keys.map(function (k) { return reserved[k]; }), backgroundColor: COLORS.reserved, stack: "day", order: 2},
          {type: "line", label: "Running total", data: cumulative, borderColor: COLORS.line, pointRadius: 0, order: 1},
          {type: "line", label: "Limit (" + usage.monthly_limit + ")", data: keys.map(function () { return usage.monthly_limit; }),
           borderColor: COLORS.limit, borderDash: [6, 4], pointRadius: 0, order: 0}
        ]}, options: {scales: {y: {beginAtZero: true, ticks: {precision: 0}}}}});
        $("usage-chart").setAttribute("data-rendered", String(generations.length));
        $("usage-caption").textContent = usage.used + " used and " + usage.reserved + " reserved of " + usage.monthly_limit +
          " from " + day(usage.period_start) + " to " + day(usage.period_end) + "; " + usage.remaining + " remaining.";
      });
    }).catch(function (e) { showError(e, "flash"); });
  }

  // -- producer: a sound (player, waveform, details) ------------------------------------------------
  function drawWaveform(canvas, peaks) {
    var ratio = window.devicePixelRatio || 1, width = canvas.clientWidth || 600, height = canvas.clientHeight || 64;
    canvas.width = width * ratio; canvas.height = height * ratio;
    var ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.fillStyle = "#2f6fdf";
    var mid = height / 2, step = width / Math.max(peaks.length, 1);
    peaks.forEach(function (pair, i) {
      var top = mid - Math.max(0, pair[1]) * mid, bottom = mid - Math.min(0, pair[0]) * mid;
      ctx.fillRect(i * step, top, Math.max(step, 1), Math.max(bottom - top, 1));
    });
    canvas.setAttribute("data-peaks", String(peaks.length));
  }
  function soundView(job, withDetails) {
    var box = el("div", {"class": "sound", "data-job": job.id});
    if (job.status === "succeeded" && job.audio) {
      var player = el("audio", {controls: "", preload: "metadata", src: "/jobs/" + job.id + "/audio",
                                "aria-label": "Play: " + job.prompt});
      box.appendChild(player);
      var canvas = el("canvas", {"class": "waveform", "aria-hidden": "true", hidden: ""});
      box.appendChild(canvas);
      if (job.audio.peaks_url) {
        // peaks_url is this API's GET /jobs/<id>/waveform; a 404 (no peaks stored) just leaves it out.
        api("GET", job.audio.peaks_url).then(function (wave) {
          canvas.hidden = false; drawWaveform(canvas, wave.peaks || []);
        }).catch(function () { canvas.remove(); });
      }
      box.appendChild(el("p", {}, [el("a", {href: "/jobs/" + job.id + "/audio", download: "sfx-" + job.id + "." + job.output_format,
                                             "class": "download"}, ["Download " + job.output_format.toUpperCase()]),
                                   " " + (job.audio.size_bytes ? Math.round(job.audio.size_bytes / 1024) + " KB" : "")]));
    } else if (job.error) {
      box.appendChild(el("p", {"class": "error", text: job.error.code + ": " + job.error.message}));
    }
    if (withDetails) {
      var rows = [["Status", job.status], ["Created", when(job.created_at)], ["Finished", when(job.finished_at)],
                  ["Duration", job.duration_seconds === null ? "model's choice" : job.duration_seconds + " s"],
                  ["Prompt influence", job.prompt_influence], ["Loop", job.loop ? "yes" : "no"], ["Format", job.output_format],
                  ["Attempts", job.attempts], ["Job id", job.id]];
      if (job.audio) {
        ["sample_rate", "bit_depth", "channels", "loudness_lufs", "true_peak_dbtp"].forEach(function (k) {
          if (job.audio[k] !== undefined && job.audio[k] !== null) { rows.push([k.replace(/_/g, " "), job.audio[k]]); }
        });
      }
      var dl = el("dl", {"class": "details"});
      rows.forEach(function (r) { dl.appendChild(el("dt", {text: r[0]})); dl.appendChild(el("dd", {text: String(r[1])})); });
      box.appendChild(el("details", {}, [el("summary", {text: "Details"}), dl]));
    }
    return box;
  }

  // -- producer: generate --------------------------------------------------------------------------
  var STEPS = {queued: 1, running: 2, succeeded: 3, failed: 3, canceled: 3};
  function showJob(job) {
    var status = $("job-status");
    status.textContent = job.status; status.setAttribute("data-status", job.status);
    $("job-reason").textContent = job.queue_reason ? "(" + job.queue_reason.replace(/_/g, " ") + ")" : "";
    $("job-progress").value = STEPS[job.status] || 0;
    if (STEPS[job.status] === 3) {
      var result = $("job-result");
      result.textContent = "";
      result.appendChild(soundView(job, true));
    }
  }
  function follow(job) {
    var done = false;
    function finish(next) { showJob(next); if (STEPS[next.status] === 3) { done = true; } return done; }
    function poll() {
      if (done) { return; }
      api("GET", "/jobs/" + job.id).then(function (next) { if (!finish(next)) { setTimeout(poll, 1000); } })
        .catch(function (e) { showError(e); setTimeout(poll, 3000); });
    }
    if (body.getAttribute("data-sse") === "on" && window.EventSource) {
      var source = new EventSource("/jobs/" + job.id + "/events");
      source.addEventListener("job", function (event) {
        if (finish(JSON.parse(event.data))) { source.close(); }
      });
      source.onerror = function () { source.close(); if (!done) { poll(); } };
    } else {
      poll();
    }
  }
  function generate() {
    var form = $("generate-form"), influence = $("prompt_influence");
    influence.addEventListener("input", function () { $("influence-out").textContent = influence.value; });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearError();
      var f = form.elements, data = {prompt: f.prompt.value, prompt_influence: parseFloat(f.prompt_influence.value),
                                      loop: f.loop.checked, output_format: f.output_format.value,
                                      duration_seconds: f.duration_seconds.value === "" ? null : parseFloat(f.duration_seconds.value)};
      if (f.sample_rate && f.sample_rate.value) { data.sample_rate = parseInt(f.sample_rate.value, 10); }
      if (f.bit_depth && f.bit_depth.value) { data.bit_depth = parseInt(f.bit_depth.value, 10); }
      if (f.loudness_lufs && f.loudness_lufs.value !== "") { data.loudness_lufs = parseFloat(f.loudness_lufs.value); }
      if (f.trim_silence && f.trim_silence.checked) { data.trim_silence = true; }
      var button = $("generate-button");
      button.disabled = true;
      var key = window.crypto && window.crypto.randomUUID ? window.crypto.randomUUID() : String(Date.now());
      api("POST", "/usage/generate", data, {"Idempotency-Key": key}).then(function (job) {
        $("job-panel").hidden = false; $("job-result").textContent = "";
        showJob(job); follow(job);
      }).catch(function (err) {
        var fields = err.problem && err.problem.errors ? Object.keys(err.problem.errors) : [];
        showError(fields.length ? new Error(err.message + " (" + fields.map(function (k) {
          return k + ": " + err.problem.errors[k].join(" ");
        }).join("; ") + ")") : err);
      }).then(function () { button.disabled = false; });
    });
  }

  // -- producer: history ---------------------------------------------------------------------------
  function history() {
    var state = {page: 1, perPage: 10, q: "", total: 0};
    function load() {
      var path = "/jobs?per_page=" + state.perPage + "&page=" + state.page + (state.q ? "&q=" + encodeURIComponent(state.q) : "");
      api("GET", path).then(function (res) {
        state.total = res.total;
        var list = $("history-list");
        list.textContent = "";
        res.items.forEach(function (job) {
          list.appendChild(el("li", {"class": "card"}, [
            el("h2", {"class": "prompt", text: job.prompt}),
            el("p", {"class": "hint", text: when(job.created_at) + " · " + job.status}), soundView(job, true)]));
        });
        var pages = Math.max(1, Math.ceil(res.total / state.perPage));
        $("history-summary").textContent = res.total + (res.total === 1 ? " sound" : " sounds") + (state.q ? " matching “" + state.q + "”" : "");
        $("page-label").textContent = "Page " + state.page + " of " + pages;
        $("prev-page").disabled = state.page <= 1; $("next-page").disabled = state.page >= pages;
      }).catch(function (e) { showError(e, "flash"); });
    }
    $("history-search").addEventListener("submit", function (event) {
      event.preventDefault(); state.q = $("q").value.trim(); state.page = 1; load();
    });
    $("prev-page").addEventListener("click", function () { state.page -= 1; load(); });
    $("next-page").addEventListener("click", function () { state.page += 1; load(); });
    load();
  }

  // -- producer: sessions --------------------------------------------------------------------------
  function sessions() {
    function load() {
      api("GET", "/auth/sessions").then(function (res) {
        var tbody = $("sessions-table").tBodies[0];
        tbody.textContent = "";
        res.items.forEach(function (s) {
          var button = el("button", {type: "button", "class": "danger", "data-session": s.id,
                                     "aria-label": "End this session: " + (s.client_name || "unnamed")}, ["End this session"]);
          button.addEventListener("click", function () {
            button.disabled = true;
            api("DELETE", "/auth/sessions/" + s.id).then(function () {
              if (s.current) { window.location.assign("/console/login"); } else { flash("Session ended: " + (s.client_name || s.id)); load(); }
            }).catch(function (e) { button.disabled = false; showError(e, "flash"); });
          });
          tbody.appendChild(el("tr", {"data-session": s.id}, [
            el("td", {}, [s.client_name || "—", s.current ? el("span", {"class": "tag", text: "this browser"}) : ""]),
            el("td", {text: when(s.created_at)}), el("td", {text: when(s.last_used_at)}), el("td", {}, [button])]));
        });
      }).catch(function (e) { showError(e, "flash"); });
    }
    load();
  }

  // -- producer: billing ---------------------------------------------------------------------------
  function billing() {
    var back = window.location.origin + "/console/billing";
    api("GET", "/subscription/current").then(function (sub) {
      var line = sub.status === "none" ? "No subscription: the trial allowance of " + sub.monthly_limit +
        " generations applies. Choose a plan below." : "Plan: " + sub.plan + " (" + (sub.status || "") + ")" +
        (sub.current_period_end ? " · renews " + day(sub.current_period_end) : "") +
        (sub.cancel_at_period_end ? " · ends at the period's end" : "");
      $("sub-line").textContent = line;
    }).catch(function (e) { $("sub-line").textContent = e.status === 404 ? "No subscription: the trial allowance applies." : e.message; });
    api("GET", "/subscription/plans").then(function (res) {
      var list = $("plans");
      (res.items || res.plans || res || []).forEach(function (plan) {
        var button = el("button", {type: "button", "data-plan": plan.name || plan.plan}, ["Choose " + (plan.name || plan.plan)]);
        button.addEventListener("click", function () {
          clearError();
          api("POST", "/subscription/create", {plan: plan.name || plan.plan, success_url: back + "?checkout=done", cancel_url: back})
            .then(function (r) { window.location.assign(r.checkout_url); }).catch(function (e) { showError(e); });
        });
        var facts = [plan.monthly_limit !== undefined ? plan.monthly_limit + " generations a month" : "",
                     plan.price_cents !== undefined ? money(plan.price_cents, plan.currency) + " a month" : ""].filter(Boolean).join(" · ");
        list.appendChild(el("li", {"class": "plan"}, [el("strong", {text: plan.name || plan.plan}), el("span", {text: facts}), button]));
      });
    }).catch(function (e) { showError(e); });
    api("GET", "/subscription/invoices").then(function (res) {
      var tbody = $("invoices-table").tBodies[0];
      var items = res.invoices || res.items || [];
      if (!items.length) { tbody.appendChild(el("tr", {}, [el("td", {colspan: "4", text: "No invoices yet."})])); }
      items.forEach(function (inv) {
        var link = inv.hosted_invoice_url || inv.url || inv.invoice_pdf;
        tbody.appendChild(el("tr", {}, [el("td", {text: day(inv.created_at || inv.created)}),
          el("td", {text: money(inv.amount_paid !== undefined ? inv.amount_paid : inv.amount_due, inv.currency)}),
          el("td", {text: inv.status || ""}), el("td", {}, [link ? el("a", {href: link, rel: "noopener"}, ["Open"]) : "—"])]));
      });
    }).catch(function (e) { showError(e); });
    $("portal-button").addEventListener("click", function () {
      clearError();
      api("POST", "/subscription/portal", {return_url: back}).then(function (r) { window.location.assign(r.portal_url); })
        .catch(function (e) { showError(e); });
    });
  }

  // -- producer: approve a device ------------------------------------------------------------------
  function device() {
    var form = $("device-form"), out = $("status");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var action = (event.submitter && event.submitter.value) === "deny" ? "deny" : "approve";
      out.setAttribute("data-state", "busy"); out.textContent = "Sending…";
      api("POST", "/auth/device/" + action, {user_code: form.elements.user_code.value}).then(function (res) {
        out.setAttribute("data-state", action === "approve" ? "approved" : "denied");
        out.textContent = res.message + (res.client_name ? " (" + res.client_name + ")" : "");
      }).catch(function (e) { out.setAttribute("data-state", "error"); out.textContent = e.message; });
    });
  }

  // -- admin: key pool -----------------------------------------------------------------------------
  function adminKeys() {
    function act(button, promise) {
      button.disabled = true;
      promise.then(load).catch(function (e) { showError(e); button.disabled = false; });
    }
    function load() {
      return api("GET", "/admin/api-keys").then(function (res) {
        var tbody = $("keys-table").tBodies[0];
        tbody.textContent = "";
        if (!res.items.length) { tbody.appendChild(el("tr", {}, [el("td", {colspan: "7", text: "No upstream keys in the pool."})])); }
        res.items.forEach(function (key) {
          var disabled = key.status === "disabled";
          var toggle = el("button", {type: "button", "data-action": disabled ? "enable" : "disable",
                                     "aria-label": (disabled ? "Enable " : "Disable ") + key.name}, [disabled ? "Enable" : "Disable"]);
          toggle.addEventListener("click", function () { act(toggle, api("PATCH", "/admin/api-keys/" + key.id, {enabled: disabled})); });
          var check = el("button", {type: "button", "class": "secondary", "data-action": "check", "aria-label": "Check " + key.name + " now"}, ["Check now"]);
          check.addEventListener("click", function () { act(check, api("POST", "/admin/api-keys/" + key.id + "/check", {})); });
          tbody.appendChild(el("tr", {"data-key": key.name, "data-status": key.status}, [
            el("th", {scope: "row"}, [key.name, el("span", {"class": "hint", text: " …" + key.last4})]),
            el("td", {}, [el("span", {"class": "status status-" + key.status, text: key.status}),
                          key.status_reason ? el("span", {"class": "hint", text: " " + key.status_reason}) : ""]),
            el("td", {text: key.in_flight + " / " + key.max_concurrency}),
            el("td", {text: key.cooldown_until ? when(key.cooldown_until) : "—"}),
            el("td", {text: key.credits_remaining === null ? "unknown" : String(key.credits_remaining)}),
            el("td", {text: String(key.consecutive_failures)}), el("td", {"class": "actions"}, [toggle, check])]));
        });
        $("keys-updated").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
      }).catch(function (e) { showError(e); });
    }
    load();
    setInterval(load, 5000);
  }

  // -- admin: jobs ---------------------------------------------------------------------------------
  function adminJobs() {
    api("GET", "/admin/jobs/overview").then(function (res) {
      var statuses = ["succeeded", "failed", "canceled", "running", "queued"];
      chart("jobs-chart", {type: "bar", data: {labels: res.hours.map(function (h) { return new Date(h.hour).getHours() + ":00"; }),
        datasets: statuses.map(function (s) {
          return {label: s, data: res.hours.map(function (h) { return h[s]; }), backgroundColor: COLORS[s], stack: "jobs"};
        })}, options: {scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true, ticks: {precision: 0}}}}});
      $("jobs-chart").setAttribute("data-rendered", "1");
      $("jobs-totals").textContent = statuses.map(function (s) { return s + ": " + res.totals[s]; }).join(" · ");
      var oldest = res.oldest_queued;
      $("queue-line").textContent = oldest ? res.queued_now + " waiting; the oldest since " + when(oldest.created_at) +
        (oldest.queue_reason ? " (" + oldest.queue_reason.replace(/_/g, " ") + ")" : "") + ", job " + oldest.id
        : "Nothing is waiting.";
      var tbody = $("failures-table").tBodies[0];
      if (!res.recent_failures.length) { tbody.appendChild(el("tr", {}, [el("td", {colspan: "4", text: "No failures."})])); }
      res.recent_failures.forEach(function (f) {
        tbody.appendChild(el("tr", {}, [el("td", {text: when(f.finished_at)}), el("td", {}, [el("code", {text: f.code || "—"})]),
          el("td", {text: f.message || ""}), el("td", {text: f.id})]));
      });
    }).catch(function (e) { showError(e); });
  }

  // -- admin: usage and revenue --------------------------------------------------------------------
  function isoDay(d) { return d.toISOString().slice(0, 10); }
  function adminUsage() {
    var today = new Date(), from = new Date(today.getTime() - 29 * 86400000);
    api("GET", "/admin/usage-stats?from=" + isoDay(from) + "&to=" + isoDay(today)).then(function (res) {
      var labels = res.days.map(function (d) { return d.date.slice(5); });
      chart("gen-chart", {type: "bar", data: {labels: labels, datasets: [
        {label: "Generations", data: res.days.map(function (d) { return d.generations; }), backgroundColor: COLORS.used, yAxisID: "y"},
        {type: "line", label: "Success rate (%)", data: res.days.map(function (d) { return d.success_rate === null ? null : Math.round(d.success_rate * 1000) / 10; }),
         borderColor: COLORS.succeeded, yAxisID: "rate", spanGaps: true}
      ]}, options: {scales: {y: {beginAtZero: true, ticks: {precision: 0}}, rate: {position: "right", min: 0, max: 100, grid: {drawOnChartArea: false}}}}});
      chart("latency-chart", {type: "line", data: {labels: labels, datasets: [
        {label: "p95 latency (s)", data: res.days.map(function (d) { return d.p95_latency_ms === null ? null : d.p95_latency_ms / 1000; }),
         borderColor: COLORS.cost, spanGaps: true}]}, options: {scales: {y: {beginAtZero: true}}}});
      $("gen-chart").setAttribute("data-rendered", "1");
    }).catch(function (e) { showError(e); });
    var months = [];
    for (var i = 5; i >= 0; i -= 1) {
      var start = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth() - i, 1));
      var end = new Date(Math.min(Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 0), today.getTime()));
      months.push({label: isoDay(start).slice(0, 7), from: isoDay(start), to: isoDay(end)});
    }
    Promise.all(months.map(function (m) { return api("GET", "/admin/revenue?from=" + m.from + "&to=" + m.to); })).then(function (rows) {
      var currency = rows.length ? rows[rows.length - 1].currency : "usd";
      chart("revenue-chart", {type: "bar", data: {labels: months.map(function (m) { return m.label; }), datasets: [
        {label: "Revenue (" + currency.toUpperCase() + ")", data: rows.map(function (r) { return (r.subscription_revenue_cents + r.overage_revenue_cents) / 100; }), backgroundColor: COLORS.used},
        {label: "Upstream cost (" + currency.toUpperCase() + ")", data: rows.map(function (r) { return r.upstream_cost_cents / 100; }), backgroundColor: COLORS.cost}
      ]}, options: {scales: {y: {beginAtZero: true}}}});
      var last = rows[rows.length - 1];
      $("revenue-caption").textContent = "Monthly recurring revenue now: " + money(last.mrr_cents, currency) + ". Subscription revenue is MRR pro-rated over each month's days.";
    }).catch(function (e) { showError(e); });
  }

  // -- admin: users and audit ----------------------------------------------------------------------
  var USER_STATUSES = ["trial", "active", "suspended", "canceled"];
  function adminUsers() {
    var q = "";
    function loadAudit() {
      api("GET", "/admin/audit?per_page=20").then(function (res) {
        var tbody = $("audit-table").tBodies[0];
        tbody.textContent = "";
        res.items.forEach(function (a) {
          tbody.appendChild(el("tr", {}, [el("td", {text: when(a.created_at)}), el("td", {text: a.actor_email || a.actor_name || "—"}),
            el("td", {}, [el("code", {text: a.action})]), el("td", {text: a.target_email || a.target_id || a.target_type}),
            el("td", {text: a.details ? JSON.stringify(a.details) : ""})]));
        });
      }).catch(function (e) { showError(e); });
    }
    function load() {
      api("GET", "/admin/users?per_page=50" + (q ? "&q=" + encodeURIComponent(q) : "")).then(function (res) {
        var tbody = $("users-table").tBodies[0];
        tbody.textContent = "";
        res.items.forEach(function (u) {
          var select = el("select", {id: "status-" + u.id, "aria-label": "Status of " + u.email});
          USER_STATUSES.forEach(function (s) { var o = el("option", {value: s, text: s}); if (s === u.status) { o.selected = true; } select.appendChild(o); });
          var button = el("button", {type: "button", "data-user": u.email}, ["Apply"]);
          button.addEventListener("click", function () {
            button.disabled = true; clearError();
            api("PUT", "/admin/user/" + u.id + "/status", {status: select.value}).then(function () {
              flash(u.email + " is now " + select.value + "."); load(); loadAudit();
            }).catch(function (e) { showError(e); button.disabled = false; });
          });
          tbody.appendChild(el("tr", {"data-user": u.email}, [el("th", {scope: "row", text: u.email}), el("td", {text: u.plan}),
            el("td", {"class": "user-status", text: u.status}), el("td", {text: u.usage ? u.usage.used + " / " + u.usage.monthly_limit : ""}),
            el("td", {"class": "actions"}, [select, button])]));
        });
      }).catch(function (e) { showError(e); });
    }
    $("users-search").addEventListener("submit", function (event) { event.preventDefault(); q = $("uq").value.trim(); load(); });
    load(); loadAudit();
  }

  // -- which page ----------------------------------------------------------------------------------
  var PAGES = {home: home, generate: generate, history: history, sessions: sessions, billing: billing, device: device,
               admin_keys: adminKeys, admin_jobs: adminJobs, admin_usage: adminUsage, admin_users: adminUsers};
  if (page === "login") {
    // An expired access cookie with a live refresh cookie: renew silently and go on.
    var loginForm = $("login-form");
    authForm(loginForm, "/console/auth/login");
    if (cookie("csrf_refresh_token")) {
      refreshCookies().then(function (ok) { if (ok) { window.location.assign(loginForm.getAttribute("data-next")); } });
    }
  } else if (page === "signup") {
    authForm($("signup-form"), "/console/auth/register");
  } else if (PAGES[page]) {
    PAGES[page]();
  }
})();
