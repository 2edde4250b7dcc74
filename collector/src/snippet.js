/*
 * clickheatmap click snippet (plain ES2017, no build step). Add it to a page:
 *
 *   <script src="https://collector.example.com/v1/snippet.js" async
 *           data-page-id="pricing"></script>
 *
 * Optional attributes: data-page-id (default: location.pathname), data-endpoint (default: the
 * /v1/clicks URL of the server the script came from), data-flush-ms (default 5000).
 * No credentials, cookies or keys: the collector validates the clicks and forwards them.
 */
(function () {
  'use strict';
  var script = document.currentScript;
  if (!script || window.__clickheatmap) return;
  window.__clickheatmap = true;

  var data = script.dataset || {};
  var endpoint = data.endpoint || new URL('/v1/clicks', script.src).href;
  var pageId = data.pageId || location.pathname || '/';
  var flushMs = Math.max(1000, parseInt(data.flushMs, 10) || 5000);
  var MAX_QUEUE = 500;        // clicks kept while the collector cannot be reached
  var MAX_BATCH = 100;        // clicks per request
  var MAX_BYTES = 60 * 1024;  // sendBeacon / keepalive bodies are limited to 64 KiB in flight
  var queue = [];
  var encoder = window.TextEncoder ? new TextEncoder() : null;

  function byteLength(text) {
    return encoder ? encoder.encode(text).length : text.length * 3;
  }

  function onClick(e) {
    var now = Date.now();
    queue.push({
      event_type: 'click',
      event_time: new Date(now).toISOString(),
      event_time_ms: now,
      page_id: pageId,
      // Viewport (client) coordinates on purpose, not document (page) coordinates: the grid
      // is grid_x = floor(columns * x / viewport_width), which divides by the viewport, so x
      // and y must be measured in the same frame as viewport_width and viewport_height.
      x: e.clientX,
      y: e.clientY,
      viewport_width: window.innerWidth,
      viewport_height: window.innerHeight,
      dpr: window.devicePixelRatio || 1,
      user_agent: navigator.userAgent
    });
    if (queue.length > MAX_QUEUE) queue.splice(0, queue.length - MAX_QUEUE);
    if (queue.length >= MAX_BATCH) flush(false);
  }

  // Takes up to MAX_BATCH clicks that fit in MAX_BYTES, as a JSON array.
  function takeBatch() {
    var batch = [];
    var size = 2;
    while (queue.length && batch.length < MAX_BATCH) {
      var text = JSON.stringify(queue[0]);
      var bytes = byteLength(text) + 1;
      if (batch.length && size + bytes > MAX_BYTES) break;
      batch.push(text);
      size += bytes;
      queue.shift();
    }
    return batch.length ? '[' + batch.join(',') + ']' : null;
  }

  // text/plain keeps the request "simple": no CORS preflight, and sendBeacon accepts it.
  function send(body, leaving) {
    var blob = new Blob([body], { type: 'text/plain;charset=UTF-8' });
    if (leaving && navigator.sendBeacon) {
      try {
        if (navigator.sendBeacon(endpoint, blob)) return Promise.resolve(true);
      } catch (err) { /* fall through to fetch */ }
    }
    if (!window.fetch) return Promise.resolve(false);
    return fetch(endpoint, {
      method: 'POST',
      body: blob,
      keepalive: true,
      mode: 'cors',
      credentials: 'omit'
    }).then(function (response) {
      // 429 and 503 mean "later": keep the clicks. 400 means they were rejected for good.
      return !(response.status === 429 || response.status >= 500);
    }, function () { return false; });
  }

  var sending = false;
  function flush(leaving) {
    if (sending && !leaving) return;
    var body = takeBatch();
    if (!body) return;
    if (leaving) {
      // The page is going away: hand everything to the browser now.
      while (body) { send(body, true); body = takeBatch(); }
      return;
    }
    sending = true;
    var batch = JSON.parse(body);
    send(body, false).then(function (ok) {
      sending = false;
      if (!ok) queue = batch.concat(queue).slice(-MAX_QUEUE);
      else if (queue.length >= MAX_BATCH) flush(false);
    });
  }

  // Capture phase, so that a page's stopPropagation() does not hide its clicks.
  document.addEventListener('click', onClick, { capture: true, passive: true });
  setInterval(function () { flush(false); }, flushMs);
  addEventListener('pagehide', function () { flush(true); });
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'hidden') flush(true);
  });
})();
