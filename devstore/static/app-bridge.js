/*
 * The devstore's App Bridge stand-in. The app loads it instead of
 * https://cdn.shopify.com/shopifycloud/app-bridge.js when it runs against the devstore.
 *
 * Like App Bridge it provides `shopify.idToken()` and wraps `window.fetch` so that the app's
 * own requests carry `Authorization: Bearer <ID token>`; a 401 answered with
 * `X-Shopify-Retry-Invalid-Session-Request: 1` is retried once with a fresh token.
 * Tokens come from the admin frame (postMessage to the parent, as App Bridge does) or, when the
 * page is not framed, straight from the devstore.
 *
 * The bounce page: when the page's query holds `shopify-reload=<url>` (the app answered a
 * document load without a valid ID token), App Bridge takes a fresh ID token and replaces the
 * page with that URL plus `id_token`. Only a URL on the page's own origin is followed, so the
 * parameter cannot send a token elsewhere.
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector('script[src*="app-bridge.js"]');
  var src = new URL(script.src, window.location.href);
  var adminBase = src.href.replace(/\/app-bridge\.js(\?.*)?$/, "");
  var params = new URLSearchParams(window.location.search);
  var meta = document.querySelector('meta[name="shopify-api-key"]');
  var pending = {};
  var counter = 0;

  window.addEventListener("message", function (event) {
    var data = event.data || {};
    if (event.origin !== src.origin) return;
    if (data.type !== "devstore:id_token" || !pending[data.id]) return;
    pending[data.id](data.token);
    delete pending[data.id];
  });

  function fromDevstore() {
    return origFetch(adminBase + "/apps/kizuna/id_token", { credentials: "omit" })
      .then(function (r) { return r.json(); })
      .then(function (body) {
        if (!body || typeof body.id_token !== "string") throw new Error("devstore: no ID token");
        return body.id_token;
      });
  }

  function idToken() {
    if (window.parent === window) return fromDevstore();
    return new Promise(function (resolve) {
      var id = "t" + (++counter);
      var timer = setTimeout(function () {
        delete pending[id];
        fromDevstore().then(resolve);
      }, 1000);
      pending[id] = function (token) { clearTimeout(timer); resolve(token); };
      window.parent.postMessage({ type: "devstore:id_token?", id: id }, src.origin);
    });
  }

  function isAppRequest(url) {
    try {
      return new URL(url, window.location.href).origin === window.location.origin;
    } catch (e) {
      return false;
    }
  }

  var origFetch = window.fetch.bind(window);

  function withToken(input, init, token) {
    var headers = new Headers((init && init.headers) || (input instanceof Request ? input.headers : undefined));
    headers.set("Authorization", "Bearer " + token);
    return Object.assign({}, init || {}, { headers: headers });
  }

  window.fetch = function (input, init) {
    var url = input instanceof Request ? input.url : String(input);
    if (!isAppRequest(url)) return origFetch(input, init);
    return idToken().then(function (token) {
      return origFetch(input, withToken(input, init, token)).then(function (response) {
        if (response.status === 401 &&
            response.headers.get("X-Shopify-Retry-Invalid-Session-Request") === "1") {
          return idToken().then(function (fresh) {
            return origFetch(input, withToken(input, init, fresh));
          });
        }
        return response;
      });
    });
  };

  window.shopify = {
    config: {
      apiKey: meta ? meta.content : null,
      shop: params.get("shop"),
      host: params.get("host"),
      locale: params.get("locale") || "en",
    },
    environment: { embedded: window.parent !== window, mobile: false, pos: false },
    idToken: idToken,
    toast: {
      show: function (message) {
        if (window.parent !== window) {
          window.parent.postMessage({ type: "devstore:toast", message: String(message) }, src.origin);
        }
        return "toast";
      },
    },
    loading: function () {},
  };

  function bounce() {
    var reload = params.get("shopify-reload");
    if (!reload) return;
    var target;
    try {
      target = new URL(reload, window.location.href);
    } catch (e) {
      return;
    }
    if (target.origin !== window.location.origin) return;
    idToken().then(function (token) {
      target.searchParams.set("id_token", token);
      window.location.replace(target.href);
    }, function (error) {
      if (window.console) window.console.error("App Bridge: no ID token for the reload", error);
    });
  }

  bounce();
})();
