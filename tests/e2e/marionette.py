"""A minimal client for Firefox's Marionette protocol (length-prefixed JSON over TCP), enough to drive
Debian's firefox-esr in tests without extra packages: start, navigate, run a script, quit."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.support.polling import eventually

# Firefox's own fake camera (a moving test pattern) and no permission prompt; autoplay allowed because the
# tests click through scripts rather than real user gestures.
TEST_PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
}


class MarionetteError(RuntimeError):
    pass


class Firefox:
    def __init__(self, executable: str, profile: Path, port: int) -> None:
        prefs = {**TEST_PREFS, "marionette.port": port}
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(key)}, {json.dumps(value)});\n" for key, value in prefs.items())
        )
        self.process = subprocess.Popen(
            [executable, "--headless", "--marionette", "--no-remote", "--profile", str(profile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.socket = self._connect(port)
        self.message_id = 0
        self._read()  # the server's greeting
        self.command("WebDriver:NewSession", {"capabilities": {}})

    def _connect(self, port: int, timeout_s: float = 60) -> socket.socket:
        def attempt() -> socket.socket | None:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=60)
            except OSError:
                if self.process.poll() is not None:
                    raise MarionetteError(f"firefox exited with {self.process.returncode}") from None
                return None

        connection = eventually(attempt, timeout_s=timeout_s, interval_s=0.3)
        if connection is None:
            raise MarionetteError("firefox's marionette port never opened")
        return connection

    def _read(self) -> Any:
        length = b""
        while not length.endswith(b":"):
            chunk = self.socket.recv(1)
            if not chunk:
                raise MarionetteError("marionette connection closed")
            length += chunk
        size = int(length[:-1])
        body = b""
        while len(body) < size:
            body += self.socket.recv(size - len(body))
        return json.loads(body)

    def command(self, name: str, parameters: dict | None = None) -> Any:
        self.message_id += 1
        payload = json.dumps([0, self.message_id, name, parameters or {}]).encode()
        self.socket.sendall(str(len(payload)).encode() + b":" + payload)
        _kind, _id, error, result = self._read()
        if error:
            raise MarionetteError(f"{name}: {error}")
        return result

    def navigate(self, url: str) -> None:
        self.command("WebDriver:Navigate", {"url": url})

    def script(self, body: str) -> Any:
        return self.command("WebDriver:ExecuteScript", {"script": body, "args": []}).get("value")

    def wait_for(self, body: str, timeout_s: float = 30) -> Any:
        """Poll a script until it returns something truthy."""

        def run() -> Any:
            try:
                return self.script(body)
            except MarionetteError:
                return None  # the page was navigating

        value = eventually(run, timeout_s=timeout_s, interval_s=0.25)
        if not value:
            raise MarionetteError(f"timed out waiting for: {body}")
        return value

    def quit(self) -> None:
        try:
            self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
        except (MarionetteError, OSError):
            pass
        finally:
            self.socket.close()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
