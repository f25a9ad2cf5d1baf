// Runs the devstore's App Bridge stand-in (devstore/static/app-bridge.js) in Node against real
// HTTP, with just enough of a browser: the page's location, window/document, and the real
// fetch. Prints {"navigated": <url or null>} once the script replaces the page (or after the wait).
//
//   node app_bridge_harness.mjs <page url> <script url> [top|framed|framed-foreign] [wait ms]
//
// framed: the parent frame answers the token request by postMessage, as the admin frame does.
// framed-foreign: a message claiming a token arrives from another origin; it must be ignored.
const [pageUrl, scriptUrl, mode = "top", waitMs = "3000"] = process.argv.slice(2);
const page = new URL(pageUrl);
const listeners = {};
let navigated = null;

const win = {
  location: {
    href: page.href,
    search: page.search,
    origin: page.origin,
    replace(url) { navigated = String(url); },
  },
  addEventListener(type, fn) { (listeners[type] ||= []).push(fn); },
  fetch: (input, init) => fetch(input, init),
  console,
};
const scriptOrigin = new URL(scriptUrl).origin;
const tokenUrl = scriptUrl.replace(/\/app-bridge\.js$/, "/apps/kizuna/id_token");
function deliver(origin, data) {
  for (const fn of listeners.message || []) fn({ origin, data, source: win.parent });
}
if (mode === "top") {
  win.parent = win;
} else {
  win.parent = {
    postMessage(data, targetOrigin) {
      if (data.type !== "devstore:id_token?" || targetOrigin !== scriptOrigin) return;
      if (mode === "framed-foreign") {
        setTimeout(() => deliver("http://evil.example", { type: "devstore:id_token", id: data.id, token: "forged" }), 10);
        return;
      }
      fetch(tokenUrl).then((r) => r.json()).then((body) =>
        deliver(scriptOrigin, { type: "devstore:id_token", id: data.id, token: body.id_token }));
    },
  };
}
globalThis.window = win;
globalThis.document = { currentScript: { src: scriptUrl }, querySelector: () => null };

const code = await (await fetch(scriptUrl)).text();
new Function(code)();
for (let i = 0; i < Number(waitMs) / 50 && navigated === null; i++) {
  await new Promise((resolve) => setTimeout(resolve, 50));
}
console.log(JSON.stringify({ navigated, shopify: typeof win.shopify }));
