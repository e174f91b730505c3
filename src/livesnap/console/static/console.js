// livesnap console: keeps wall tiles and the job page current, and asks before deleting.
// Plain ES2017, no build step. Each element with data-live-job polls its job's state.json
// on the job's interval and swaps in the new picture once it has loaded.
(function () {
  "use strict";

  var LOGIN = "/console/login";

  function ageText(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) { return s + " s ago"; }
    if (s < 3600) { return Math.floor(s / 60) + " min ago"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h ago"; }
    return Math.floor(s / 86400) + " d ago";
  }

  function number(text, fallback) {
    var value = parseInt(text, 10);
    return isNaN(value) ? fallback : value;
  }

  function field(el, name) {
    return el.querySelector('[data-field="' + name + '"]');
  }

  function LiveJob(el) {
    this.el = el;
    this.intervalMs = Math.max(number(el.dataset.intervalMs, 5000), 1000);
    this.staleAfterMs = number(el.dataset.staleAfterMs, null);  // null: not capturing
    this.takenMs = el.dataset.takenMs ? number(el.dataset.takenMs, null) : null;
    this.skewMs = number(el.dataset.nowMs, Date.now()) - Date.now();  // server clock - ours
  }

  LiveJob.prototype.tick = function () {
    var age = field(this.el, "age");
    var stale = field(this.el, "stale");
    if (this.takenMs === null || !age) { return; }
    var ms = Date.now() + this.skewMs - this.takenMs;
    age.textContent = "Picture " + ageText(ms);
    var isStale = this.staleAfterMs !== null && ms > this.staleAfterMs;
    if (stale) { stale.hidden = !isStale; }
    this.el.classList.toggle("is-stale", isStale);
  };

  LiveJob.prototype.apply = function (state) {
    var badge = field(this.el, "badge");
    if (badge) {
      badge.textContent = state.badge.text;
      badge.className = "badge badge-" + state.badge.kind;
    }
    var error = field(this.el, "error");
    if (error) {
      error.textContent = state.lastError || "";
      error.hidden = !state.lastError;
    }
    this.skewMs = state.nowMs - Date.now();
    this.staleAfterMs = state.staleAfterMs;
    this.intervalMs = Math.max(state.intervalMs, 1000);
    if (state.takenMs !== null && state.takenMs !== this.takenMs) {
      this.showPicture(state.takenMs);
    }
    this.tick();
  };

  LiveJob.prototype.showPicture = function (takenMs) {
    var self = this;
    var next = new Image();
    next.onload = function () {
      var current = field(self.el, "thumb") || field(self.el, "placeholder");
      next.setAttribute("data-field", "thumb");
      next.alt = self.el.dataset.imageAlt || "";
      next.width = next.naturalWidth;
      next.height = next.naturalHeight;
      if (current) { current.replaceWith(next); }
      self.takenMs = takenMs;
      self.el.dataset.takenMs = String(takenMs);
      self.tick();
    };
    next.src = this.el.dataset.imageUrl + "?t=" + takenMs;
  };

  LiveJob.prototype.poll = function () {
    var self = this;
    if (document.hidden) { return this.schedule(); }
    fetch(this.el.dataset.stateUrl, {
      credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" }
    }).then(function (response) {
      if (response.status === 401) { window.location.assign(LOGIN); return null; }
      return response.ok ? response.json() : null;
    }).then(function (state) {
      if (state) { self.apply(state); }
    }).catch(function () {
      // the server is restarting or the network is down: try again on the next tick
    }).then(function () { self.schedule(); });
  };

  LiveJob.prototype.schedule = function () {
    var self = this;
    window.setTimeout(function () { self.poll(); }, this.intervalMs);
  };

  function start() {
    var jobs = Array.prototype.map.call(
      document.querySelectorAll("[data-live-job]"), function (el) { return new LiveJob(el); });
    jobs.forEach(function (job) { job.schedule(); });
    window.setInterval(function () { jobs.forEach(function (job) { job.tick(); }); }, 1000);
    document.addEventListener("submit", function (event) {
      var message = event.target.dataset && event.target.dataset.confirm;
      if (message && !window.confirm(message)) { event.preventDefault(); }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
