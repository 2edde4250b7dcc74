// clickheatmap viewer — the single-page UI. Plain JavaScript, no build step, no inline code
// (the Content-Security-Policy allows scripts from this origin only).
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------
  // Heatmap rendering: the same picture as aggregator/src/render.rs. Each cell adds a
  // Gaussian blob (separable, cut off at 4 sigma and lowered to zero there); the summed field
  // is divided by its own maximum, lifted with a square root and coloured on an inferno-like
  // scale whose lightness rises steadily.
  // ---------------------------------------------------------------------------------------
  const ANCHORS = [
    [8, 6, 28], [34, 11, 78], [84, 15, 110], [134, 33, 106], [184, 53, 86],
    [225, 88, 52], [248, 140, 18], [249, 201, 56], [252, 254, 166],
  ];
  const SIGMA_IN_CELLS = 0.7;
  const MIN_SIGMA_PX = 0.75;
  const KERNEL_RADIUS_IN_SIGMAS = 4;
  const INTENSITY_GAMMA = 0.5;
  const LUT_SIZE = 1024;
  const GRID_LINE_RGB = [225, 228, 240];
  const GRID_LINE_ALPHA = 0.14;
  const MIN_GRID_LINE_SPACING_PX = 6;
  const MAX_CANVAS_WIDTH = 2048;
  const EMPTY_RANGE_MESSAGE = 'No clicks in this time range yet. Click around the demo page, or choose a longer range.';

  function colourScale(t) {
    const v = Number.isFinite(t) ? Math.min(1, Math.max(0, t)) : 0;
    const segments = ANCHORS.length - 1;
    const position = v * segments;
    const index = Math.min(Math.floor(position), segments - 1);
    const fraction = position - index;
    const from = ANCHORS[index];
    const to = ANCHORS[index + 1];
    return [0, 1, 2].map((c) => Math.round(from[c] + (to[c] - from[c]) * fraction));
  }

  const LUT = (() => {
    const lut = new Uint8ClampedArray(LUT_SIZE * 3);
    for (let i = 0; i < LUT_SIZE; i++) {
      const [r, g, b] = colourScale(i / (LUT_SIZE - 1));
      lut[i * 3] = r;
      lut[i * 3 + 1] = g;
      lut[i * 3 + 2] = b;
    }
    return lut;
  })();

  function axisKernels(cells, pixels) {
    const cellPx = pixels / cells;
    const sigma = Math.max(SIGMA_IN_CELLS * cellPx, MIN_SIGMA_PX);
    const radius = KERNEL_RADIUS_IN_SIGMAS * sigma;
    const floor = Math.exp(-0.5 * KERNEL_RADIUS_IN_SIGMAS * KERNEL_RADIUS_IN_SIGMAS);
    const lastPixel = pixels - 1;
    const kernels = [];
    for (let cell = 0; cell < cells; cell++) {
      const centre = (cell + 0.5) * cellPx;
      const first = Math.min(lastPixel, Math.max(0, Math.ceil(centre - radius - 0.5)));
      const last = Math.min(lastPixel, Math.max(0, Math.floor(centre + radius - 0.5)));
      const weights = new Float64Array(last - first + 1);
      for (let p = first; p <= last; p++) {
        const d = (p + 0.5 - centre) / sigma;
        weights[p - first] = Math.max(0, (Math.exp(-0.5 * d * d) - floor) / (1 - floor));
      }
      kernels.push({ start: first, weights });
    }
    return kernels;
  }

  function gridLinePositions(cells, pixels) {
    const cellPx = pixels / cells;
    const onLine = new Uint8Array(pixels);
    if (cellPx < MIN_GRID_LINE_SPACING_PX) return onLine;
    for (let border = 1; border < cells; border++) {
      const position = Math.round(border * cellPx);
      if (position < pixels) onLine[position] = 1;
    }
    return onLine;
  }

  // Draws `counts` (row-major, columns x rows) onto the canvas context. With `transparent`,
  // cold areas let the page screenshot show through; otherwise the picture is opaque, like
  // the server's PNG.
  function renderHeatmap(ctx, width, height, columns, rows, counts, options) {
    const field = new Float32Array(width * height);
    let maxCount = 0;
    for (const count of counts) if (count > maxCount) maxCount = count;
    if (maxCount > 0) {
      const columnKernels = axisKernels(columns, width);
      const rowKernels = axisKernels(rows, height);
      const profile = new Float64Array(width);
      for (let row = 0; row < rows; row++) {
        let spanStart = width;
        let spanEnd = 0;
        for (let column = 0; column < columns; column++) {
          const count = counts[row * columns + column];
          if (!count) continue;
          const kernel = columnKernels[column];
          const amount = count / maxCount;
          for (let i = 0; i < kernel.weights.length; i++) {
            profile[kernel.start + i] += amount * kernel.weights[i];
          }
          spanStart = Math.min(spanStart, kernel.start);
          spanEnd = Math.max(spanEnd, kernel.start + kernel.weights.length);
        }
        if (spanStart >= spanEnd) continue;
        const rowKernel = rowKernels[row];
        for (let offset = 0; offset < rowKernel.weights.length; offset++) {
          const weight = rowKernel.weights[offset];
          const lineStart = (rowKernel.start + offset) * width;
          for (let x = spanStart; x < spanEnd; x++) field[lineStart + x] += weight * profile[x];
        }
        profile.fill(0, spanStart, spanEnd);
      }
    }
    let fieldMax = 0;
    for (const value of field) if (value > fieldMax) fieldMax = value;
    const scale = fieldMax > 0 ? 1 / fieldMax : 0;

    const image = ctx.createImageData(width, height);
    const data = image.data;
    const top = LUT_SIZE - 1;
    for (let i = 0; i < field.length; i++) {
      const t = Math.pow(Math.min(1, Math.max(0, field[i] * scale)), INTENSITY_GAMMA);
      const index = Math.min(top, Math.round(t * top)) * 3;
      const o = i * 4;
      data[o] = LUT[index];
      data[o + 1] = LUT[index + 1];
      data[o + 2] = LUT[index + 2];
      data[o + 3] = options.transparent ? Math.round(255 * Math.min(1, t * 1.25)) : 255;
    }
    if (options.gridLines) {
      const vertical = gridLinePositions(columns, width);
      const horizontal = gridLinePositions(rows, height);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          if (!vertical[x] && !horizontal[y]) continue;
          const o = (y * width + x) * 4;
          for (let c = 0; c < 3; c++) {
            data[o + c] = Math.round(data[o + c] * (1 - GRID_LINE_ALPHA) + GRID_LINE_RGB[c] * GRID_LINE_ALPHA);
          }
          data[o + 3] = Math.round(data[o + 3] + (255 - data[o + 3]) * GRID_LINE_ALPHA);
        }
      }
    }
    ctx.putImageData(image, 0, 0);
  }

  function drawLegend() {
    const canvas = $('legend');
    const ctx = canvas.getContext('2d');
    const image = ctx.createImageData(canvas.width, canvas.height);
    for (let x = 0; x < canvas.width; x++) {
      const [r, g, b] = colourScale(x / (canvas.width - 1));
      for (let y = 0; y < canvas.height; y++) {
        const o = (y * canvas.width + x) * 4;
        image.data[o] = r;
        image.data[o + 1] = g;
        image.data[o + 2] = b;
        image.data[o + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
  }

  // ---------------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------------
  const state = {
    config: null,
    page: '',
    range: '3600000',
    stored: null, // last /api/heatmap response
    storedSource: 'heatmap', // or 'sql' when drawn from a raw SQL result
    live: null, // last /api/live snapshot
    liveOn: false,
    liveError: '',
    aspect: 16 / 9,
    background: '',
    backgroundLoaded: false,
    opacity: 0.7,
    gridLines: true,
    heatmapSeq: 0,
    pagesSeq: 0,
    liveTimer: 0,
    refreshTimer: 0,
    liveInFlight: false,
    counts: null,
  };

  const numberFormat = new Intl.NumberFormat();
  const fmt = (n) => numberFormat.format(n);

  function formatTime(ms) {
    return new Date(ms).toLocaleString([], { dateStyle: 'medium', timeStyle: 'medium' });
  }

  function toLocalInput(ms) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function currentRange() {
    if (state.range === 'custom') {
      const from = new Date($('from').value).getTime();
      const to = new Date($('to').value).getTime();
      if (!Number.isFinite(from) || !Number.isFinite(to)) {
        throw new Error('Choose both ends of the custom range.');
      }
      if (from >= to) throw new Error('“From” must be before “To”.');
      return { from, to };
    }
    const to = Date.now();
    return { from: to - Number(state.range), to };
  }

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ headers: { Accept: 'application/json' } }, options));
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function showMessage(text, isError) {
    const message = $('message');
    message.textContent = text;
    message.classList.toggle('error', Boolean(isError));
    message.classList.toggle('hidden', !text);
  }

  function saveUrlState() {
    const params = new URLSearchParams();
    if (state.page) params.set('page', state.page);
    params.set('range', state.range);
    if (state.range === 'custom') {
      try {
        const { from, to } = currentRange();
        params.set('from', String(from));
        params.set('to', String(to));
      } catch (_) { /* incomplete custom range: leave it out */ }
    }
    if (state.liveOn) params.set('live', '1');
    if (state.background) params.set('bg', state.background);
    if (state.opacity !== 0.7) params.set('opacity', String(Math.round(state.opacity * 100)));
    if (!state.gridLines) params.set('grid', '0');
    history.replaceState(null, '', `${location.pathname}?${params}`);
  }

  function readUrlState() {
    const params = new URLSearchParams(location.search);
    state.page = params.get('page') || '';
    const range = params.get('range');
    if (range && [...$('range').options].some((o) => o.value === range)) state.range = range;
    $('range').value = state.range;
    if (state.range === 'custom') {
      const from = Number(params.get('from'));
      const to = Number(params.get('to'));
      const now = Date.now();
      $('from').value = toLocalInput(Number.isFinite(from) && from > 0 ? from : now - 3600000);
      $('to').value = toLocalInput(Number.isFinite(to) && to > 0 ? to : now);
    }
    state.liveOn = params.get('live') === '1';
    state.background = params.get('bg') || '';
    const opacity = Number(params.get('opacity'));
    if (params.has('opacity') && opacity >= 0 && opacity <= 100) state.opacity = opacity / 100;
    state.gridLines = params.get('grid') !== '0';
  }

  // ---------------------------------------------------------------------------------------
  // Drawing
  // ---------------------------------------------------------------------------------------
  function combinedCounts() {
    const { columns, rows } = state.config;
    const counts = new Float64Array(columns * rows);
    let stored = 0;
    let live = 0;
    if (state.stored) {
      for (const [x, y, clicks] of state.stored.cells) {
        if (x >= 0 && x < columns && y >= 0 && y < rows) {
          counts[y * columns + x] += clicks;
          stored += clicks;
        }
      }
    }
    let liveApplied = false;
    if (state.liveOn && state.live && state.storedSource === 'heatmap') {
      if (state.live.columns === columns && state.live.rows === rows) {
        liveApplied = true;
        for (const [x, y, clicks] of state.live.cells) {
          if (x >= 0 && x < columns && y >= 0 && y < rows) {
            counts[y * columns + x] += clicks;
            live += clicks;
          }
        }
      }
    }
    return { counts, stored, live, liveApplied };
  }

  function draw() {
    if (!state.config) return;
    const { columns, rows } = state.config;
    const canvas = $('heatmap');
    const cssWidth = $('stage').clientWidth || 1280;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.min(MAX_CANVAS_WIDTH, Math.round(cssWidth * ratio)));
    const height = Math.max(1, Math.round(width / state.aspect));
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;

    const { counts, stored, live, liveApplied } = combinedCounts();
    state.counts = counts;
    const ctx = canvas.getContext('2d');
    const transparent = state.backgroundLoaded;
    ctx.clearRect(0, 0, width, height);
    renderHeatmap(ctx, width, height, columns, rows, counts, { transparent, gridLines: state.gridLines });
    canvas.style.opacity = transparent ? String(state.opacity) : '1';

    let maxCell = 0;
    let nonZero = 0;
    for (const c of counts) {
      if (c > maxCell) maxCell = c;
      if (c > 0) nonZero++;
    }
    $('legend-max').textContent = maxCell > 0 ? `0 … ${fmt(maxCell)} clicks per cell` : '';
    $('total').textContent = state.stored ? fmt(stored + live) : '–';
    $('cells').textContent = state.stored ? fmt(nonZero) : '–';
    if (!state.liveOn) {
      $('live-count').textContent = state.config.live ? 'off' : 'n/a';
      $('live-count').title = state.config.live ? '' : 'Start the viewer with --live-url to enable live mode.';
    } else if (state.liveError) {
      $('live-count').textContent = 'error';
      $('live-count').title = state.liveError;
    } else if (state.live && !liveApplied) {
      $('live-count').textContent = 'grid differs';
      $('live-count').title = `The aggregator's grid is ${state.live.columns}×${state.live.rows}; the viewer's is ${columns}×${rows}.`;
    } else {
      $('live-count').textContent = state.live ? `+${fmt(live)}` : '…';
      $('live-count').title = state.live && state.live.watermark_ms
        ? `Aggregator watermark: ${formatTime(state.live.watermark_ms)}`
        : '';
    }

    if (!state.page && state.storedSource === 'heatmap') {
      showMessage(EMPTY_RANGE_MESSAGE, false);
    } else if (state.stored && stored + live === 0) {
      showMessage(state.storedSource === 'sql'
        ? 'The SQL result has no clicks on the grid.'
        : `No clicks on “${state.page}” in this time range. Try a longer range${state.config.live ? ' or turn on Live' : ''}.`, false);
    } else if (state.stored) {
      showMessage('', false);
    }
  }

  function updateQuery(query) {
    const parts = [query.engine];
    parts.push(`${fmt(query.elapsed_ms)} ms`);
    parts.push(`${fmt(query.rows)} row${query.rows === 1 ? '' : 's'}`);
    if (query.files_read !== undefined) parts.push(`${fmt(query.files_read)} file${query.files_read === 1 ? '' : 's'} read`);
    if (query.scanned_bytes !== undefined) parts.push(`${fmt(query.scanned_bytes)} bytes scanned`);
    if (query.execution_id) parts.push(`execution ${query.execution_id}`);
    parts.push(`ran ${new Date().toLocaleTimeString()}`);
    $('query-meta').textContent = parts.join(' · ');
    $('query-sql').textContent = query.sql;
    const params = $('query-params');
    if (query.parameters && query.parameters.length) {
      params.textContent = query.parameters
        .map((value, i) => `${query.sql.includes('$1') ? `$${i + 1}` : `?${i + 1}`} = ${value}`)
        .join(', ');
      params.textContent = `parameters: ${params.textContent}`;
      params.classList.remove('hidden');
    } else {
      params.textContent = '';
      params.classList.add('hidden');
    }
  }

  function updateTopCells() {
    const body = $('top-cells');
    body.replaceChildren();
    if (!state.stored) return;
    const total = state.stored.cells.reduce((sum, cell) => sum + cell[2], 0);
    const top = [...state.stored.cells].sort((a, b) => b[2] - a[2]).slice(0, 12);
    for (const [x, y, clicks] of top) {
      const tr = document.createElement('tr');
      for (const value of [x, y, fmt(clicks), total ? `${((clicks / total) * 100).toFixed(1)}%` : '']) {
        const td = document.createElement('td');
        td.textContent = String(value);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    if (!top.length) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = 4;
      td.className = 'muted';
      td.textContent = 'No cells.';
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  function updateDownload() {
    const link = $('download');
    if (!state.stored || state.storedSource !== 'heatmap' || !state.page) {
      link.classList.add('disabled');
      link.setAttribute('aria-disabled', 'true');
      link.href = '#';
      return;
    }
    const width = 1280;
    const height = Math.max(1, Math.min(4096, Math.round(width / state.aspect)));
    const params = new URLSearchParams({
      page: state.page,
      from: String(state.stored.from),
      to: String(state.stored.to),
      width: String(width),
      height: String(height),
      grid: state.gridLines ? '1' : '0',
    });
    if (state.liveOn && state.config.live) params.set('live', '1');
    link.href = `api/heatmap.png?${params}`;
    link.classList.remove('disabled');
    link.removeAttribute('aria-disabled');
  }

  function updateWarning() {
    const notes = [];
    if (state.stored && state.stored.outside_grid_clicks > 0) {
      notes.push(`${fmt(state.stored.outside_grid_clicks)} clicks fall outside the ${state.config.columns}×${state.config.rows} grid (the aggregator uses another grid size?) and are not drawn.`);
    }
    if (state.background && !state.backgroundLoaded) notes.push('The screenshot could not be loaded.');
    $('warning').textContent = notes.join(' ');
  }

  // ---------------------------------------------------------------------------------------
  // Loading
  // ---------------------------------------------------------------------------------------
  async function loadPages() {
    const seq = ++state.pagesSeq;
    let range;
    try {
      range = currentRange();
    } catch (error) {
      showMessage(error.message, true);
      return false;
    }
    const select = $('page');
    try {
      const result = await api(`api/pages?from=${range.from}&to=${range.to}`);
      if (seq !== state.pagesSeq) return false;
      select.replaceChildren();
      const pages = result.pages;
      if (state.page && !pages.some((p) => p.page_id === state.page)) {
        pages.push({ page_id: state.page, clicks: 0 });
      }
      if (!state.page && pages.length) state.page = pages[0].page_id;
      for (const page of pages) {
        const option = document.createElement('option');
        option.value = page.page_id;
        option.textContent = page.clicks > 0
          ? `${page.page_id} — ${fmt(page.clicks)} clicks`
          : `${page.page_id} — no clicks in range`;
        select.appendChild(option);
      }
      if (!pages.length) {
        const option = document.createElement('option');
        option.value = '';
        option.textContent = 'no pages with clicks in this range';
        select.appendChild(option);
      }
      select.value = state.page;
      select.disabled = !pages.length;
      return true;
    } catch (error) {
      if (seq !== state.pagesSeq) return false;
      showMessage(`Could not list pages: ${error.message}`, true);
      return false;
    }
  }

  async function loadHeatmap(options = {}) {
    saveUrlState();
    if (!state.page) {
      state.stored = null;
      state.storedSource = 'heatmap';
      draw();
      updateTopCells();
      updateDownload();
      showMessage(EMPTY_RANGE_MESSAGE, false);
      return;
    }
    let range;
    try {
      range = currentRange();
    } catch (error) {
      showMessage(error.message, true);
      return;
    }
    const seq = ++state.heatmapSeq;
    if (!options.quiet) showMessage(state.config.engine === 'athena' ? 'Running the query on Athena…' : 'Loading…', false);
    $('refresh').disabled = true;
    try {
      const params = new URLSearchParams({ page: state.page, from: String(range.from), to: String(range.to) });
      const result = await api(`api/heatmap?${params}`);
      if (seq !== state.heatmapSeq) return;
      state.stored = result;
      state.storedSource = 'heatmap';
      $('updated').textContent = new Date().toLocaleTimeString();
      updateQuery(result.query);
      updateTopCells();
      updateDownload();
      updateWarning();
      draw();
    } catch (error) {
      if (seq !== state.heatmapSeq) return;
      showMessage(`The query failed: ${error.message}`, true);
    } finally {
      if (seq === state.heatmapSeq) $('refresh').disabled = false;
    }
  }

  async function refreshAll() {
    await loadPages();
    await loadHeatmap();
  }

  // ---------------------------------------------------------------------------------------
  // Live mode: poll the aggregator's open windows every second and add them on top; re-run the
  // stored query as soon as a window leaves the live feed (and now and then anyway, for clicks
  // other aggregator replicas or a backfill wrote).
  // ---------------------------------------------------------------------------------------
  async function pollLive() {
    if (!state.liveOn || state.liveInFlight || !state.page) return;
    state.liveInFlight = true;
    const page = state.page;
    try {
      const snapshot = await api(`api/live?page=${encodeURIComponent(page)}`);
      if (page !== state.page || !state.liveOn) return;
      if (state.live && state.range !== 'custom' && liveShrank(state.live, snapshot)) {
        // A window closed: its clicks left the live feed because they are in the table now
        // (the aggregator writes before it forgets). Re-read the table before showing the
        // smaller live counts, so the total never dips.
        await loadHeatmap({ quiet: true });
        if (page !== state.page || !state.liveOn) return;
      }
      state.live = snapshot;
      state.liveError = '';
    } catch (error) {
      state.liveError = error.message;
    } finally {
      state.liveInFlight = false;
    }
    draw();
  }

  // Whether some cell of `before` has fewer clicks (or none) in `after`.
  function liveShrank(before, after) {
    if (before.columns !== after.columns || before.rows !== after.rows) return false;
    const now = new Map(after.cells.map(([x, y, clicks]) => [`${x},${y}`, clicks]));
    return before.cells.some(([x, y, clicks]) => (now.get(`${x},${y}`) || 0) < clicks);
  }

  function setLive(on) {
    state.liveOn = on && Boolean(state.config && state.config.live);
    $('live').checked = state.liveOn;
    $('live-toggle').classList.toggle('on', state.liveOn);
    clearInterval(state.liveTimer);
    clearInterval(state.refreshTimer);
    state.live = null;
    state.liveError = '';
    if (state.liveOn) {
      state.liveTimer = setInterval(pollLive, 1000);
      const every = state.config.engine === 'athena' ? 60000 : 10000;
      state.refreshTimer = setInterval(() => {
        if (state.range !== 'custom') loadHeatmap({ quiet: true });
      }, every);
      pollLive();
    }
    updateDownload();
    saveUrlState();
    draw();
  }

  // ---------------------------------------------------------------------------------------
  // Background screenshot
  // ---------------------------------------------------------------------------------------
  function setBackground(url) {
    const image = $('background-image');
    state.background = url.trim();
    state.backgroundLoaded = false;
    $('opacity').disabled = true;
    image.classList.add('hidden');
    $('stage').classList.remove('with-background');
    state.aspect = 16 / 9;
    if (state.background) {
      let parsed = null;
      try {
        parsed = new URL(state.background, location.href);
      } catch (_) {
        parsed = null;
      }
      if (parsed && (parsed.protocol === 'http:' || parsed.protocol === 'https:')) {
        image.src = parsed.href;
      } else {
        image.removeAttribute('src');
        $('warning').textContent = 'The screenshot URL must start with http:// or https://.';
      }
    } else {
      image.removeAttribute('src');
    }
    saveUrlState();
    updateDownload();
    updateWarning();
    draw();
  }

  function onBackgroundLoaded() {
    const image = $('background-image');
    if (!image.naturalWidth || !image.naturalHeight) return;
    state.backgroundLoaded = true;
    state.aspect = image.naturalWidth / image.naturalHeight;
    image.classList.remove('hidden');
    $('stage').classList.add('with-background');
    $('opacity').disabled = false;
    updateDownload();
    updateWarning();
    draw();
  }

  // ---------------------------------------------------------------------------------------
  // Raw SQL (only when the server allows it)
  // ---------------------------------------------------------------------------------------
  async function runSql() {
    const status = $('sql-status');
    const table = $('sql-result');
    status.textContent = 'Running…';
    status.classList.remove('error-text');
    $('sql-run').disabled = true;
    try {
      const result = await api('api/sql', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ sql: $('sql-text').value }),
      });
      updateQuery(result.query);
      table.replaceChildren();
      const head = document.createElement('tr');
      for (const column of result.columns) {
        const th = document.createElement('th');
        th.textContent = column;
        head.appendChild(th);
      }
      table.appendChild(head);
      for (const row of result.rows.slice(0, 500)) {
        const tr = document.createElement('tr');
        for (const value of row) {
          const td = document.createElement('td');
          td.textContent = value === null ? 'NULL' : value;
          tr.appendChild(td);
        }
        table.appendChild(tr);
      }
      const shown = Math.min(500, result.rows.length);
      status.textContent = `${fmt(result.rows.length)} rows${shown < result.rows.length ? ` (first ${shown} shown)` : ''}`;
      // A result with grid_x, grid_y and clicks columns is drawn as a heatmap.
      const names = result.columns.map((c) => c.toLowerCase());
      const [ix, iy, ic] = ['grid_x', 'grid_y', 'clicks'].map((n) => names.indexOf(n));
      if (ix >= 0 && iy >= 0 && ic >= 0) {
        const cells = [];
        for (const row of result.rows) {
          const x = Number(row[ix]);
          const y = Number(row[iy]);
          const c = Number(row[ic]);
          if (Number.isInteger(x) && Number.isInteger(y) && Number.isFinite(c)) cells.push([x, y, c]);
        }
        state.heatmapSeq++;
        state.stored = { cells, from: 0, to: 0, outside_grid_clicks: 0 };
        state.storedSource = 'sql';
        status.textContent += ' — drawn above';
        updateTopCells();
        updateDownload();
        draw();
      }
    } catch (error) {
      status.textContent = error.message;
      status.classList.add('error-text');
    } finally {
      $('sql-run').disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Wiring
  // ---------------------------------------------------------------------------------------
  function onHover(event) {
    if (!state.counts || !state.config) return;
    const rect = $('heatmap').getBoundingClientRect();
    const { columns, rows } = state.config;
    const x = Math.floor(((event.clientX - rect.left) / rect.width) * columns);
    const y = Math.floor(((event.clientY - rect.top) / rect.height) * rows);
    if (x < 0 || y < 0 || x >= columns || y >= rows) return;
    const clicks = state.counts[y * columns + x];
    $('hover').textContent = `cell (${x}, ${y}): ${fmt(clicks)} click${clicks === 1 ? '' : 's'}`;
  }

  function wire() {
    $('page').addEventListener('change', () => {
      state.page = $('page').value;
      state.live = null;
      loadHeatmap();
    });
    $('range').addEventListener('change', () => {
      state.range = $('range').value;
      const custom = state.range === 'custom';
      $('custom-range').classList.toggle('hidden', !custom);
      $('custom-range-to').classList.toggle('hidden', !custom);
      if (custom) {
        const now = Date.now();
        if (!$('from').value) $('from').value = toLocalInput(now - 3600000);
        if (!$('to').value) $('to').value = toLocalInput(now);
      }
      refreshAll();
    });
    for (const id of ['from', 'to']) $(id).addEventListener('change', refreshAll);
    $('refresh').addEventListener('click', refreshAll);
    $('live').addEventListener('change', () => setLive($('live').checked));
    let backgroundTimer = 0;
    $('background').addEventListener('input', () => {
      clearTimeout(backgroundTimer);
      backgroundTimer = setTimeout(() => setBackground($('background').value), 500);
    });
    $('background-image').addEventListener('load', onBackgroundLoaded);
    $('background-image').addEventListener('error', () => {
      state.backgroundLoaded = false;
      $('background-image').classList.add('hidden');
      updateWarning();
      draw();
    });
    $('opacity').addEventListener('input', () => {
      state.opacity = Number($('opacity').value) / 100;
      $('opacity-value').textContent = `${$('opacity').value}%`;
      if (state.backgroundLoaded) $('heatmap').style.opacity = String(state.opacity);
      saveUrlState();
    });
    $('grid-lines').addEventListener('change', () => {
      state.gridLines = $('grid-lines').checked;
      saveUrlState();
      updateDownload();
      draw();
    });
    $('heatmap').addEventListener('mousemove', onHover);
    $('sql-run').addEventListener('click', runSql);
    let resizeTimer = 0;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(draw, 150);
    });
  }

  async function start() {
    drawLegend();
    readUrlState();
    wire();
    $('custom-range').classList.toggle('hidden', state.range !== 'custom');
    $('custom-range-to').classList.toggle('hidden', state.range !== 'custom');
    $('opacity').value = String(Math.round(state.opacity * 100));
    $('opacity-value').textContent = `${$('opacity').value}%`;
    $('opacity').disabled = true;
    $('grid-lines').checked = state.gridLines;
    try {
      state.config = await api('api/config');
    } catch (error) {
      showMessage(`The viewer's API is not reachable: ${error.message}`, true);
      return;
    }
    const config = state.config;
    $('engine-badge').textContent = `${config.engine === 'athena' ? 'Athena' : 'local'} engine · ${config.table} · grid ${config.columns}×${config.rows}`;
    if (!config.live) {
      $('live').disabled = true;
      $('live-toggle').classList.add('disabled');
      $('live-toggle').title = 'Live mode is off: start the viewer with --live-url.';
    }
    if (config.raw_sql) {
      $('raw-sql').classList.remove('hidden');
      $('sql-run').textContent = config.engine === 'athena' ? 'Run on Athena' : 'Run locally';
      $('sql-text').value = `SELECT grid_x, grid_y, SUM(clicks) AS clicks\nFROM ${config.table}\nWHERE from_unixtime(window_end / 1000) >= date_add('hour', -1, current_timestamp)\nGROUP BY 1, 2\nORDER BY clicks DESC`;
    }
    if (state.background) {
      $('background').value = state.background;
      setBackground(state.background);
    }
    await refreshAll();
    setLive(state.liveOn);
  }

  document.addEventListener('DOMContentLoaded', start);
})();
