"""`mxr0 serve` against clients nobody here wrote: the official ``openai`` client (plain and streaming, 16 concurrent
clients = one-by-one greedy answers), ``httpx`` for the task endpoints and every bad input (4xx JSON naming the
reason, and the server answers the next request), and headless Chromium driving the web page (selenium).

The models are tiny and untrained, built in a module fixture with the project's own builders
(tests/unit/_serve_exports.py): the tests check behaviour (protocol, batching, boxes in original pixels,
windowing, privacy), not quality."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")
httpx = pytest.importorskip("httpx")

from _serve_exports import tiny_align_export, tiny_classifier_export, tiny_vlm_export, xray_png  # noqa: E402

from mxr0.serve import Pipeline  # noqa: E402
from mxr0.serve.app import create_app  # noqa: E402
from mxr0.serve.images import DISPLAY_META_KEYS  # noqa: E402

SHARED_DICOM = Path(os.environ.get("MXR0_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "dicom"


def _uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t0 > 30 or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve-exports")
    try:
        yield {"vlm": tiny_vlm_export(root / "report-run" / "export", root / "tok-chat"),
               "align": tiny_align_export(root / "align", root / "tok-wp"),
               "classifier": tiny_classifier_export(root / "classifier")}
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def session(exports):
    s = Pipeline(exports["vlm"], align=exports["align"], classifier=exports["classifier"], device="cpu",
                 max_batch=16, max_queue=64, batch_wait_s=0.02)
    yield s
    s.close()


@pytest.fixture(scope="module")
def server(session):
    with Server(create_app(session, max_body_bytes=2 << 20)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(client, image: bytes, text: str = "", mime: str = "image/png", **kw):
    content = [{"type": "image_url", "image_url": {"url": _uri(image, mime)}}]
    if text:
        content.append({"type": "text", "text": text})
    return client.chat.completions.create(model="report-run", messages=[{"role": "user", "content": content}], **kw)


# ---------------------------------------------------------------------------------------------------------
# the OpenAI endpoint
# ---------------------------------------------------------------------------------------------------------
def test_openai_client_models_chat_and_stream(client, server):
    assert [m.id for m in client.models.list().data][0] == "report-run"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    r = _ask(client, xray_png(0), max_tokens=7)
    text = r.choices[0].message.content
    assert text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7 and r.usage.prompt_tokens > 18 and r.model == "report-run"
    # streaming: the deltas add up to the same greedy answer
    chunks = list(_ask(client, xray_png(0), max_tokens=7, stream=True, stream_options={"include_usage": True}))
    deltas = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert deltas.strip() == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 7
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # it really streamed
    # stop strings end the answer before them; a smaller max_tokens is honoured
    cut = text.find(" ", 3)
    if cut > 0:
        stop = text[cut:cut + 2]
        assert _ask(client, xray_png(0), max_tokens=7, stop=[stop]).choices[0].message.content == text[:text.find(stop)].strip()
    short = _ask(client, xray_png(0), max_tokens=2)
    assert short.usage.completion_tokens == 2 and text.startswith(short.choices[0].message.content)
    # sampling: a temperature is honoured, a seed makes it repeatable
    a = _ask(client, xray_png(0), max_tokens=6, temperature=1.5, seed=7).choices[0].message.content
    b = _ask(client, xray_png(0), max_tokens=6, temperature=1.5, seed=7).choices[0].message.content
    assert a == b


def test_dicom_and_jpeg_data_uris(client):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((40, 56)) * 255).astype(np.uint8)).save(buf, format="JPEG")
    assert _ask(client, buf.getvalue(), mime="image/jpeg", max_tokens=3).choices[0].message.content
    dcm = SHARED_DICOM / "siim_cr_chest.dcm"
    if not dcm.exists():
        pytest.skip(f"real DICOM sample not present at {dcm}")
    r = _ask(client, dcm.read_bytes(), "Write the findings and impression of this chest X-ray report.",
             mime="application/dicom", max_tokens=3)
    assert r.choices[0].message.content


def test_16_concurrent_clients_get_the_one_by_one_greedy_answers(client, session):
    images = [xray_png(100 + i, 40 + 2 * i, 56 - i) for i in range(16)]
    alone = [_ask(client, im, max_tokens=6).choices[0].message.content for im in images]
    before = len(session.batcher.batch_sizes)
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda im: _ask(client, im, max_tokens=6).choices[0].message.content, images))
    assert together == alone
    sizes = session.batcher.batch_sizes[before:]
    assert max(sizes) > 1 and sum(sizes) == 16, sizes  # grouped into batched generate calls
    assert len(set(alone)) > 1  # the answers depend on the image


def test_batcher_groups_by_sampling_settings_and_honours_cancel(session):
    from mxr0.serve.batching import Job, QueueFull

    b = session.batcher
    im = session.read(xray_png(3))
    jobs = [session.chat_job([{"role": "user", "content": [{"type": "image"}]}], [im], max_new_tokens=4, **kw)
            for kw in ({}, {}, {"temperature": 1.0, "seed": 1}, {})]
    jobs[1].cancel()
    with b.cond:  # hold the worker while the jobs are queued, so that they are grouped deterministically
        before = len(b.batch_sizes)
        for j in jobs:
            b.pending.append(j)
        old, b.max_queue = b.max_queue, len(b.pending)
        with pytest.raises(QueueFull):
            b.submit(Job([1], im.pixels))
        b.max_queue = old
        b.cond.notify_all()
    res = [j.future.result(60) for j in jobs]
    assert res[1]["finish_reason"] == "cancelled" and res[0]["completion_tokens"] == 4
    assert res[3]["text"] == res[0]["text"]
    assert sorted(b.batch_sizes[before:]) == [1, 2]  # the greedy pair, then the sampled one alone


# ---------------------------------------------------------------------------------------------------------
# bad input: a 4xx JSON error naming the reason, then the server keeps serving
# ---------------------------------------------------------------------------------------------------------
def _post_chat(server, content, model="report-run", **kw):
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **kw}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)


def test_bad_inputs_get_named_4xx_errors_and_the_server_keeps_serving(server, client, session):
    openai = pytest.importorskip("openai")
    img = {"type": "image_url", "image_url": {"url": _uri(xray_png(5))}}
    cases = {
        "corrupt": (_post_chat(server, [{"type": "image_url", "image_url": {"url": _uri(xray_png(5)[:60])}}]), 400, "cannot read"),
        "not an image": (_post_chat(server, [{"type": "image_url", "image_url": {"url": _uri(b"Name: Jane Doe\n" * 20)}}]),
                         400, "not a DICOM, PNG or JPEG"),
        "bad base64": (_post_chat(server, [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]),
                       400, "base64"),
        "media type": (_post_chat(server, [{"type": "image_url", "image_url": {"url": _uri(b"x", "text/plain")}}]), 415,
                       "unsupported media type"),
        "remote url": (_post_chat(server, [{"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}]), 400,
                       "not fetched"),
        "too many images": (_post_chat(server, [img, img, img]), 400, "too many images"),
        "token budget": (_post_chat(server, [img, img], max_tokens=150), 400, "exceeds the model's context"),
        "no image": (_post_chat(server, "hello"), 400, "needs at least one image"),
        "unknown model": (_post_chat(server, [img], model="gpt-4o"), 404, "does not exist"),
        "content type": (httpx.post(server.url + "/v1/chat/completions", content=b"{}", timeout=30,
                                    headers={"content-type": "text/plain"}), 415, "application/json"),
        "not json": (httpx.post(server.url + "/v1/chat/completions", content=b"{", timeout=30,
                                headers={"content-type": "application/json"}), 400, "not valid JSON"),
        "too large": (_post_chat(server, [{"type": "image_url", "image_url": {"url": _uri(b"\0" * (3 << 20))}}]), 413,
                      "larger than"),
        "bad max_tokens": (_post_chat(server, [img], max_tokens=0), 400, "max_tokens"),
        "bad temperature": (_post_chat(server, [img], temperature=9), 400, "temperature"),
        "form wrong type": (httpx.post(server.url + "/v1/vqa", json={"question": "x"}, timeout=30), 415, "multipart"),
        "form no image": (httpx.post(server.url + "/v1/vqa", data={"question": "x"}, timeout=30), 400, "image"),
        "form corrupt": (httpx.post(server.url + "/v1/classify", files={"image": ("a.png", b"\x89PNG\r\n\x1a\n123")},
                                    timeout=30), 400, "cannot read"),
        "unknown route": (httpx.get(server.url + "/v1/nothing", timeout=30), 404, "no route"),
    }
    for name, (r, status, words) in cases.items():
        assert r.status_code == status, (name, r.status_code, r.text)
        err = r.json()["error"]
        assert words.lower() in err["message"].lower(), (name, err)
        assert "Jane" not in r.text and "/tmp" not in r.text and "mxr0-serve-" not in r.text, (name, r.text)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    # a full queue is 429, and the next request is served
    old, session.batcher.max_queue = session.batcher.max_queue, 0
    try:
        r = _post_chat(server, [img])
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
    finally:
        session.batcher.max_queue = old
    assert _ask(client, xray_png(5), max_tokens=2).choices[0].message.content


def test_token_cors_and_loopback_rules(session, exports, capsys):
    from fastapi.testclient import TestClient

    from mxr0.cli import main
    from mxr0.serve.guard import is_loopback

    app = create_app(session, token="s3cret", cors_origins=["http://lab.example"])
    with TestClient(app) as tc:
        assert tc.get("/v1/models").status_code == 401
        assert tc.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert tc.get("/health").json()["auth"] is True
        pre = tc.options("/v1/models", headers={"Origin": "http://lab.example", "Access-Control-Request-Method": "GET"})
        assert pre.headers.get("access-control-allow-origin") == "http://lab.example"
        other = tc.options("/v1/models", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
        assert other.headers.get("access-control-allow-origin") is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    assert main(["serve", "--model", str(exports["vlm"]), "--host", "0.0.0.0"]) == 2
    assert "token is required" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# task endpoints
# ---------------------------------------------------------------------------------------------------------
def _fake_grounding(session, monkeypatch, text="[0.25, 0.25, 0.75, 0.50]"):
    """Grounding answers are a known box (the model is untrained): what is tested is the parsing and the mapping
    to original pixels; every other job runs the real model."""
    real = session.batcher.run

    def run(jobs):
        fake = [j for j in jobs if j.kind == "grounding"]
        for j in fake:
            j.future.set_result({"text": text, "finish_reason": "stop", "prompt_tokens": len(j.input_ids),
                                 "completion_tokens": 5})
        rest = [j for j in jobs if j.kind != "grounding"]
        if rest:
            real(rest)

    monkeypatch.setattr(session.batcher, "run", run)


def test_task_endpoints(server, session, monkeypatch):
    u = server.url
    png, lat, prior = xray_png(7, 60, 40), xray_png(8), xray_png(9)
    r = httpx.post(u + "/v1/report", files={"frontal": ("f.png", png), "lateral": ("l.png", lat), "prior": ("p.png", prior)},
                   data={"prior_report": "No effusion.", "indication": "Cough."}, timeout=60)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["text"] and rep["views"] == ["frontal", "lateral"] and rep["unused_views"] == ["prior"]
    events = []
    with httpx.stream("POST", u + "/v1/report", files={"frontal": ("f.png", png), "lateral": ("l.png", lat)},
                      data={"indication": "Cough.", "stream": "true"}, timeout=60) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert events[-1]["done"] and "".join(e.get("delta", "") for e in events).strip() == events[-1]["text"]
    assert len([e for e in events if "delta" in e]) >= 2

    r = httpx.post(u + "/v1/vqa", files={"image": ("a.png", png)}, data={"question": "Is there an effusion?"}, timeout=60)
    assert r.status_code == 200 and r.json()["answer"]

    _fake_grounding(session, monkeypatch)
    r = httpx.post(u + "/v1/ground", files={"image": ("a.png", png)}, data={"phrase": "left effusion"}, timeout=60)
    g = r.json()
    assert r.status_code == 200 and g["image_size"] == {"width": 40, "height": 60}
    # 40 x 60 px, crop mode: the shortest side (40) fills the 32 px frame, 8 px (model) are cut at top and bottom
    geo = session.vlm["transform"].geometry(60, 40)
    expect = geo.to_original(np.array([0.25, 0.25, 0.75, 0.5])) * [40, 60, 40, 60]
    assert np.allclose(g["boxes"][0], expect, atol=0.06), (g, expect)
    assert g["boxes"][0][0] == pytest.approx(10, abs=0.1) and g["boxes"][0][2] == pytest.approx(30, abs=0.1)

    c = httpx.post(u + "/v1/classify", files={"image": ("a.png", png)}, timeout=30).json()["probabilities"]
    assert [x["label"] for x in c] == ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
    assert all(0 < x["probability"] < 1 for x in c)
    z = httpx.post(u + "/v1/zero-shot", files={"image": ("a.png", png)}, data={"labels": "Cardiomegaly,Edema"},
                   timeout=30).json()["probabilities"]
    assert [x["label"] for x in z] == ["Cardiomegaly", "Edema"]
    s = httpx.post(u + "/v1/similarity", files={"image": ("a.png", png)}, data={"phrase": "pleural effusion"}, timeout=30).json()
    assert np.array(s["grid"]).shape == (4, 4) and s["min"] <= s["max"]
    from PIL import Image

    heat = Image.open(io.BytesIO(base64.b64decode(s["heatmap_png"])))
    assert heat.mode == "RGBA" and heat.size == (40, 60)
    alpha = np.asarray(heat)[..., 3]
    assert alpha[:4].max() == 0 and alpha[30].min() > 0  # the cropped-away top is transparent


def test_image_endpoint_windows_monochrome1_and_keeps_header_values_out(server, caplog):
    from mxr0.data.xray import read_xray

    dcm = SHARED_DICOM / "txv_Fake_MONOHR1.dcm"
    if not dcm.exists():
        pytest.skip(f"real DICOM sample not present at {dcm}")
    import pydicom

    header = pydicom.dcmread(dcm, stop_before_pixels=True)
    secrets_ = [str(header.get(k)) for k in ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID")
                if header.get(k)]
    caplog.set_level(logging.DEBUG)
    out = {}
    for preset in ("default", "lung", "bone"):
        r = httpx.post(server.url + "/v1/image", files={"image": ("x.dcm", dcm.read_bytes())}, data={"window": preset},
                       timeout=60)
        assert r.status_code == 200, r.text
        out[preset] = r.json()
        for s in secrets_:
            assert s not in r.text
    d = out["default"]
    assert d["format"] == "dicom" and set(d["meta"]) <= set(DISPLAY_META_KEYS)
    assert d["meta"]["PhotometricInterpretation"] == "MONOCHROME1" and d["orientation"]["left"] == "R"
    from PIL import Image

    shown = {k: np.asarray(Image.open(io.BytesIO(base64.b64decode(v["png"])))).astype(float) / 255 for k, v in out.items()}
    ref = np.asarray(Image.fromarray(np.round(read_xray(dcm) * 255).astype(np.uint8)).resize(shown["default"].shape[::-1],
                                                                                            Image.BILINEAR)) / 255
    assert np.abs(shown["default"] - ref).mean() < 0.01  # MONOCHROME1 inverted by the reader: bone bright
    assert not np.allclose(shown["lung"], shown["default"]) and not np.allclose(shown["bone"], shown["lung"])
    assert httpx.post(server.url + "/v1/image", files={"image": ("x.dcm", dcm.read_bytes())}, data={"window": "hu"},
                      timeout=30).status_code == 400
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for s in secrets_:
        assert s not in logged


# ---------------------------------------------------------------------------------------------------------
# the web page in a real browser
# ---------------------------------------------------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def test_web_page_in_headless_chromium(server, session, monkeypatch, tmp_path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) or shutil.which(Path(p).name))]
    if missing:
        pytest.skip(f"NOT RUN: no browser here ({', '.join(missing)} missing): install Debian's chromium and "
                    "chromium-driver (scripts/bootstrap.sh does it as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="NOT RUN: selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _fake_grounding(session, monkeypatch)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000",
              f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    service = Service(CHROMEDRIVER if os.path.exists(CHROMEDRIVER) else shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server.url + "/")
        wait.until(lambda d: d.find_element(By.ID, "model-name").text.strip())
        assert "RESEARCH USE ONLY" in driver.find_element(By.ID, "banner").text
        assert "Intended use" in driver.find_element(By.ID, "model-use").text
        assert "report-run" in driver.find_element(By.ID, "model-name").text
        image = tmp_path / "cxr.png"
        image.write_bytes(xray_png(11, 64, 56))
        driver.find_element(By.ID, "frontal").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.ID, "report").get_attribute("data-state") == "done")
        assert driver.find_element(By.ID, "report").text.strip() and not driver.find_element(By.ID, "report").text.startswith("Error")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#classifier .row")) == 3)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#zeroshot .row")) == 14)
        driver.find_element(By.ID, "phrase").send_keys("left effusion")
        driver.find_element(By.ID, "run-ground").click()
        wait.until(lambda d: int(d.find_element(By.ID, "overlay").get_attribute("data-drawn") or 0) >= 1)
        geo = session.vlm["transform"].geometry(64, 56)  # the page lists the box in original pixels, rounded
        px = np.floor(geo.to_original(np.array([0.25, 0.25, 0.75, 0.5])) * [56, 64, 56, 64] + 0.5).astype(int)
        assert "[" + ", ".join(map(str, px)) + "]" in driver.find_element(By.ID, "boxes").text
        driver.find_element(By.ID, "heat-phrase").send_keys("cardiomegaly")
        driver.find_element(By.ID, "run-heat").click()
        wait.until(lambda d: int(d.find_element(By.ID, "overlay").get_attribute("data-drawn") or 0) >= 2)
        driver.find_element(By.ID, "question").send_keys("Is there an effusion?")
        driver.find_element(By.ID, "run-vqa").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#chat .a").text.startswith("A: "))
        driver.find_element(By.CSS_SELECTOR, "#windows button[data-preset=lung]").click()
        wait.until(lambda d: "window: lung" in d.find_element(By.ID, "image-info").text)
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        dcm = SHARED_DICOM / "siim_cr_chest.dcm"
        if dcm.exists():  # a real DICOM: read, shown, reported
            driver.find_element(By.ID, "frontal").send_keys(str(dcm))
            wait.until(lambda d: "DICOM" in d.find_element(By.ID, "image-info").text)
            wait.until(lambda d: d.find_element(By.ID, "report").get_attribute("data-state") == "done")
            assert driver.find_element(By.ID, "marker-left").text == "R"
            driver.find_element(By.ID, "phrase").clear()
            driver.find_element(By.ID, "phrase").send_keys("right effusion")
            driver.find_element(By.ID, "run-ground").click()
            wait.until(lambda d: "right effusion: [" in d.find_element(By.ID, "boxes").text)
            assert driver.find_element(By.ID, "overlay").get_attribute("data-drawn") == "1"
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(tmp_path / "page-dicom.png"))
    finally:
        driver.quit()


def test_a_client_that_disconnects_cancels_its_row(server, session, monkeypatch):
    from mxr0.serve import batching

    step = batching.RowCriteria.__call__

    def slow(self, input_ids, scores=None, **kw):  # ~20 ms a step: the cancellation is seen long before the end
        time.sleep(0.02)
        return step(self, input_ids, scores, **kw)

    monkeypatch.setattr(batching.RowCriteria, "__call__", slow)
    body = {"model": "report-run", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _uri(xray_png(21))}}]}]}
    n0 = len(session.batcher.finished)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first piece of text, then hang up
    t0 = time.monotonic()
    while len(session.batcher.finished) == n0 and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    kind, reason, tokens = session.batcher.finished[-1]
    assert r.status_code == 200 and reason == "cancelled" and tokens < 100, (reason, tokens)


def test_transformers_pipeline_reads_a_png_as_mxr0_does(exports, tmp_path):
    """``transformers.pipeline("image-text-to-text", model=export)`` runs the export without mxr0 (PNG / JPEG only:
    it bypasses mxr0's DICOM reader), and its image processor gives the pixels mxr0's transform gives, up to
    resampling (< 0.02 in normalised units, ~1 grey level)."""
    from PIL import Image
    from transformers import AutoProcessor, pipeline

    from mxr0.data.transforms import ImageTransform
    from mxr0.data.xray import read_xray

    path = tmp_path / "cxr.png"
    path.write_bytes(xray_png(31, 112, 96))
    proc = AutoProcessor.from_pretrained(exports["vlm"])
    theirs = proc.image_processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    ours = ImageTransform.from_pretrained(exports["vlm"])(read_xray(path))
    assert theirs.shape == ours.shape and (theirs - ours).abs().max() < 0.02
    pipe = pipeline("image-text-to-text", model=str(exports["vlm"]))
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Frontal view: "}, {"type": "image", "url": str(path)},
                                         {"type": "text", "text": "\nWrite the findings and impression of this chest X-ray report."}]}]
    out = pipe(text=msgs, max_new_tokens=4, generate_kwargs={"do_sample": False})
    assert isinstance(out[0]["generated_text"][-1]["content"], str)


def test_python_pipeline_serves_every_model(session):
    """The server's `Pipeline` from Python (tests/unit/test_pipeline.py checks the VLM calls against `mxr0.generate`)."""
    im = session.read(xray_png(41))
    rep = session.report(im, lateral=session.read(xray_png(42)), indication="Cough.")
    assert rep["text"] and rep["finish_reason"] == "length"
    assert session.ask(im, "Is there an effusion?")["text"]
    assert len(session.classify(im)) == 3 and session.similarity(im, "effusion")["grid"].shape == (4, 4)
