"""tools/serve.py on the tiny LLaVA-Phi3 and a small generated city: the OpenAI-compatible API (through the openai
client and our own label backend), /v1/locate, refused requests (each followed by a good request answered in its
usual time), the page in headless Chromium, and tools/check_serving_engine.py against eval/infer.py's answers; and the
same server on the tiny MiniCPM-V stand-in.

One server subprocess serves every test of the module; a test that breaks it breaks the tests after it.
"""
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from addressvlm.core import templates
from addressvlm.answering.answering import answer_questions
from addressvlm.answering.loading import load_xtuner_model
from addressvlm.data.label_backends import LabelRequest, OpenAIBackend, data_url
from addressvlm.core.records import read_locations, read_predictions, write_questions
from synthetic_city import make_city
from scripts import script
from helpers import RECIPE, REPO, model_options, write_synthetic_checkpoint

check_endpoint = script("tools/check_serving_engine.py").main

MODEL_NAME = "tiny-addressvlm"
MAX_TOKENS = 32  # /v1/locate answers with eval/infer.py's default length


def write_served_city(root: Path) -> Path:
    """Six locations on six streets with a street line each, and a district and a street question per image."""
    make_city(root, n_locations=6, views=1, n_streets=6, n_districts=3, seed=1)
    rows = read_locations(root / "locations.csv")
    features = []
    for street in sorted({r.street for r in rows}):
        points = sorted((r.lon, r.lat) for r in rows if r.street == street)
        (lon0, lat0), (lon1, lat1) = points[0], points[-1]
        east_west = all(abs(lat - lat0) < 1e-9 for _, lat in points)
        ends = [(lon0 - 0.001, lat0), (lon1 + 0.001, lat1)] if east_west else [(lon0, lat0 - 0.001), (lon1, lat1 + 0.001)]
        features.append({"type": "Feature", "properties": {"name": street},
                         "geometry": {"type": "LineString", "coordinates": ends}})
    (root / "streets.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    questions = [{"question_id": f"served/{i}/{level}", "image": row.image, "level": level, "qtype": "generation",
                  "question": templates.level_question(level, "generation", 0),
                  "answer": getattr(row, level), "street": row.street, "district": row.district}
                 for i, row in enumerate(rows) for level in ("district", "street")]
    write_questions(root / "vqa" / "test_questions.jsonl", questions)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    return write_served_city(tmp_path_factory.mktemp("served_city"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llava) -> Path:
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("work") / "stage2", model_options(tiny_llava))


@pytest.fixture(scope="module")
def served(city, checkpoint, tiny_llava, tmp_path_factory):
    """``tools/serve.py`` on the tiny model and the city, as a user starts it: ``(base URL, its process)``."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "tools" / "serve.py"), "--config", RECIPE, "--checkpoint", str(checkpoint),
             "--model-root", str(tiny_llava), "--city", str(city), "--port", str(port),
             "--served-model-name", MODEL_NAME, "--max-upload-mb", "2"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # a loaded 2-core machine takes minutes to import torch and build a model
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def eval_model(checkpoint, tiny_llava):
    """The served checkpoint as eval/infer.py loads it."""
    return load_xtuner_model(RECIPE, checkpoint, model_options(tiny_llava))


@pytest.fixture(scope="module")
def reference(city, eval_model, tmp_path_factory, server) -> Path:
    """eval/infer.py's answers to the city's questions (the default, prefix-shared path), ``MAX_TOKENS`` each."""
    from addressvlm.core.records import read_questions

    out = tmp_path_factory.mktemp("reference") / "predictions.jsonl"
    answer_questions(eval_model, read_questions(city / "vqa" / "test_questions.jsonl"), out, city,
                     max_new_tokens=MAX_TOKENS, progress=False)
    return out


def eval_answer(model, city: Path, image: str, question: str, max_tokens: int, out: Path) -> str:
    """What eval/infer.py's own path (``answer_questions``, greedy) answers to ``question`` about ``image``."""
    answer_questions(model, [{"question_id": "asked", "image": image, "level": "street", "qtype": "generation",
                              "question": question, "answer": "", "street": "", "district": ""}],
                     out, city, max_new_tokens=max_tokens, progress=False)
    return read_predictions(out)["asked"][1]


def image_message(url: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


@pytest.mark.parametrize("padding", [[], ["--pad-to-square", "122,116,104"]], ids=["as_is", "padded_by_client"])
def test_endpoint_check_agrees_with_eval_infer(server, city, reference, tmp_path, padding):
    """tools/check_serving_engine.py against our server: 8 concurrent greedy requests (batched together by the
    server) answer exactly as eval/infer.py; images the client padded with the CLIP mean (as for vLLM) too."""
    with pytest.raises(SystemExit) as exit_:
        check_endpoint(["--base-url", f"{server}/v1", "--model", MODEL_NAME, "--questions",
                        str(city / "vqa" / "test_questions.jsonl"), "--predictions", str(reference),
                        "--out", str(tmp_path / "endpoint.jsonl"), "--max-tokens", str(MAX_TOKENS), *padding])
    assert exit_.value.code == 0
    assert len(read_predictions(tmp_path / "endpoint.jsonl")) == len(read_predictions(reference)) == 12


def test_openai_client_and_errors(server, city, reference):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    row = read_locations(city / "locations.csv")[0]
    question = templates.level_question("street", "generation", 0)
    response = client.chat.completions.create(model=MODEL_NAME, messages=image_message(data_url(city / row.image),
                                                                                         question),
                                              max_tokens=MAX_TOKENS, temperature=0)
    expected = read_predictions(reference)["served/0/street"][1]
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= MAX_TOKENS and response.usage.prompt_tokens > 0
    # A path inside the allowed folder (the city root by default) is the same image.
    by_path = client.chat.completions.create(model=MODEL_NAME, messages=image_message(row.image, question),
                                             max_tokens=MAX_TOKENS)
    assert by_path.choices[0].message.content == expected
    sampled = client.chat.completions.create(model=MODEL_NAME, messages=image_message(row.image, question),
                                             max_tokens=MAX_TOKENS, temperature=1.0, n=3, seed=0)
    assert len(sampled.choices) == 3

    refusals = [
        (openai.NotFoundError, "model_not_found", dict(model="gpt-4o", messages=image_message(row.image, question))),
        (openai.BadRequestError, "missing_image", dict(model=MODEL_NAME, messages=[{"role": "user", "content": [
            {"type": "text", "text": question}]}])),
        (openai.BadRequestError, "invalid_image", dict(model=MODEL_NAME, messages=image_message(
            "data:image/png;base64," + "bm90IGFuIGltYWdl", question))),
        (openai.BadRequestError, "path_not_allowed", dict(model=MODEL_NAME, messages=image_message(
            "file:///etc/passwd", question))),
        (openai.BadRequestError, "path_not_allowed", dict(model=MODEL_NAME, messages=image_message(
            "../" * 6 + "etc/passwd", question))),
    ]
    for error, code, request in refusals:
        with pytest.raises(error) as refused:
            client.chat.completions.create(**request)
        assert refused.value.body["code"] == code, refused.value.body
        assert refused.value.body["message"]
    # 50 MB where at most 2 are allowed: 413 in the OpenAI shape, and the server goes on serving.
    too_large = httpx.post(f"{server}/v1/locate", files={"image": ("big.jpg", b"\xff" * (50 * 2 ** 20))}, timeout=120)
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
    not_an_image = httpx.post(f"{server}/v1/locate", files={"image": ("notes.txt", b"hello")}, timeout=60)
    assert not_an_image.status_code == 400 and "not an image" in not_an_image.json()["error"]["message"]
    again = client.chat.completions.create(model=MODEL_NAME, messages=image_message(row.image, question),
                                           max_tokens=MAX_TOKENS)
    assert again.choices[0].message.content == expected


def test_label_backend_talks_to_the_server(server, city, eval_model, tmp_path):
    """datasets_prep/make_alignment_labels.py --backend openai's client, unchanged, gets from our server the reason
    eval/infer.py's path gives (greedy, so the two can be compared)."""
    backend = OpenAIBackend(model=MODEL_NAME, base_url=f"{server}/v1", max_tokens=8, max_retries=0, temperature=0)
    row = read_locations(city / "locations.csv")[0]
    reason = backend.generate(LabelRequest(row.image, [city / row.image], "Where was this taken?", facts=None))
    expected = eval_answer(eval_model, city, row.image, "Where was this taken?", 8, tmp_path / "asked.jsonl")
    assert reason and reason == expected.strip()


def test_locate(server, city, reference, eval_model, tmp_path):
    rows = read_locations(city / "locations.csv")
    body = {"image": data_url(city / rows[1].image), "question": "What colour is this image?"}
    located = httpx.post(f"{server}/v1/locate", json=body, timeout=120).json()
    answers = read_predictions(reference)
    assert located["district"] == answers["served/1/district"][1]
    assert located["street"] == answers["served/1/street"][1]
    for key, names in (("top_streets", {r.street for r in rows}), ("top_districts", {r.district for r in rows})):
        top = located[key]
        assert len(top) == min(5, len(names)) and {t["name"] for t in top} <= names
        probabilities = [t["probability"] for t in top]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert located["question"] == body["question"]
    assert located["answer"] and located["answer"] == eval_answer(eval_model, city, rows[1].image, body["question"],
                                                                  MAX_TOKENS, tmp_path / "asked.jsonl")
    assert located["true_location"] == {"image": rows[1].image, "lat": rows[1].lat, "lon": rows[1].lon,
                                        "street": rows[1].street, "district": rows[1].district}
    uploaded = httpx.post(f"{server}/v1/locate", files={"image": ("photo.jpg", (city / rows[1].image).read_bytes())},
                          timeout=120).json()
    assert (uploaded["street"], uploaded["top_streets"]) == (located["street"], located["top_streets"])
    assert uploaded["answer"] is None


# ------------------------------------------------------------------------------------------ hostile requests
def good_request(server: str, city: Path) -> float:
    """Seconds a greedy question about a city photo takes, asserting it is answered."""
    row = read_locations(city / "locations.csv")[0]
    start = time.monotonic()
    response = httpx.post(f"{server}/v1/chat/completions", timeout=120, json={
        "model": MODEL_NAME, "messages": image_message(row.image, "Which street?"), "max_tokens": 8})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None
    return time.monotonic() - start


@pytest.fixture(scope="module")
def usual_seconds(server, city) -> float:
    return max(good_request(server, city) for _ in range(3))


def assert_serves_as_usual(server: str, city: Path, usual_seconds: float) -> None:
    """The server answers the next good request, in about its usual time (generous: the machine is shared)."""
    assert good_request(server, city) < 5 * usual_seconds + 5


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The OpenAI-shaped error of a refused request, after checking its status, shape and code."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json", response.text[:300]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == {403: "permission_error", 404: "not_found_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def png(width: int, height: int) -> bytes:
    """A one-bit PNG: a few kilobytes, whatever its pixel count."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, "PNG")
    return out.getvalue()


def png_url(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png(width, height)).decode()


def chat(server: str, messages: list[dict], **fields) -> httpx.Response:
    return httpx.post(f"{server}/v1/chat/completions", timeout=120,
                      json={"model": MODEL_NAME, "messages": messages, **fields})


def peak_memory_mb(process: subprocess.Popen) -> float:
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def test_oversized_images_refused_before_decoding(served, city, usual_seconds):
    """A 12000x12000 PNG of a few kilobytes (144 megapixels: 432 MB decoded) and a 6000x5000 one (30 megapixels,
    over the default limit of 25, under Pillow's bound of twice it) get 413 ``image_too_large`` without being
    decoded (the server's peak memory does not move), by data URL and upload alike; an image file named by path
    larger than the upload limit too."""
    server, process = served
    peak = peak_memory_mb(process)
    for width, height in ((12000, 12000), (6000, 5000)):
        message = error_of(chat(server, image_message(png_url(width, height), "Which street?")), 413,
                           "image_too_large")["message"]
        assert "25 megapixels" in message and "--max-image-megapixels" in message
        error_of(httpx.post(f"{server}/v1/locate", files={"image": ("big.png", png(width, height))}, timeout=120),
                 413, "image_too_large")
    assert peak_memory_mb(process) - peak < 50
    big_file = city / "big.png"  # over the 2 MB upload limit the server runs with
    big_file.write_bytes(png(64, 64) + b"\0" * (3 * 2 ** 20))
    try:
        assert "--max-upload-mb" in error_of(chat(server, image_message("big.png", "Which street?")), 413,
                                             "image_too_large")["message"]
    finally:
        big_file.unlink()
    assert_serves_as_usual(server, city, usual_seconds)


def test_prompts_over_the_context_refused(server, city, usual_seconds):
    """The tiny model's context is 4096 tokens: a question of 5,000 words, one of 1.5 million characters (refused
    without tokenizing it) and a prompt that fits only with fewer max_tokens get 400 ``context_length_exceeded``, on
    /v1/locate too; max_tokens over --max-tokens-limit 400 too."""
    row = read_locations(city / "locations.csv")[0]
    message = error_of(chat(server, image_message(row.image, "street " * 5000)), 400,
                       "context_length_exceeded")["message"]
    assert "4096 tokens" in message and "tokens of prompt" in message
    start = time.monotonic()
    message = error_of(chat(server, image_message(row.image, "s" * 1_500_000)), 400,
                       "context_length_exceeded")["message"]
    assert "1500000 characters" in message and time.monotonic() - start < usual_seconds + 5
    long_question = image_message(row.image, "street " * 3800)
    fits = chat(server, long_question, max_tokens=1)
    assert fits.status_code == 200, fits.text
    prompt_tokens = fits.json()["usage"]["prompt_tokens"]
    assert 4096 - 512 < prompt_tokens < 4096
    error_of(chat(server, long_question, max_tokens=4097 - prompt_tokens), 400, "context_length_exceeded")
    assert error_of(chat(server, image_message(row.image, "Which street?"), max_tokens=513), 400)["param"] == \
        "max_tokens"
    photo = {"image": ("photo.jpg", (city / row.image).read_bytes())}
    error_of(httpx.post(f"{server}/v1/locate", timeout=120, data={"question": "street " * 5000}, files=photo), 400,
             "context_length_exceeded")
    assert_serves_as_usual(server, city, usual_seconds)


def raw_chat_body(max_tokens: str, image: str) -> bytes:
    """A chat request as JSON text, with ``max_tokens`` written as given (JSON that json.dumps would not write)."""
    messages = json.dumps(image_message(image, "Which street?"))
    return f'{{"model": "{MODEL_NAME}", "messages": {messages}, "max_tokens": {max_tokens}}}'.encode()


def test_malformed_requests_get_openai_errors(server, city, usual_seconds):
    """Requests that failed with a plain-text 500, or a {"detail": ...} body, get OpenAI's error shape."""
    image = read_locations(city / "locations.csv")[0].image
    as_json = {"content-type": "application/json"}
    chat_url, locate_url = f"{server}/v1/chat/completions", f"{server}/v1/locate"
    refusals = [
        (httpx.post(chat_url, content=raw_chat_body("Infinity", image), headers=as_json), 400, None),
        (httpx.post(chat_url, content=raw_chat_body("NaN", image), headers=as_json), 400, None),
        (httpx.post(chat_url, content=raw_chat_body("1e400", image), headers=as_json), 400, None),
        (httpx.post(chat_url, content=raw_chat_body("9" * 5001, image), headers=as_json), 400, None),
        (httpx.post(chat_url, content=b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=as_json),
         400, None),
        (chat(server, image_message(png_url(1, 1), "Which street?")), 400, "invalid_image"),
        (chat(server, image_message(png_url(300, 3), "Which street?")), 400, "invalid_image"),
        (chat(server, image_message("images/\0.jpg", "Which street?")), 400, "invalid_image"),
        (chat(server, image_message("file:///%00/etc/passwd", "Which street?")), 400, "invalid_image"),
        (chat(server, image_message("x" * 5000, "Which street?")), 400, "invalid_image"),
        (httpx.post(locate_url, files={"image": ("dot.png", png(1, 1))}), 400, "invalid_image"),
        (httpx.post(locate_url, content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data"}),
         400, None),
        (httpx.post(locate_url, files={"picture": ("photo.jpg", b"abc")}), 400, "missing_image"),
        (httpx.get(f"{server}/nowhere"), 404, None),
        (httpx.post(f"{server}/v1/models"), 405, None),
    ]
    for response, status, code in refusals:
        error_of(response, status, code)
    assert error_of(refusals[2][0], 400)["param"] == "max_tokens"  # 1e400 parses, as inf, and is out of range
    assert_serves_as_usual(server, city, usual_seconds)


def test_other_sites_and_content_types_refused(server, city, usual_seconds):
    """Only JSON (or multipart on /v1/locate) is read: a browser's cross-site text/plain or form post gets 415; a Host
    other than the server's (a rebound DNS name) or a page of another origin gets 403."""
    port = server.rsplit(":", 1)[1]
    row = read_locations(city / "locations.csv")[0]
    body = json.dumps({"model": MODEL_NAME, "messages": image_message(row.image, "Which street?")})
    photo = {"image": ("photo.jpg", (city / row.image).read_bytes())}
    chat_url, locate_url = f"{server}/v1/chat/completions", f"{server}/v1/locate"
    error_of(httpx.post(chat_url, content=body, headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    error_of(httpx.post(chat_url, content=body), 415, "unsupported_media_type")
    error_of(httpx.post(locate_url, content=json.dumps({"image": row.image}), headers={"content-type": "text/plain"}),
             415, "unsupported_media_type")
    error_of(httpx.post(locate_url, data={"image": row.image}), 415, "unsupported_media_type")
    for rebound in (f"attacker.example:{port}", "127.0.0.1", f"127.0.0.1:{int(port) + 1}"):
        error_of(httpx.post(chat_url, content=body, headers={"content-type": "application/json", "host": rebound}),
                 403, "host_not_allowed")
        error_of(httpx.get(f"{server}/", headers={"host": rebound}), 403, "host_not_allowed")
    error_of(httpx.post(locate_url, files=photo, headers={"origin": "http://attacker.example"}), 403,
             "origin_not_allowed")
    assert httpx.get(f"{server}/v1/models", headers={"host": f"localhost:{port}"}).status_code == 200
    same_origin = httpx.post(locate_url, files=photo, headers={"origin": server}, timeout=120)
    assert same_origin.status_code == 200 and same_origin.json()["street"] is not None
    assert_serves_as_usual(server, city, usual_seconds)

    from addressvlm.serving.server import allowed_hosts

    assert allowed_hosts("::1", 8000) == {"localhost:8000", "127.0.0.1:8000", "[::1]:8000"}
    assert allowed_hosts("0.0.0.0", 8000) is None  # every interface: names the server cannot know


@pytest.mark.parametrize("option", [["--max-upload-mb", "-1"], ["--max-upload-mb", "nan"],
                                    ["--max-image-megapixels", "0"], ["--max-tokens-limit", "0"],
                                    ["--max-batch-rows", "-3"], ["--port", "0"], ["--allowed-folder", "MISSING"]],
                         ids=lambda option: option[0][2:] + option[1])
def test_bad_server_options_refused_at_start(city, checkpoint, tmp_path, capsys, option):
    """A limit that is not a positive number, or an --allowed-folder that does not exist, stops the server with one
    line naming the option, before the model loads."""
    main = script("tools/serve.py").main

    option = [value.replace("MISSING", str(tmp_path / "missing")) for value in option]
    with pytest.raises(SystemExit) as stopped:
        main(["--config", RECIPE, "--checkpoint", str(checkpoint), "--city", str(city), *option])
    message = str(stopped.value.code)
    assert message.startswith(f"error: {option[0]} ") and "\n" not in message and option[1] in message


def chromium_executable() -> str | None:
    """The Chromium Playwright drives: $ADDRESSVLM_CHROMIUM, else the Debian/Ubuntu package's binary on PATH; None
    leaves it to Playwright's own download (``playwright install chromium``)."""
    return os.environ.get("ADDRESSVLM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_page_in_headless_chromium(server, city, tmp_path):
    """Upload a city photo on the page: the answers, the top-5 chart and the map with the top streets and the true
    location appear. Then a file that is no image: its error shows and nothing of the photo before stays; then a
    plain-text 500 (as a proxy in front of the server sends): its error shows, not 'locating...' for ever."""
    from playwright.sync_api import Error as PlaywrightError, sync_playwright

    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=chromium_executable())
        except PlaywrightError as exc:
            pytest.skip(f"no Chromium: install the chromium package or run `playwright install chromium` ({exc})")
        page = browser.new_page()
        page.goto(server)
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#city-map path").count() == 6  # one line per street, drawn before any photo
        row = read_locations(city / "locations.csv")[2]
        page.set_input_files("#photo", str(city / row.image))
        page.wait_for_selector("#answers:not([hidden])", timeout=120_000)
        assert page.locator("#district").inner_text().strip() != "" or page.locator("#street").inner_text() != ""
        assert page.locator("#street-chart rect").count() == 5
        assert page.locator("#city-map path.top").count() >= 1
        assert page.locator("#true-location").count() == 1
        assert page.locator("#truth").inner_text() == f"{row.street}, {row.district}"

        def assert_results_cleared():
            assert page.locator("#answers").is_hidden()
            assert page.locator("#district").inner_text() == page.locator("#truth").inner_text() == ""
            assert page.locator("#street-chart rect").count() == page.locator("#top-districts li").count() == 0
            assert page.locator("#city-map path.top").count() == page.locator("#true-location").count() == 0
            assert page.locator("#city-map path").count() == 6

        (tmp_path / "notes.txt").write_text("not a photo")
        page.set_input_files("#photo", str(tmp_path / "notes.txt"))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('error')")
        assert_results_cleared()
        status = page.locator("#status").inner_text()
        assert status.startswith("error: HTTP 400: ") and "not an image" in status

        page.set_input_files("#photo", str(city / row.image))
        page.wait_for_selector("#answers:not([hidden])", timeout=120_000)
        page.route("**/v1/locate", lambda route: route.fulfill(status=500, content_type="text/plain",
                                                               body="Internal Server Error"))
        page.set_input_files("#photo", str(city / read_locations(city / "locations.csv")[3].image))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('error')")
        assert page.locator("#status").inner_text() == "error: HTTP 500: Internal Server Error"
        assert_results_cleared()
        browser.close()


# ------------------------------------------------------------------------------------------ MiniCPM-V
@contextmanager
def serving_in_thread(app, port: int):
    """``app`` (made for ``port``) by uvicorn in a thread of this process (no second model load, no second import of
    torch); its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_minicpmv_served_as_eval_infer_answers(city, tiny_minicpmv, tiny_minicpmv_checkpoint, tmp_path):
    """tools/serve.py's loading of a MiniCPM-V recipe and checkpoint: greedy answers through the openai client equal
    eval/infer.py's, /v1/locate ranks the city's names, and refusals are the LLaVA server's."""
    from addressvlm.answering.loading import PerQuestionModel
    from addressvlm.core.records import read_questions
    from addressvlm.serving.server import create_app, served_from_args
    build_parser = script("tools/serve.py").build_parser

    recipe, checkpoint, options = tiny_minicpmv_checkpoint
    args = build_parser().parse_args(["--config", recipe, "--checkpoint", str(checkpoint.parent), "--model-root",
                                      str(tiny_minicpmv), "--city", str(city)])
    model, served_city, allowed = served_from_args(args)
    assert isinstance(model, PerQuestionModel)
    rows = read_locations(city / "locations.csv")
    questions = [q for q in read_questions(city / "vqa" / "test_questions.jsonl") if q["image"] == rows[1].image]
    reference = tmp_path / "predictions.jsonl"
    answer_questions(load_xtuner_model(recipe, checkpoint, options), questions, reference, city,
                     max_new_tokens=MAX_TOKENS, progress=False)
    expected = {qid: text for qid, (_, text) in read_predictions(reference).items()}
    assert len(expected) == 2 and all(expected.values())

    port = free_port()
    with serving_in_thread(create_app(model, served_city, MODEL_NAME, allowed, port=port), port) as server:
        client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
        for q in questions:
            response = client.chat.completions.create(
                model=MODEL_NAME, messages=image_message(data_url(city / q["image"]), q["question"]),
                max_tokens=MAX_TOKENS)
            assert response.choices[0].message.content == expected[q["question_id"]]
            assert 0 < response.usage.completion_tokens <= MAX_TOKENS and response.usage.prompt_tokens > 0

        refusals = [
            (openai.NotFoundError, "model_not_found", dict(model="gpt-4o")),
            (openai.BadRequestError, "invalid_image", dict(messages=image_message(
                "data:image/png;base64," + "bm90IGFuIGltYWdl", "Which street?"))),
            (openai.BadRequestError, "path_not_allowed", dict(messages=image_message("../" * 6 + "etc/passwd",
                                                                                      "Which street?"))),
            (openai.BadRequestError, "unsupported_temperature", dict(temperature=0.7)),
            (openai.BadRequestError, "reserved_marker", dict(messages=image_message(rows[1].image,
                                                                                     "Which </image> street?"))),
            (openai.BadRequestError, "invalid_image", dict(messages=image_message(png_url(1, 1), "Which street?"))),
            (openai.BadRequestError, "context_length_exceeded", dict(messages=image_message(  # its context: 8192
                rows[1].image, "street " * 9000))),
        ]
        for error, code, request in refusals:
            with pytest.raises(error) as refused:
                client.chat.completions.create(**{"model": MODEL_NAME,
                                                  "messages": image_message(rows[1].image, "Which street?"), **request})
            assert refused.value.body["code"] == code, refused.value.body

        located = httpx.post(f"{server}/v1/locate", files={"image": ("photo.jpg", (city / rows[1].image).read_bytes())},
                             timeout=120).json()
        by_level = {q["level"]: expected[q["question_id"]] for q in questions}
        assert (located["district"], located["street"]) == (by_level["district"], by_level["street"])
        top = located["top_streets"]
        assert len(top) == 5 and {t["name"] for t in top} <= {r.street for r in rows}
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert located["true_location"]["street"] == rows[1].street
        assert httpx.get(server).status_code == 200


def test_agreement_takes_an_answer_cut_inside_a_character_as_equal(tmp_path):
    """Cut by max_tokens inside a character, transformers' decoding ends in U+FFFD where vLLM's leaves the incomplete
    bytes out: the same tokens. Any other difference still counts."""
    from addressvlm.checks.endpoint_check import agreement
    from addressvlm.core.records import open_predictions

    answers = {"reference": ["Mäkel\ufffd", "Annankatu", "Kallio"], "endpoint": ["Mäkel", "Annankatu ", "Kallion"]}
    for name, texts in answers.items():
        with open_predictions(tmp_path / f"{name}.jsonl") as out:
            for i, text in enumerate(texts):
                out.write({"question_id": f"q{i}", "prediction": text})
    result = agreement(tmp_path / "reference.jsonl", tmp_path / "endpoint.jsonl")
    assert (result.compared, result.equal) == (3, 2)
    assert result.differences == [("q2", "Kallio", "Kallion")]
