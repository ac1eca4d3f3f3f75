// The portal's only script: small glue around htmx. Pages work without it.
(function () {
  "use strict";

  // Send the CSRF token with every htmx request that changes state.
  document.addEventListener("htmx:configRequest", function (event) {
    var token = document.querySelector('meta[name="csrf-token"]');
    if (token && event.detail.verb !== "get") {
      event.detail.headers["X-CSRFToken"] = token.content;
    }
  });

  // Poll only while the tab is visible; refresh at once when it comes back.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var trigger = event.detail.requestConfig && event.detail.requestConfig.triggeringEvent;
    if (document.hidden && (!trigger || trigger.type !== "visible-again")) {
      event.preventDefault();
    }
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      document.dispatchEvent(new CustomEvent("visible-again"));
    }
  });

  // A changed period reloads the page without pressing "Show".
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (select && select.id === "period" && select.form) {
      select.form.submit();
    }
  });
})();
