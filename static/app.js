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

  // A poll of the live region that fails (server down, network gone, a 503)
  // leaves the figures standing, says since when they are not updated, and
  // polling goes on: the first poll that succeeds replaces the region whole.
  var LIVE_REGION = "current-usage";
  var lastUpdated = new Date();

  function isLiveRegion(element) {
    return element && element.id === LIVE_REGION;
  }

  function clock(moment) {
    return moment.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function markStale(region, reason) {
    var note = region.querySelector("[data-stale]");
    if (!note) {
      note = document.createElement("p");
      note.setAttribute("data-stale", "");
      note.setAttribute("role", "status");
      note.className = "stale-note";
      region.insertBefore(note, region.firstChild);
    }
    note.textContent = "Not updated since " + clock(lastUpdated) + " — retrying." +
      (reason ? " " + reason : "");
    region.classList.add("stale");
  }

  function reasonIn(text) {
    if (!text) {
      return "";
    }
    var found = new DOMParser().parseFromString(text, "text/html").querySelector("[data-reason]");
    return found ? found.textContent.trim() : "";
  }

  document.addEventListener("htmx:afterRequest", function (event) {
    if (isLiveRegion(event.detail.elt) && event.detail.successful) {
      lastUpdated = new Date();
    }
  });
  document.addEventListener("htmx:responseError", function (event) {
    if (isLiveRegion(event.detail.elt)) {
      markStale(event.detail.elt, reasonIn(event.detail.xhr && event.detail.xhr.responseText));
    }
  });
  document.addEventListener("htmx:sendError", function (event) {
    if (isLiveRegion(event.detail.elt)) {
      markStale(event.detail.elt, "");
    }
  });

  // A swap must not drop keyboard focus onto the page body. When the focused
  // control is inside the region being replaced (a sort link, "Next", a button
  // of the live region), focus goes to the same control in the new copy, found
  // by what names it; when the new copy has no such control (the last page has
  // no "Next"), to the region's caption, or else the region.
  var IDENTITIES = ["id", "data-sort", "rel", "name"];
  var pendingFocus = {};  // by the id of the region being replaced

  function identity(element) {
    for (var i = 0; i < IDENTITIES.length; i++) {
      var value = element.getAttribute(IDENTITIES[i]);
      if (value) {
        return { attribute: IDENTITIES[i], value: value, tag: element.tagName };
      }
    }
    return { attribute: null, value: element.textContent.trim(), tag: element.tagName };
  }

  function sameControl(region, wanted) {
    var candidates = region.getElementsByTagName(wanted.tag);
    for (var i = 0; i < candidates.length; i++) {
      var candidate = candidates[i];
      var value = wanted.attribute ? candidate.getAttribute(wanted.attribute)
        : candidate.textContent.trim();
      if (value === wanted.value) {
        return candidate;
      }
    }
    return null;
  }

  // Noted when the request starts (focus is surely still on the control used)
  // and again just before the swap; restored once the new copy has settled,
  // whenever focus has fallen to the body. Not sooner: htmx wires the new
  // copy's links while it settles, and a key pressed on a link it has not
  // wired yet would load the whole page instead.
  function noteFocus(event) {
    var target = event.detail.target;
    var active = document.activeElement;
    if (target && target.id && active && active !== target && target.contains(active)) {
      pendingFocus[target.id] = { wanted: identity(active), xhr: event.detail.xhr };
    }
  }

  function restoreFocus(event) {
    var id = event.detail.target && event.detail.target.id;
    var pending = id && pendingFocus[id];
    if (!pending || pending.xhr !== event.detail.xhr) {
      return;  // nothing noted, or noted for a later request still on its way
    }
    delete pendingFocus[id];
    var region = document.getElementById(id);
    var active = document.activeElement;
    if (!region || (active && active !== document.body && active.isConnected)) {
      return;
    }
    // A caption or region takes focus from a script only (tabindex -1), and is
    // made focusable only then: a focusable caption in a table said to be one
    // (keepTableRoles) is not a child that role allows.
    var control = sameControl(region, pending.wanted);
    if (!control) {
      control = region.querySelector("caption") || region;
      control.setAttribute("tabindex", "-1");
    }
    control.focus();
  }

  document.addEventListener("htmx:beforeRequest", noteFocus);
  document.addEventListener("htmx:beforeSwap", noteFocus);
  document.addEventListener("htmx:afterSettle", restoreFocus);

  // A table fallback someone opened (the daily chart's "Daily figures") stays open
  // when the live region is swapped for its fresh copy, and one they closed stays
  // closed: each <details> with an id remembers what its reader chose.
  var chosen = {};
  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (details.tagName === "DETAILS" && details.id) {
      chosen[details.id] = details.open;
    }
  }, true);  // toggle does not bubble
  function keepChoices(event) {
    var root = event.target;
    if (!root || !root.querySelectorAll) {
      return;
    }
    root.querySelectorAll("details[id]").forEach(function (details) {
      if (Object.prototype.hasOwnProperty.call(chosen, details.id)) {
        details.open = chosen[details.id];
      }
    });
  }
  // At the swap, before the fresh copy is painted closed (htmx:load comes only
  // once it has settled); and at htmx:load for content htmx puts back otherwise.
  document.addEventListener("htmx:afterSwap", keepChoices);
  document.addEventListener("htmx:load", keepChoices);

  // Below 1024px a table of the class "stacks" is laid out as blocks (app.css),
  // and some screen readers (Safari's VoiceOver) then stop reading it as a
  // table. Its roles, said outright, keep it one: rows, headers, cells.
  var TABLE_ROLES = [
    ["table.stacks", "table"],
    ["table.stacks > thead, table.stacks > tbody", "rowgroup"],
    ["table.stacks tr", "row"],
    ["table.stacks th[scope=col]", "columnheader"],
    ["table.stacks th[scope=row]", "rowheader"],
    ["table.stacks td", "cell"]
  ];
  function keepTableRoles(root) {
    TABLE_ROLES.forEach(function (pair) {
      root.querySelectorAll(pair[0]).forEach(function (element) {
        element.setAttribute("role", pair[1]);
      });
    });
  }
  document.addEventListener("htmx:load", function (event) {
    if (event.target && event.target.querySelectorAll) {
      keepTableRoles(event.target.parentNode || event.target);
    }
  });
  keepTableRoles(document);

  // A changed period reloads the page without pressing "Show".
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (select && select.id === "period" && select.form) {
      select.form.submit();
    }
  });
})();
