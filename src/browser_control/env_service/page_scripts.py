"""JavaScript the service runs in task pages: activity tracking, the settling wait and bid marking.

``ACTIVITY_TRACKER`` is installed as a context init script, so it runs before any script of the page.
It records what the page's own scripts still have in flight (short timeouts, fast intervals such as
jQuery's 13 ms animation tick, animation-frame callbacks, fetch/XHR requests), counts DOM mutations and
remembers which elements got mouse-click listeners (what Chromium's DOMSnapshot reports as
``isClickable``, without paying for a whole-document snapshot on every step).

``SETTLE_AND_MARK`` waits, up to a cap, until the page is quiet, then gives every element of a standard
HTML tag its bid. The bid numbering, the reuse of existing bids and the ARIA carrier attributes follow
BrowserGym's marking, so bids and trees are the same as BrowserGym's; what BrowserGym also computes for
screenshots (visibility ratios through an IntersectionObserver, which costs a rendered frame, and
set-of-marks flags, which force layout for every element) is left out because the text observation does
not use it.
"""

from __future__ import annotations

# Intervals at or under this period drive animations (jQuery 1.x ticks every 13 ms); slower ones are
# clocks (MiniWoB's countdown ticks every second) that never stop and must not hold the wait up.
FAST_INTERVAL_MS = 50
# An animation driver (fast interval or animation-frame loop) that has not changed the DOM for this long
# is not waited for: it draws on a canvas or polls, and would otherwise hold every step up to the cap.
IDLE_DRIVER_MS = 50
# A new interval up to this period is waited for until its first tick (then it is a clock).
FIRST_TICK_MAX_MS = 200

ACTIVITY_TRACKER = """
(() => {
  if (Object.prototype.hasOwnProperty.call(window, "__bcActivity")) return;
  const setT = window.setTimeout, clearT = window.clearTimeout;
  const setI = window.setInterval, clearI = window.clearInterval;
  const raf = window.requestAnimationFrame, caf = window.cancelAnimationFrame;
  const timeouts = new Map();   // id -> due time (ms, performance.now())
  const fastIntervals = new Set();
  const firstTicks = new Map();  // interval id -> due time of its first tick, until it has ticked
  const frames = new Set();
  const clickListeners = new WeakMap();  // element -> its click/mousedown/mouseup/DOMActivate listeners
  const CLICK_TYPES = new Set(["click", "mousedown", "mouseup", "DOMActivate"]);
  const state = {
    timeouts, fastIntervals, firstTicks, frames, clickListeners, requests: 0, mutations: 0,
    setTimeout: setT, clearTimeout: clearT,
  };
  Object.defineProperty(window, "__bcActivity", {value: state, enumerable: false});

  window.setTimeout = function (handler, delay, ...args) {
    if (typeof handler !== "function") return setT.call(window, handler, delay, ...args);
    let id;
    const wrapped = function () {
      timeouts.delete(id);
      return handler.apply(this, arguments);
    };
    id = setT.call(window, wrapped, delay, ...args);
    timeouts.set(id, performance.now() + (Number(delay) || 0));
    return id;
  };
  window.clearTimeout = function (id) {
    timeouts.delete(id);
    return clearT.call(window, id);
  };
  window.setInterval = function (handler, period, ...args) {
    if (typeof handler !== "function") return setI.call(window, handler, period, ...args);
    let id;
    const wrapped = function () {
      firstTicks.delete(id);
      return handler.apply(this, arguments);
    };
    id = setI.call(window, wrapped, period, ...args);
    const ms = Number(period) || 0;
    if (ms <= __FAST_INTERVAL_MS__) fastIntervals.add(id);
    // Until its first tick a new short interval is pending work like a timeout (stock-market draws its
    // first price 100 ms after the episode starts); later ticks, and slow intervals (terminal's 800 ms
    // caret blink), are a clock, not something to wait for.
    if (ms <= __FIRST_TICK_MAX_MS__) firstTicks.set(id, performance.now() + ms);
    return id;
  };
  window.clearInterval = function (id) {
    fastIntervals.delete(id);
    firstTicks.delete(id);
    return clearI.call(window, id);
  };
  if (raf) {
    window.requestAnimationFrame = function (callback) {
      let id;
      id = raf.call(window, function () {
        frames.delete(id);
        return callback.apply(this, arguments);
      });
      frames.add(id);
      return id;
    };
    window.cancelAnimationFrame = function (id) {
      frames.delete(id);
      return caf.call(window, id);
    };
  }
  const done = () => { state.requests = Math.max(0, state.requests - 1); };
  if (window.fetch) {
    const fetch = window.fetch;
    window.fetch = function () {
      state.requests++;
      let promise;
      try { promise = fetch.apply(this, arguments); } catch (e) { done(); throw e; }
      promise.then(done, done);
      return promise;
    };
  }
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function () {
    state.requests++;
    this.addEventListener("loadend", done, {once: true});
    try { return send.apply(this, arguments); } catch (e) { done(); throw e; }
  };
  const add = EventTarget.prototype.addEventListener;
  const remove = EventTarget.prototype.removeEventListener;
  // The DOM ignores a second registration of the same (type, listener, capture); so does this count.
  const same = (type, listener, options) => {
    const capture = typeof options === "boolean" ? options : !!(options && options.capture);
    return e => e.type === type && e.listener === listener && e.capture === capture;
  };
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    if (listener && CLICK_TYPES.has(type) && this instanceof Element) {
      let entries = clickListeners.get(this);
      if (!entries) { entries = []; clickListeners.set(this, entries); }
      if (!entries.some(same(type, listener, options))) {
        const capture = typeof options === "boolean" ? options : !!(options && options.capture);
        entries.push({type, listener, capture});
      }
    }
    return add.call(this, type, listener, options);
  };
  EventTarget.prototype.removeEventListener = function (type, listener, options) {
    const entries = clickListeners.get(this);
    if (entries) {
      const i = entries.findIndex(same(type, listener, options));
      if (i >= 0) entries.splice(i, 1);
    }
    return remove.call(this, type, listener, options);
  };
  const observer = new MutationObserver(records => { state.mutations += records.length; });
  state.observer = observer;
  const observe = () => observer.observe(document, {
    subtree: true, childList: true, attributes: true, characterData: true,
  });
  observe();
})();
""".replace("__FAST_INTERVAL_MS__", str(FAST_INTERVAL_MS)).replace("__FIRST_TICK_MAX_MS__", str(FIRST_TICK_MAX_MS))

SETTLE_AND_MARK = r"""
async ([bidAttr, capMs]) => {
  const act = window.__bcActivity;
  const started = performance.now();
  const deadline = started + capMs;
  let waited = "none";
  if (act) {
    const sleep = ms => new Promise(resolve => act.setTimeout.call(window, resolve, ms));
    let seenMutations = act.mutations, lastChange = started;
    const busy = now => {
      if (act.mutations !== seenMutations) { seenMutations = act.mutations; lastChange = now; }
      if (act.requests > 0) return "network";
      for (const due of act.timeouts.values()) if (due <= deadline) return "timeout";
      for (const due of act.firstTicks.values()) if (due <= deadline) return "interval-first-tick";
      if (document.getAnimations) {
        for (const a of document.getAnimations()) {
          if (a.playState !== "running") continue;
          const end = a.effect && a.effect.getComputedTiming().endTime;
          if (Number.isFinite(end)) return "css-animation";
        }
      }
      // Animation drivers (fast intervals, animation-frame loops) count while they change the DOM: a
      // loop that only draws on a canvas, or polls, would otherwise hold every step up to the cap.
      if (now - lastChange < __IDLE_DRIVER_MS__) {
        if (act.fastIntervals.size > 0) return "interval";
        if (act.frames.size > 0) return "animation-frame";
      }
      return null;
    };
    for (;;) {
      const now = performance.now();
      if (now >= deadline) { waited = `cap (${waited})`; break; }
      const reason = busy(now);
      if (reason) { waited = reason; await sleep(10); continue; }
      // Nothing pending: let already-queued tasks (event dispatch, observer callbacks) run once and
      // accept the page only if they changed nothing.
      const before = act.mutations;
      await sleep(0);
      if (act.mutations === before && !busy(performance.now())) break;
    }
  }
  const waitedMs = performance.now() - started;

  const standard = new Set("__TAGS__".split(" "));
  if (!("browsergym_elem_counter" in window)) window.browsergym_elem_counter = 0;
  const elements = [];
  const collect = root => {
    for (const el of root.querySelectorAll("*")) {
      elements.push(el);
      if (el.shadowRoot) collect(el.shadowRoot);
    }
  };
  collect(document);
  const used = new Set();
  const clickable = [];
  const ourPrefix = /^browsergym_id[^\s]*\s/;
  // Attributes are written only when they differ: the carriers stay on the page between observations,
  // so on an unchanged page marking changes nothing and Chromium has no accessibility tree to update.
  const put = (el, name, value) => { if (el.getAttribute(name) !== value) el.setAttribute(name, value); };
  for (const el of elements) {
    if (!el.tagName || !standard.has(el.tagName.toLowerCase())) continue;
    if (typeof el.value !== "undefined") put(el, "value", String(el.value));
    if (typeof el.checked !== "undefined") {
      if (el.checked === true) put(el, "checked", "");
      else if (el.hasAttribute("checked")) el.removeAttribute("checked");
    }
    let bid = el.getAttribute(bidAttr);
    if (bid === null || used.has(bid)) {
      bid = String(window.browsergym_elem_counter++);
      el.setAttribute(bidAttr, bid);
    }
    used.add(bid);
    for (const carrier of ["aria-roledescription", "aria-description"]) {
      const original = (el.getAttribute(carrier) || "").replace(ourPrefix, "");
      put(el, carrier, `browsergym_id_${bid} ${original}`);
    }
    if ((act && (act.clickListeners.get(el) || []).length > 0) || el.onclick || el.onmousedown || el.onmouseup
        || el.isContentEditable) {
      clickable.push(bid);
    }
  }
  // Our own attribute writes are not page activity.
  if (act) act.observer.takeRecords();
  // What BrowserGym's MiniWoB validate() reads next (AbstractMiniwobTask._get_info), read here instead of
  // in a call of its own: nothing of the page runs between the two.
  const info = typeof WOB_DONE_GLOBAL === "undefined" ? null : [
    WOB_REWARD_GLOBAL, WOB_RAW_REWARD_GLOBAL, WOB_REWARD_REASON, WOB_DONE_GLOBAL, WOB_EPISODE_ID, WOB_TASK_READY,
  ];
  return {clickable, waited, waitedMs, mutations: act ? act.mutations : -1, info};
}
"""

# Page.wait_for_function as a plain evaluation. Playwright's own waits in the page's main world through its
# injected script (242 KB, written and compiled into every new document), which a reset otherwise pays for
# twice: here, and in the utility world for the first locator. The predicate is evaluated the same way
# (global eval, called when it is a function, truthy ends the wait); it is polled on the page's timer queue
# with the timer functions saved before the page's scripts ran, so the wait is not counted as page activity.
WAIT_FOR_PREDICATE = """
async ([expression, arg, timeoutMs, pollMs]) => {
  const act = window.__bcActivity;
  const later = (fn, ms) => (act ? act.setTimeout : setTimeout).call(window, fn, ms);
  const predicate = () => {
    const result = globalThis.eval(expression);
    return typeof result === "function" ? result(arg) : result;
  };
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (predicate()) return true;
    if (performance.now() >= deadline) return false;
    await new Promise(resolve => later(resolve, pollMs));
  }
}
"""

MUTATION_COUNT_EXPRESSION = "window.__bcActivity ? window.__bcActivity.mutations : -1"

# Removes the bid carriers from the ARIA attributes (before BrowserGym's own marking adds its own).
UNMARK = """
() => {
  const act = window.__bcActivity;
  const strip = /^browsergym_id[^\\s]*\\s/;
  const clean = root => {
    for (const el of root.querySelectorAll("[aria-roledescription], [aria-description]")) {
      for (const carrier of ["aria-roledescription", "aria-description"]) {
        const value = el.getAttribute(carrier);
        if (value === null) continue;
        const original = value.replace(strip, "");
        if (original) el.setAttribute(carrier, original);
        else el.removeAttribute(carrier);
      }
    }
    for (const el of root.querySelectorAll("*")) if (el.shadowRoot) clean(el.shadowRoot);
  };
  clean(document);
  if (act) act.observer.takeRecords();
}
"""

# The HTML tags that get a bid: the same list BrowserGym marks with tags_to_mark="standard_html".
STANDARD_HTML_TAGS = (
    "a abbr acronym address applet area article aside audio b base basefont bdi bdo big blockquote body br "
    "button canvas caption center cite code col colgroup data datalist dd del details dfn dialog dir div dl "
    "dt em embed fieldset figcaption figure font footer form frame frameset h1 h2 h3 h4 h5 h6 head header "
    "hgroup hr html i iframe img input ins kbd label legend li link main map mark menu meta meter nav "
    "noframes noscript object ol optgroup option output p param picture pre progress q rp rt ruby s samp "
    "script search section select small source span strike strong style sub summary sup svg table tbody "
    "td template textarea tfoot th thead time title tr track tt u ul var video wbr"
)
SETTLE_AND_MARK = SETTLE_AND_MARK.replace("__TAGS__", STANDARD_HTML_TAGS).replace(
    "__IDLE_DRIVER_MS__", str(IDLE_DRIVER_MS)
)
