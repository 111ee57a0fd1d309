"""A small multi-page shop served on 127.0.0.1: a real target for the browser adapters' tests and benchmarks.

Pages: a home page with a search form, search results, a product list, product details with an
irreversible "Buy now" form and a "Delete review" button, a contact form (text box, select, checkbox,
text area) and confirmation pages. The server records orders and messages so checks can read what the
agent did. Standard library only (``http.server``), one thread per request.
"""

from __future__ import annotations

import html
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

__all__ = ["PRODUCTS", "DemoShop"]


@dataclass(frozen=True)
class _Product:
    slug: str
    name: str
    price: str
    description: str


PRODUCTS: tuple[_Product, ...] = (
    _Product("red-mug", "Red Mug", "$8.50", "A ceramic mug, 350 ml, dishwasher safe."),
    _Product("blue-kettle", "Blue Kettle", "$24.99", "An electric kettle, 1.7 l, boils in three minutes."),
    _Product("green-teapot", "Green Teapot", "$31.00", "A cast-iron teapot with a steel infuser."),
    _Product("steel-spoon", "Steel Spoon", "$2.25", "A long spoon for tall glasses."),
    _Product("oak-tray", "Oak Tray", "$19.75", "A serving tray in oiled oak."),
)
"""The shop's catalogue."""

_TOPICS = ("General", "Billing", "Shipping", "Returns")


def _page(title: str, body: str) -> bytes:
    # Decorative and hidden parts are here on purpose: the AXTree compactor must drop them.
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>.sr-hidden{{display:none}} nav a{{margin-right:8px}}</style></head>
<body><header><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="" width="1" height="1">
<span aria-hidden="true">&#9733;</span> <nav aria-label="Main"><a href="/">Home</a><a href="/products">All products</a>
<a href="/contact">Contact us</a></nav></header>
<div class="sr-hidden">Internal banner: summer sale draft (not shown)</div>
<main><h1>{html.escape(title)}</h1>{body}</main>
<footer><p>Tiny Shop &middot; 127.0.0.1</p><a href="http://localhost:{{port}}/partner">Partner site</a></footer>
</body></html>""".encode()


@dataclass
class _Records:
    orders: list[dict[str, str]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    deleted_reviews: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _product_list(products: list[_Product]) -> str:
    if not products:
        return "<p>No products found.</p>"
    items = "".join(f'<li><a href="/product/{p.slug}">{html.escape(p.name)}</a> {p.price}</li>' for p in products)
    return f"<ul>{items}</ul>"


class _Handler(BaseHTTPRequestHandler):
    server: _ShopServer

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""

    def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8") -> None:
        body = body.replace(b"{port}", str(self.server.server_port).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path.rstrip("/") or "/"
        if path == "/":
            body = (
                '<form action="/search" method="get" role="search"><label for="q">Search</label> '
                '<input id="q" name="q" type="text" placeholder="Search products"> '
                '<button type="submit">Go</button></form><p>Welcome to Tiny Shop.</p>'
            )
            self._send(200, _page("Tiny Shop", body))
        elif path == "/search":
            term = query.get("q", [""])[0].strip().lower()
            found = [p for p in PRODUCTS if term and term in p.name.lower()]
            self._send(200, _page(f"Results for {term}", _product_list(found)))
        elif path == "/products":
            self._send(200, _page("All products", _product_list(list(PRODUCTS))))
        elif path.startswith("/product/"):
            self._product(path.removeprefix("/product/"))
        elif path == "/contact":
            options = "".join(f"<option>{topic}</option>" for topic in _TOPICS)
            body = (
                '<form action="/contact" method="post"><p><label for="name">Your name</label> '
                '<input id="name" name="name" type="text"></p><p><label for="topic">Topic</label> '
                f'<select id="topic" name="topic">{options}</select></p><p><label for="message">Message</label> '
                '<textarea id="message" name="message"></textarea></p><p><input id="copy" name="copy" '
                'type="checkbox"><label for="copy">Send me a copy</label></p>'
                '<button type="submit">Submit</button></form>'
            )
            self._send(200, _page("Contact us", body))
        elif path == "/records.json":
            with self.server.records.lock:
                data = {
                    "orders": self.server.records.orders,
                    "messages": self.server.records.messages,
                    "deleted_reviews": self.server.records.deleted_reviews,
                }
                self._send(200, json.dumps(data).encode(), "application/json")
        else:
            self._send(404, _page("Not found", "<p>No such page.</p>"))

    def _product(self, slug: str) -> None:
        product = next((p for p in PRODUCTS if p.slug == slug), None)
        if product is None:
            self._send(404, _page("Not found", "<p>No such product.</p>"))
            return
        body = (
            f"<p>Price: <strong>{product.price}</strong></p><p>{html.escape(product.description)}</p>"
            f'<form action="/order" method="post"><input type="hidden" name="slug" value="{product.slug}">'
            '<label for="qty">Quantity</label> <input id="qty" name="qty" type="number" value="1" min="1"> '
            '<button type="submit">Buy now</button></form>'
            f'<section aria-label="Reviews"><p>"Works well." - Sam</p><form action="/delete-review" method="post">'
            f'<input type="hidden" name="slug" value="{product.slug}"><button type="submit">Delete review</button>'
            '</form></section><p><a href="/products">Back to products</a></p>'
        )
        self._send(200, _page(product.name, body))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = {key: values[0] for key, values in parse_qs(self.rfile.read(length).decode()).items()}
        path = urlsplit(self.path).path
        records = self.server.records
        if path == "/order":
            product = next((p for p in PRODUCTS if p.slug == form.get("slug")), None)
            if product is None:
                self._send(400, _page("Bad order", "<p>Unknown product.</p>"))
                return
            with records.lock:
                records.orders.append({"slug": product.slug, "qty": form.get("qty", "1")})
                number = len(records.orders)
            body = f"<p>Order confirmed: {html.escape(product.name)} x {html.escape(form.get('qty', '1'))}.</p>"
            self._send(200, _page(f"Order #{number}", body))
        elif path == "/contact":
            message = {key: form.get(key, "") for key in ("name", "topic", "message", "copy")}
            with records.lock:
                records.messages.append(message)
                number = len(records.messages)
            body = f"<p>Thanks, {html.escape(message['name'] or 'friend')}! Ticket {number} ({message['topic']}).</p>"
            self._send(200, _page("Message sent", body))
        elif path == "/delete-review":
            with records.lock:
                records.deleted_reviews.append(form.get("slug", ""))
            self._send(200, _page("Review deleted", "<p>The review was deleted.</p>"))
        else:
            self._send(404, _page("Not found", "<p>No such page.</p>"))


class _ShopServer(ThreadingHTTPServer):
    daemon_threads = True
    records: _Records


class DemoShop:
    """The demo shop served on ``127.0.0.1`` on a free port, in a background thread.

    Use it as a context manager (``with DemoShop() as shop: shop.url``) or call :meth:`start` and
    :meth:`stop`. :meth:`records` returns what visitors ordered, sent and deleted.

    Args:
        port: The port to serve on; 0 (default) takes a free one. A fixed port keeps page URLs (which the
            abstract states show) the same from one process to the next, for data collected in one and replayed
            in another.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: _ShopServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL with a trailing slash, e.g. ``http://127.0.0.1:41234/``."""
        if self._server is None:
            raise RuntimeError("the demo shop is not running; call start() first")
        return f"http://127.0.0.1:{self._server.server_port}/"

    def start(self) -> DemoShop:
        """Bind a free port and serve in a daemon thread."""
        if self._server is None:
            self._server = _ShopServer(("127.0.0.1", self.port), _Handler)
            self._server.records = _Records()
            self._thread = threading.Thread(target=self._server.serve_forever, name="demo-shop", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def records(self) -> dict[str, list[object]]:
        """Orders, messages and deleted reviews so far (copies)."""
        if self._server is None:
            raise RuntimeError("the demo shop is not running")
        records = self._server.records
        with records.lock:
            return {
                "orders": [dict(o) for o in records.orders],
                "messages": [dict(m) for m in records.messages],
                "deleted_reviews": list(records.deleted_reviews),
            }

    def __enter__(self) -> DemoShop:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
