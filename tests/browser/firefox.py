#!/usr/bin/env python3
"""Drive a real headless Firefox against our Web Push server (WEBPUSH.md).

Talks Firefox's Marionette protocol directly (length-prefixed JSON over TCP), so it
needs only the standard library, Debian's ``firefox-esr`` and, for sending pushes,
``pywebpush``.

Library use::

    ff = Firefox(profile_dir, "ws://127.0.0.1:8080/")
    ff.start()
    ff.navigate("http://127.0.0.1:8080/demo/")
    ff.script("return document.title")
    ff.stop()

CLI::

    firefox.py scenario --page http://127.0.0.1:8080/demo/ --push-server ws://127.0.0.1:8080/
    firefox.py probe --push-server ws://127.0.0.1:8080/ [--page URL]

``scenario`` subscribes with the demo page, sends pushes in both encodings, then sends
pushes while Firefox is down (TTL, Topic replacement, expiry) and checks what the
restarted Firefox receives. ``probe`` starts Firefox, lets it connect to the push server
and, given a page, subscribes; it prints what it saw. Exit status 0 on success, 1 on a
failed check, 2 on a usage/set-up error. Firefox's own output is kept and its tail
printed on failure.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

FIREFOX_BINARIES = ("firefox-esr", "firefox")
STARTUP_TIMEOUT = 60.0       # Firefox start until Marionette answers
QUIT_TIMEOUT = 30.0          # Marionette:Quit until the process is gone
SCENARIO_TIMEOUT = 180       # the whole scenario, seconds
QUOTA = 100_000              # dom.push.maxQuotaPerSubscription

ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"


class Failure(Exception):
    """A check failed; the message says which."""


def log(msg: str) -> None:
    print(f"[firefox.py {time.strftime('%H:%M:%S')}] {msg}", flush=True)


_waiting_for = "start-up"  # what wait_for waits for, for the global timeout's message


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Call ``probe`` until it returns something truthy; Failure after ``timeout`` s."""
    global _waiting_for
    _waiting_for = what
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Failure(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {last!r})")
        time.sleep(interval)


class ProxySink:
    """A TCP server on 127.0.0.1 that accepts and closes at once.

    Firefox's HTTP(S) proxy points here, so nothing it tries to fetch from the outside
    world (updates, telemetry, remote settings, ...) leaves the machine or hangs.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, name="proxy-sink", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def profile_prefs(push_server_url: str, proxy_port: int) -> dict[str, Any]:
    """The prefs written to user.js (user values beat Marionette's recommended prefs)."""
    return {
        # Web Push through our server.
        "dom.push.serverURL": push_server_url,
        "dom.push.testing.allowInsecureServerURL": True,
        "dom.push.testing.ignorePermission": True,
        # Marionette's recommended prefs turn the push connection off unless set here.
        "dom.push.connection.enabled": True,
        # Pushes that show no notification count against a quota (16 by default).
        "dom.push.maxQuotaPerSubscription": QUOTA,
        "dom.push.loglevel": os.environ.get("FIREFOX_PUSH_LOGLEVEL", "Warn"),
        "dom.serviceWorkers.enabled": True,
        "dom.serviceWorkers.testing.enabled": True,
        "permissions.default.desktop-notification": 1,
        "dom.webnotifications.allowinsecure": True,
        # Marionette on a port of Firefox's choice, written to MarionetteActivePort.
        "marionette.port": 0,
        # Everything but loopback goes to the sink; loopback bypasses the proxy.
        "network.proxy.type": 1,
        "network.proxy.http": "127.0.0.1",
        "network.proxy.http_port": proxy_port,
        "network.proxy.ssl": "127.0.0.1",
        "network.proxy.ssl_port": proxy_port,
        "network.proxy.share_proxy_settings": False,
        "network.proxy.no_proxies_on": "",
        "network.proxy.allow_hijacking_localhost": False,
        "network.trr.mode": 5,
        "network.dns.disablePrefetch": True,
        "network.prefetch-next": False,
        "network.predictor.enabled": False,
        "network.captive-portal-service.enabled": False,
        "network.connectivity-service.enabled": False,
        # Updates, telemetry, studies, remote settings, safe browsing.
        "app.update.disabledForTesting": True,
        "app.update.auto": False,
        "app.normandy.enabled": False,
        "nimbus.rollouts.enabled": False,
        "browser.backup.enabled": False,
        "app.shield.optoutstudies.enabled": False,
        "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.healthreport.uploadEnabled": False,
        "datareporting.usage.uploadEnabled": False,
        "toolkit.telemetry.enabled": False,
        "toolkit.telemetry.unified": False,
        "toolkit.telemetry.archive.enabled": False,
        "browser.ping-centre.telemetry": False,
        "services.settings.server": "data:,#remote-settings-disabled",
        "browser.safebrowsing.malware.enabled": False,
        "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False,
        "browser.safebrowsing.blockedURIs.enabled": False,
        "browser.safebrowsing.update.enabled": False,
        "extensions.update.enabled": False,
        "extensions.getAddons.cache.enabled": False,
        "extensions.blocklist.enabled": False,
        "extensions.systemAddon.update.enabled": False,
        "browser.search.update": False,
        "browser.region.network.url": "",
        "browser.region.update.enabled": False,
        "media.gmp-manager.updateEnabled": False,
        "identity.fxaccounts.enabled": False,
        "browser.discovery.enabled": False,
        "browser.topsites.contile.enabled": False,
        "browser.newtabpage.enabled": False,
        "browser.newtabpage.activity-stream.feeds.system.topstories": False,
        "browser.newtabpage.activity-stream.feeds.section.topstories": False,
        "browser.newtabpage.activity-stream.feeds.snippets": False,
        "browser.newtabpage.activity-stream.default.sites": "",
        # No first-run pages, dialogs or session restore.
        "browser.shell.checkDefaultBrowser": False,
        "browser.startup.page": 0,
        "browser.startup.homepage": "about:blank",
        "browser.startup.homepage_override.mstone": "ignore",
        "browser.startup.firstrunSkipsHomepage": True,
        "startup.homepage_welcome_url": "about:blank",
        "startup.homepage_welcome_url.additional": "",
        "browser.aboutwelcome.enabled": False,
        "datareporting.policy.firstRunURL": "",
        "trailhead.firstrun.didSeeAboutWelcome": True,
        "termsofuse.bypassNotification": True,
        "browser.sessionstore.resume_from_crash": False,
        "toolkit.startup.max_resumed_crashes": -1,
        "browser.tabs.warnOnClose": False,
        "browser.warnOnQuit": False,
        # History stays on: Firefox drops pushes for an origin with no visit in history
        # while no tab of it is open ("Ignoring message sent to unvisited origin").
        "places.history.enabled": True,
    }


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when this driver dies, even by SIGKILL."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def user_js(prefs: dict[str, Any]) -> str:
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


class Marionette:
    """A minimal Marionette client: ``[0, id, command, params]`` → ``[1, id, error, result]``."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.next_id = 0
        hello = self._read()
        if not isinstance(hello, dict) or hello.get("marionetteProtocol") != 3:
            raise Failure(f"unexpected Marionette greeting: {hello!r}")

    def _read(self) -> Any:
        while b":" not in self.buf:
            self._fill()
        length, _, rest = self.buf.partition(b":")
        self.buf = rest
        n = int(length)
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return json.loads(body)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("Marionette closed the connection")
        self.buf += chunk

    def call(self, command: str, params: dict[str, Any] | None = None) -> Any:
        self.next_id += 1
        msg_id = self.next_id
        data = json.dumps([0, msg_id, command, params or {}]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        while True:
            reply = self._read()
            if isinstance(reply, list) and len(reply) == 4 and reply[0] == 1 and reply[1] == msg_id:
                break
        _, _, error, result = reply
        if error:
            raise Failure(f"Marionette {command} failed: {error.get('error')}: {error.get('message')}")
        return result

    def close(self) -> None:
        self.sock.close()


class Firefox:
    """A headless Firefox on ``profile_dir`` with push pointed at ``push_server_url``.

    ``start()`` (re)writes user.js, so ``stop()`` then ``start()`` restarts Firefox on
    the same profile (its push subscriptions, service workers and IndexedDB kept).
    """

    def __init__(self, profile_dir: str | os.PathLike[str], push_server_url: str,
                 binary: str | None = None, system_access: bool = False) -> None:
        self.profile_dir = Path(profile_dir)
        self.system_access = system_access  # allows chrome_script()
        self.push_server_url = push_server_url
        self.binary = binary or os.environ.get("FIREFOX") or next(
            (b for b in FIREFOX_BINARIES if shutil.which(b)), None)
        if not self.binary:
            raise Failure("no firefox found: apt-get install -y firefox-esr (or set FIREFOX)")
        self.log_path = self.profile_dir.parent / f"{self.profile_dir.name}.firefox.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Marionette | None = None
        self.sink: ProxySink | None = None
        self.started_at = 0.0

    def start(self) -> None:
        if self.proc is not None:
            raise Failure("Firefox already running")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.profile_dir / "MarionetteActivePort"
        port_file.unlink(missing_ok=True)
        self.sink = ProxySink()
        (self.profile_dir / "user.js").write_text(user_js(profile_prefs(self.push_server_url, self.sink.port)))
        env = dict(os.environ, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1",
                   MOZ_DISABLE_AUTO_SAFE_MODE="1")
        argv = [self.binary, "--headless", "--no-remote", "--profile", str(self.profile_dir), "--marionette"]
        if self.system_access:
            argv.append("--remote-allow-system-access")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()

        def port() -> int | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise Failure(f"Firefox exited during start-up with status {self.proc.returncode}")
            try:
                return int(port_file.read_text().strip())
            except (FileNotFoundError, ValueError):
                return None

        marionette_port = wait_for("Marionette to listen", port, STARTUP_TIMEOUT, 0.1)
        self.client = Marionette(marionette_port)
        self.client.call("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
        self.client.call("WebDriver:SetTimeouts", {"script": 60_000, "pageLoad": 30_000})

    def stop(self) -> None:
        """Quit cleanly through Marionette; kill the process group if that fails."""
        if self.client is not None:
            try:
                self.client.call("Marionette:Quit", {"flags": ["eForceQuit"]})
            except (Failure, OSError):
                pass
            self.client.close()
            self.client = None
        if self.proc is not None:
            try:
                self.proc.wait(QUIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                log("Firefox did not quit; killing it")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
            else:
                # Content processes share the group; make sure none outlive the parent.
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc = None
        if self.sink is not None:
            self.sink.close()
            self.sink = None

    def _marionette(self) -> Marionette:
        if self.client is None:
            raise Failure("Firefox is not running")
        return self.client

    def navigate(self, url: str) -> None:
        self._marionette().call("WebDriver:Navigate", {"url": url})

    def script(self, js: str, args: list[Any] | None = None) -> Any:
        """Run ``js`` as a function body in the page (``return`` gives the value)."""
        return self._marionette().call("WebDriver:ExecuteScript", {"script": js, "args": args or []}).get("value")

    def async_script(self, js: str, args: list[Any] | None = None) -> Any:
        """Run ``js``; it calls ``arguments[arguments.length - 1](value)`` to finish."""
        return self._marionette().call("WebDriver:ExecuteAsyncScript", {"script": js, "args": args or []}).get("value")

    def chrome_script(self, js: str, args: list[Any] | None = None) -> Any:
        """Run ``js`` in Firefox's privileged parent process (needs ``system_access``)."""
        client = self._marionette()
        client.call("Marionette:SetContext", {"value": "chrome"})
        try:
            return self.script(js, args)
        finally:
            client.call("Marionette:SetContext", {"value": "content"})

    def click(self, css: str) -> None:
        found = self._marionette().call("WebDriver:FindElement", {"using": "css selector", "value": css})
        self._marionette().call("WebDriver:ElementClick", {"id": found["value"][ELEMENT_KEY]})

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no Firefox output)"


# --- the demo page (ns-ua-ws/src/demo/index.html) -------------------------------------

def page_text(ff: Firefox, element_id: str) -> str:
    return ff.script("const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
                     [element_id]) or ""


def page_messages(ff: Firefox) -> list[str]:
    return ff.script("return Array.from(document.querySelectorAll('#messages > li'), li => li.textContent);")


def open_page(ff: Firefox, page: str) -> str:
    """Open the demo page and wait until its service worker is registered."""
    ff.navigate(page)

    def registered() -> str | None:
        status = ff.script("const e = document.getElementById('status'); return e ? e.textContent : null;")
        if status is None:
            raise Failure(f"no #status element at {page} (is it the demo page? title: "
                          f"{ff.script('return document.title')!r})")
        if status.startswith("error"):
            raise Failure(f"demo page: {status}")
        return status if status.startswith("registered") else None

    return wait_for("the demo page to register its service worker", registered, 20)


def subscribe(ff: Firefox) -> dict[str, Any]:
    """Click Subscribe and return the subscription JSON the page shows."""
    wait_for("#subscribe to be enabled", lambda: ff.script("return !document.getElementById('subscribe').disabled"), 10)
    t0 = time.monotonic()
    ff.click("#subscribe")

    def subscribed() -> str | None:
        status = page_text(ff, "status")
        if status.startswith("error"):
            raise Failure(f"subscribe: {status}")
        return page_text(ff, "subscription") if status == "subscribed" else None

    sub = json.loads(wait_for("the subscription", subscribed, 60))
    log(f"subscribed in {time.monotonic() - t0:.1f} s "
        f"({time.monotonic() - ff.started_at:.1f} s after Firefox started): {sub['endpoint']}")
    return sub


# --- sending ---------------------------------------------------------------------------

def send(sub: dict[str, Any], text: str, *, encoding: str = "aes128gcm", ttl: int = 600,
         headers: dict[str, str] | None = None) -> None:
    """Send ``text`` with pywebpush; check 201 and the Location and TTL headers."""
    from pywebpush import WebPushException, webpush

    info = {"endpoint": sub["endpoint"], "keys": sub["keys"]}
    try:
        resp = webpush(info, text, content_encoding=encoding, ttl=ttl, headers=dict(headers or {}), timeout=10)
    except WebPushException as e:
        body = e.response.text if e.response is not None else ""
        raise Failure(f"push {text!r} refused: {e} {body}") from None
    if resp.status_code != 201:
        raise Failure(f"push {text!r}: status {resp.status_code}, want 201: {resp.text}")
    missing = [h for h in ("Location", "TTL") if h not in resp.headers]
    if missing:
        raise Failure(f"push {text!r}: response lacks {', '.join(missing)} (headers: {dict(resp.headers)})")
    log(f"sent {text!r} ({encoding}, ttl {ttl}{', ' + str(headers) if headers else ''}): "
        f"201, Location {resp.headers['Location']}, TTL {resp.headers['TTL']}")


# --- scenarios -------------------------------------------------------------------------

def scenario(page: str, push_server: str, settle: float) -> None:
    import pywebpush  # noqa: F401  (fail before starting Firefox if it is missing)

    with tempfile.TemporaryDirectory(prefix="ns-firefox-") as tmp:
        ff = Firefox(Path(tmp) / "profile", push_server)
        try:
            _scenario(ff, page, settle)
        except BaseException:
            log(f"Firefox output (tail of {ff.log_path}):\n{ff.log_tail()}")
            raise
        finally:
            ff.stop()


def _scenario(ff: Firefox, page: str, settle: float) -> None:
    log(f"starting Firefox ({ff.binary}), push server {ff.push_server_url}")
    ff.start()
    log(f"opening {page}: {open_page(ff, page)}")
    # Give the push service a moment to connect after the cold start (the page retries
    # a subscribe() that hangs anyway).
    time.sleep(max(0.0, 3.0 - (time.monotonic() - ff.started_at)))
    sub = subscribe(ff)
    command = page_text(ff, "command")
    if sub["endpoint"] not in command:
        raise Failure(f"#command does not contain the endpoint: {command!r}")
    log("#command contains the endpoint")

    # The command the page shows, pasted as a user would (pywebpush is installed already).
    before = page_messages(ff)
    for line in command.splitlines():
        if line.startswith("pip install"):
            continue
        done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise Failure(f"the page's command failed: {line!r}: {done.stderr.strip()}")
    pasted = "Hello from the command line"
    wait_for("the page's command in #messages", lambda: page_messages(ff) == before + [pasted], 30)
    log(f"the page's command works: {pasted!r} received")

    before = page_messages(ff)
    online = ["hello aes128gcm", "hello aesgcm"]
    send(sub, online[0], encoding="aes128gcm")
    send(sub, online[1], encoding="aesgcm")
    wait_for(f"{online} in #messages", lambda: page_messages(ff) == before + online, 30)
    log(f"received while open: {online}")

    ff.stop()
    log("Firefox quit; sending while it is down")
    send(sub, "kept 1")
    send(sub, "replaced", headers={"Topic": "t1"})
    send(sub, "replacement", headers={"Topic": "t1"})
    send(sub, "expires", ttl=1)
    time.sleep(2)  # let "expires" expire
    send(sub, "kept 2")

    ff.start()
    log(f"restarted Firefox on the same profile; {open_page(ff, page)}")
    base = before + online
    want = sorted(["kept 1", "replacement", "kept 2"])

    def arrived() -> list[str] | None:
        got = page_messages(ff)
        if got[:len(base)] != base:
            raise Failure(f"#messages lost earlier pushes: {got}")
        new = got[len(base):]
        bad = [m for m in new if m not in want]
        if bad:
            raise Failure(f"received {bad} after the restart, which should not arrive (all new: {new})")
        return new if sorted(new) == want else None

    wait_for(f"{want} after the restart", arrived, 30)
    log(f"received after restart: {page_messages(ff)[len(base):]}; watching {settle:.0f} s for extras")
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        new = page_messages(ff)[len(base):]
        if sorted(new) != want:
            raise Failure(f"extra pushes after the restart: {new}")
        time.sleep(0.25)
    log("nothing else arrived")


def probe(push_server: str, page: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="ns-firefox-") as tmp:
        ff = Firefox(Path(tmp) / "profile", push_server, system_access=True)
        try:
            log(f"starting Firefox ({ff.binary}), push server {push_server}")
            ff.start()
            log(f"Marionette session up {time.monotonic() - ff.started_at:.1f} s after start; "
                f"Firefox {ff.script('return navigator.userAgent')}")
            # Firefox stores the uaid of the server's hello reply in this pref.
            uaid = wait_for("the push server's hello reply (pref dom.push.userAgentID)",
                            lambda: ff.chrome_script("return Services.prefs.getStringPref('dom.push.userAgentID', '')"),
                            30)
            log(f"hello answered {time.monotonic() - ff.started_at:.1f} s after start: uaid {uaid}")
            if page:
                log(f"opening {page}: {open_page(ff, page)}")
                sub = subscribe(ff)
                log(f"subscription: {json.dumps(sub)}")
                log(f"command: {page_text(ff, 'command')}")
                log(f"messages: {page_messages(ff)}")
        except BaseException:
            log(f"Firefox output (tail of {ff.log_path}):\n{ff.log_tail()}")
            raise
        finally:
            ff.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("scenario", help="the full subscribe / push / restart scenario")
    sc.add_argument("--page", required=True, help="the demo page, e.g. http://127.0.0.1:8080/demo/")
    sc.add_argument("--push-server", required=True, help="dom.push.serverURL, e.g. ws://127.0.0.1:8080/")
    sc.add_argument("--settle", type=float, default=5.0, help="seconds to watch for extra pushes at the end")
    sc.add_argument("--timeout", type=int, default=SCENARIO_TIMEOUT, help="global timeout, seconds")
    pr = sub.add_parser("probe", help="start Firefox against the push server (and subscribe, given --page)")
    pr.add_argument("--push-server", required=True)
    pr.add_argument("--page")
    pr.add_argument("--timeout", type=int, default=SCENARIO_TIMEOUT)
    args = ap.parse_args(argv)

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise Failure(f"global timeout of {args.timeout} s reached (last waited for: {_waiting_for})")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up
    signal.alarm(args.timeout)
    try:
        if args.command == "scenario":
            scenario(args.page, args.push_server, args.settle)
        else:
            probe(args.push_server, args.page)
    except Failure as e:
        log(f"FAIL: {e}")
        return 1
    except ImportError as e:
        log(f"FAIL: {e} (pip install pywebpush)")
        return 2
    finally:
        signal.alarm(0)
    log("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
