// A person's round trip through local mode, in Debian's headless Chromium driven by Playwright:
// click the demo page, open the viewer from the demo page's own link, and read the clicks back
// off the heatmap (the viewer's hover readout of the cells under the pointer, and its totals).
//
//   node tests/browser/demo_clicks.mjs <demo page URL> <screenshot folder>
//
// Prints one JSON line with what it saw; exits non-zero, with the reason, when the viewer does not
// show the clicks. local/tests/browser.rs starts local mode and runs this script.

import { chromium } from 'playwright-core';

const [demoUrl, screenshots] = process.argv.slice(2);
if (!demoUrl || !screenshots) {
  console.error('usage: demo_clicks.mjs <demo page URL> <screenshot folder>');
  process.exit(2);
}

const VIEWPORT = { width: 1000, height: 800 };
const GRID = 20;
// Where to click (viewport pixels) and how often; away from the fixed header at the top.
const CLICKS = [
  { x: 130, y: 260, times: 3 }, // on the "Buy now" button
  { x: 640, y: 390, times: 2 }, // on the "Sign up" button
  { x: 905, y: 705, times: 1 }, // the background, bottom right
];
const cellOf = ({ x, y }) => [
  Math.floor((GRID * x) / VIEWPORT.width),
  Math.floor((GRID * y) / VIEWPORT.height),
];
const total = CLICKS.reduce((sum, click) => sum + click.times, 0);

function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exitCode = 1;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // As root in a container, and with no network beyond loopback (see docs: background
  // networking would try, and fail, to reach Google's hosts).
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
try {
  const context = await browser.newContext({ viewport: VIEWPORT });
  context.setDefaultTimeout(60_000);
  const demo = await context.newPage();
  await demo.goto(demoUrl, { waitUntil: 'load' });
  // The snippet is loaded async; clicks before it would not be captured.
  await demo.waitForFunction(() =>
    [...document.scripts].some((s) => s.src.endsWith('/v1/snippet.js')) &&
    performance.getEntriesByType('resource').some((r) => r.name.endsWith('/v1/snippet.js')));
  await demo.waitForTimeout(200);
  for (const click of CLICKS) {
    for (let i = 0; i < click.times; i++) {
      await demo.mouse.click(click.x, click.y);
    }
  }
  await demo.waitForFunction((n) => document.getElementById('count').textContent === String(n), total);
  await demo.screenshot({ path: `${screenshots}/demo-page.png` });

  // The demo page's own link to the viewer (live mode on), opened in a new tab. Clicking the
  // link is a click on the page too, and the snippet records it.
  const link = demo.locator('header a');
  const [viewer] = await Promise.all([context.waitForEvent('page'), link.click()]);
  await viewer.waitForLoadState('load');
  const expected = total + 1;
  // The snippet flushes every second: wait until the viewer counts every click.
  await viewer.waitForFunction(
    (n) => document.getElementById('total').textContent.trim() === String(n),
    expected,
    { timeout: 30_000 },
  ).catch(async () => {
    const shown = await viewer.locator('#total').textContent();
    throw new Error(`the viewer's total stayed at ${shown}, expected ${expected}`);
  });

  // Point at each clicked cell on the heatmap and read what the viewer says is there.
  const canvas = await viewer.locator('#heatmap').boundingBox();
  const seen = [];
  for (const click of CLICKS) {
    const [cx, cy] = cellOf(click);
    await viewer.mouse.move(
      canvas.x + ((cx + 0.5) / GRID) * canvas.width,
      canvas.y + ((cy + 0.5) / GRID) * canvas.height,
    );
    const text = (await viewer.locator('#hover').textContent()).trim();
    seen.push(text);
    const want = `cell (${cx}, ${cy}): ${click.times} click${click.times === 1 ? '' : 's'}`;
    if (text !== want) fail(`hovering cell (${cx}, ${cy}) shows "${text}", expected "${want}"`);
  }
  // And a cell nobody clicked.
  await viewer.mouse.move(canvas.x + canvas.width / (2 * GRID), canvas.y + canvas.height / (2 * GRID));
  const empty = (await viewer.locator('#hover').textContent()).trim();
  if (empty !== 'cell (0, 0): 0 clicks') fail(`cell (0, 0) shows "${empty}"`);

  // The heatmap itself is drawn: the hot cell's pixels differ from the untouched corner's.
  const pixels = await viewer.evaluate(([hot]) => {
    const canvas = document.getElementById('heatmap');
    const ctx = canvas.getContext('2d');
    const at = (cx, cy) => Array.from(ctx.getImageData(
      Math.floor(((cx + 0.5) / 20) * canvas.width), Math.floor(((cy + 0.5) / 20) * canvas.height), 1, 1).data);
    return { hot: at(hot[0], hot[1]), cold: at(0, 0) };
  }, [cellOf(CLICKS[0])]);
  if (pixels.hot.join() === pixels.cold.join()) fail(`the hot cell is drawn like an empty one: ${pixels.hot}`);

  const liveCount = (await viewer.locator('#live-count').textContent()).trim();
  const query = (await viewer.locator('#query-sql').textContent()).trim();
  if (!query.includes('SUM(clicks)')) fail(`the viewer does not show the query it ran: "${query}"`);
  await viewer.screenshot({ path: `${screenshots}/viewer.png`, fullPage: true });
  console.log(JSON.stringify({ clicks: expected, seen, empty, liveCount, pixels, query: query.slice(0, 80) }));
} catch (error) {
  fail(error.message);
} finally {
  await browser.close();
}
