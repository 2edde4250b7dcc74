// Runs the collector's snippet in Node with a minimal fake browser: two clicks, then the page is
// hidden; prints what the snippet handed to navigator.sendBeacon as JSON lines.
'use strict';
const fs = require('fs');
const source = fs.readFileSync(process.argv[2], 'utf8');

const listeners = {};
const on = (target) => (type, fn) => { (listeners[target + ':' + type] ||= []).push(fn); };
const fire = (target, type, event) => (listeners[target + ':' + type] || []).forEach((fn) => fn(event));
const beacons = [];

globalThis.window = globalThis;
globalThis.innerWidth = 1280;
globalThis.innerHeight = 720;
globalThis.devicePixelRatio = 2;
globalThis.location = { pathname: '/pricing' };
globalThis.addEventListener = on('window');
Object.defineProperty(globalThis, 'navigator', {
  value: {
    userAgent: 'NodeHarness/1.0 "quoted"',
    sendBeacon: (url, blob) => { beacons.push({ url, blob }); return true; },
  },
  configurable: true,
});
globalThis.document = {
  visibilityState: 'visible',
  addEventListener: on('document'),
  currentScript: {
    src: 'http://127.0.0.1:8088/v1/snippet.js',
    dataset: { pageId: process.argv[3] || undefined },
  },
};

new Function(source)();

fire('document', 'click', { clientX: 100, clientY: 50 });
fire('document', 'click', { clientX: 1279.5, clientY: 719 });
document.visibilityState = 'hidden';
fire('document', 'visibilitychange', {});

(async () => {
  for (const beacon of beacons) {
    console.log(JSON.stringify({ url: beacon.url, type: beacon.blob.type, body: await beacon.blob.text() }));
  }
  process.exit(0);
})();
