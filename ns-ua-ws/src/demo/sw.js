// Service worker of the Web Push demo page (scope /demo/).
// On each push: keep its text in IndexedDB (so pushes that arrive while no page is open
// are listed later), tell the open pages, and show a notification when allowed.
'use strict';

const DB_NAME = 'webpush-demo';
const STORE = 'messages';

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, {autoIncrement: true});
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function keep(text) {
  const db = await openDb();
  try {
    await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, 'readwrite');
      tx.objectStore(STORE).add({text, received: Date.now()});
      tx.oncomplete = () => resolve();
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

async function notify(text) {
  // Without the notification permission this rejects: the push is still kept and listed.
  // Firefox counts pushes that show no notification against a per-subscription quota
  // (dom.push.maxQuotaPerSubscription), reset when the user visits the site.
  try {
    await self.registration.showNotification('Web Push demo', {body: text, tag: 'webpush-demo'});
  } catch (e) {
    console.debug('no notification:', e);
  }
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', event => event.waitUntil(self.clients.claim()));

self.addEventListener('push', event => {
  const text = event.data ? event.data.text() : '';
  event.waitUntil((async () => {
    await keep(text);
    const pages = await self.clients.matchAll({type: 'window', includeUncontrolled: true});
    for (const page of pages) page.postMessage({type: 'push', text});
    await notify(text);
  })());
});

self.addEventListener('notificationclick', event => {
  event.notification.close();
  event.waitUntil(self.clients.openWindow('/demo/'));
});
