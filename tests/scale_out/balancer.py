"""nginx in front of `rwkv-cpp serve` instances, as tests/scale_out/nginx.conf sets it up, on
an ephemeral 127.0.0.1 port in a temporary folder (no system file is read or written).

The shipped config names ports 8080 (nginx) and 8001, 8002 (the instances); `Balancer`
writes a copy with the ports given, starts nginx in the foreground and stops it.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONFIG = Path(__file__).with_name("nginx.conf")
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
INSTALL_HINT = "apt-get install -y nginx-light (.ci/run installs it)"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_PATHS if Path(p).is_file()), None)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def config_for(listen_port: int, upstream_ports: list[int]) -> str:
    """The shipped config with these ports."""
    text = CONFIG.read_text()
    text = text.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{listen_port};")
    servers = "".join(f"        server 127.0.0.1:{port};\n" for port in upstream_ports)
    text, count = re.subn(r"(        server 127\.0\.0\.1:800\d;\n)+", servers, text)
    assert count == 1, "the upstream block of nginx.conf changed shape"
    return text


class Balancer:
    """nginx on 127.0.0.1:`port` over the instances at `upstream_ports`, until `stop()`."""

    def __init__(self, folder: Path, upstream_ports: list[int], binary: str | None = None,
                 timeout: float = 15.0):
        binary = binary or nginx_binary()
        if binary is None:
            raise FileNotFoundError(f"nginx is not installed: {INSTALL_HINT}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.folder / "nginx.conf"
        config.write_text(config_for(self.port, upstream_ports))
        self.process = subprocess.Popen(
            [binary, "-p", str(self.folder), "-c", str(config), "-e", "stderr"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.process.communicate()[1]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("nginx did not start listening") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process.communicate()
