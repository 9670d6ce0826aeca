"""The reader-study web app in a real browser (Debian's headless Chromium driven by Playwright).

A reader answers every case with the keyboard, the page is reloaded half-way and must resume with the
answers kept, the saved CSV is scored by ``reader_study`` with the figures the chosen answers imply; the
viewer's zoom, smoothing and window/level respond; the page works from ``file://`` and over HTTP; nothing in
the kit tells real from synthetic. Set ``MEDSEC_SCREENSHOTS=book/figures/reader_app`` to refresh the book's
screenshots from this run. A missing browser is a failure, not a skip: ``.ci/run`` installs it.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medsec_utils import data, reader_study
from medsec_utils.reader_study import __main__ as cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SIZE = 64
#  the answers the test reader gives: right and sure on most cases, wrong on two, unsure on one
WRONG, UNSURE = {0, 7}, {3}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reader_app")
    phantoms = data.load_dataset("phantom:chest_xray?n=12", size=SIZE, use_cache=False, progress=False).images
    real = phantoms[:6].float() / 255
    synthetic = torch.nn.functional.avg_pool2d(phantoms[6:].float() / 255, 3, stride=1, padding=1)  # a blurred stand-in
    return reader_study.build_reader_study(real, synthetic, root / "kit", root / "sealed", seed=3,
                                           contact="the study office")


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "Chromium is missing: apt-get install chromium (the reader app is tested in a real browser)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--allow-file-access-from-files"])
        yield chromium
        chromium.close()


def _intended(key: pd.DataFrame) -> dict[str, int]:
    """Per case, the confidence the test reader gives (by position in the key, so the figures are known)."""
    answers = {}
    for i, (case, truth) in enumerate(zip(key["case"], key["truth"])):
        sure = 5 if truth == "synthetic" else 1
        answers[case] = 3 if i in UNSURE else (6 - sure if i in WRONG else sure)
    return answers


def _shown_case(page) -> str:
    return page.locator("#case-name").inner_text()


def _shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"))
    target = os.environ.get("MEDSEC_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", Path(target) / f"{name}.png")


def _start(page, url: str, reader: str, seed: int) -> None:
    page.goto(url)
    page.fill("#reader", reader)
    page.fill("#seed", str(seed))
    page.press("#seed", "Enter")
    page.wait_for_selector("#case.shown")


def test_a_reader_answers_by_keyboard_resumes_after_a_reload_and_the_saved_csv_scores(kit, browser, tmp_path,
                                                                                       capsys):
    key = pd.read_csv(kit["key"])
    intended = _intended(key)
    context = browser.new_context(viewport={"width": 1200, "height": 820}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(kit["app"].as_uri())
    page.wait_for_selector("#intro.shown")
    assert page.locator("#n-cases").inner_text() == "12"
    page.fill("#reader", "Dr Test")
    _shot(page, tmp_path, "instructions")
    page.fill("#seed", "12345")
    page.press("#seed", "Enter")
    page.wait_for_selector("#case.shown")
    assert page.evaluate("document.getElementById('image').naturalWidth") == SIZE  # native pixels, not a thumbnail
    shown = []
    for answered in range(len(key)):
        if answered == 6:  # half-way: close the tab's state by reloading; the app must resume
            page.reload()
            page.wait_for_selector("#case.shown")
            assert page.locator("#answered").inner_text() == "6 answered"
            assert _shown_case(page) not in shown, "resumes at the next unanswered case"
            page.keyboard.press("ArrowLeft")
            back = _shown_case(page)
            assert back == shown[-1]
            chosen = page.locator("#scale button.chosen")
            assert chosen.get_attribute("data-value") == str(intended[back]), "the answer survived the reload"
            page.keyboard.press("ArrowRight")
        case = _shown_case(page)
        assert page.locator("#progress").inner_text() == f"Case {answered + 1} of 12"
        if answered == 2:
            page.keyboard.press("]")
            page.keyboard.press("]")
            page.keyboard.press("ArrowUp")
            page.keyboard.press("s")
            page.wait_for_timeout(300)
            _shot(page, tmp_path, "case")
            page.keyboard.press("r")
            page.keyboard.press("s")
        page.wait_for_timeout(60)  # a reader looks before answering: every case gets time
        shown.append(case)
        page.keyboard.press(str(intended[case]))
    page.wait_for_selector("#finish.shown")
    assert "all 12 cases" in page.locator("#finish-status").inner_text()
    assert page.locator("#contact").inner_text() == "the study office"
    _shot(page, tmp_path, "finish")
    with page.expect_download() as saving:
        page.click("#save")
    assert saving.value.suggested_filename == "answers_Dr_Test.csv"
    sheet = tmp_path / "answers_Dr_Test.csv"
    saving.value.save_as(sheet)
    assert errors == []
    context.close()

    assert sorted(shown) == sorted(key["case"]), "every case shown exactly once"
    answers = pd.read_csv(sheet)
    assert list(answers.columns[:4]) == list(reader_study.scoring.COLUMNS)
    assert (answers["reader"] == "Dr Test").all() and (answers["order_seed"] == 12345).all()
    assert (answers.set_index("case").loc[shown, "position"].to_numpy() == np.arange(1, 13)).all()
    assert (answers["seconds"] > 0.04).all() and answers["seconds"].sum() < 60
    scores = reader_study.score_readers(key, {"Dr Test": sheet}).iloc[0]
    # 12 cases: 2 wrong and sure, 1 unsure (counts as "real" at the cut-off 4): which one decides the accuracy
    unsure_truth = key["truth"].iloc[sorted(UNSURE)[0]]
    right = 12 - len(WRONG) - (unsure_truth == "synthetic")
    assert scores["accuracy"] == pytest.approx(right / 12)
    assert scores["n_unsure"] == 1
    expected = reader_study.score_readers(key, {"Dr Test": pd.DataFrame(
        {"reader": "Dr Test", "case": list(intended), "confidence": list(intended.values()), "seconds": ""})}).iloc[0]
    for column in ("accuracy", "sensitivity", "specificity", "auc", "p_value_vs_chance"):
        assert scores[column] == pytest.approx(expected[column])

    # the README's command on the saved sheet and a second reader's, as a coordinator would run it
    second = tmp_path / "answers_second.csv"
    pd.DataFrame({"reader": "second", "case": key["case"], "confidence": np.where(key["truth"] == "synthetic", 4, 2),
                  "seconds": 3.0}).to_csv(second, index=False)
    done = subprocess.run([sys.executable, "-m", "medsec_utils.reader_study", "score", str(kit["key"]), str(sheet),
                           str(second), "--out", str(tmp_path / "scores.csv")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{scores['accuracy']:.3f} [" in done.stdout and "pooled AUC of 2 reader(s)" in done.stdout
    assert "Fleiss' kappa" in done.stdout
    assert pd.read_csv(tmp_path / "scores.csv").set_index("reader").loc["second", "accuracy"] == 1.0
    broken = pd.read_csv(sheet)
    broken.loc[4, "confidence"] = 7  # a typo on line 6 of the file
    broken.to_csv(tmp_path / "answers_broken.csv", index=False)
    assert cli.main(["score", str(kit["key"]), str(tmp_path / "answers_broken.csv")]) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "answers_broken.csv" in said and "line 6 has '7'" in said, said


def test_the_viewer_zooms_smooths_and_windows(kit, browser):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    _start(page, kit["app"].as_uri(), "viewer", 7)
    width = lambda: page.evaluate("document.getElementById('image').getBoundingClientRect().width")  # noqa: E731
    slope = lambda: float(page.get_attribute("#fr", "slope"))  # noqa: E731
    fitted = width()
    assert fitted > 5 * SIZE, "fits the window by default"
    page.keyboard.press("o")
    assert width() == SIZE
    page.keyboard.press("+")
    assert width() == pytest.approx(SIZE * 1.25, abs=1)
    assert page.evaluate("getComputedStyle(document.getElementById('image')).imageRendering") == "pixelated"
    page.keyboard.press("s")
    assert page.evaluate("getComputedStyle(document.getElementById('image')).imageRendering") == "auto"
    page.keyboard.press("]")
    assert slope() > 1
    box = page.locator("#viewport").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 300, box["y"] + 160)
    page.mouse.up()
    assert slope() > 2.5 and float(page.get_attribute("#fr", "intercept")) != pytest.approx(0.5 - 0.5 * slope())
    page.keyboard.press("r")
    reset = width()
    page.keyboard.press("f")
    assert slope() == 1 and width() == reset > 5 * SIZE, "reset means no windowing and fit to the window"

    context.close()


def test_each_reader_gets_an_own_order_from_the_seed_shown(kit, browser):
    def first_cases(seed: int) -> list[str]:
        context = browser.new_context()
        page = context.new_page()
        _start(page, kit["app"].as_uri(), f"reader {seed}", seed)
        assert f"order seed {seed}" in page.locator("#who").inner_text()
        order = []
        for _ in range(5):
            order.append(_shown_case(page))
            page.keyboard.press("ArrowRight")
        context.close()
        return order

    assert first_cases(11) == first_cases(11)
    assert first_cases(11) != first_cases(12)


def test_the_app_works_from_a_static_web_server(kit, browser):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(kit["kit"]))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        context = browser.new_context()
        page = context.new_page()
        _start(page, f"http://127.0.0.1:{server.server_port}/{reader_study.APP_FILE}", "web", 1)
        page.wait_for_function("document.getElementById('image').naturalWidth > 0")
        assert page.evaluate("document.getElementById('image').naturalWidth") == SIZE
        context.close()
    finally:
        server.shutdown()


def test_nothing_in_the_kit_tells_real_from_synthetic(kit):
    key = pd.read_csv(kit["key"])
    files = sorted(p.name for p in kit["kit"].iterdir())
    assert files == sorted([f"{c}.png" for c in key["case"]] + [reader_study.APP_FILE, reader_study.SHEET_FILE])
    page = kit["app"].read_text()
    assert "answer_key" not in page and "source_index" not in page
    cases_in_page = [c for c in key["case"] if c in page]
    assert cases_in_page == sorted(key["case"]), "the page lists cases in name order only"
    assert page.count('"case_') == len(key), "each case named once, with nothing beside it"
    for case in key["case"]:
        image = Image.open(kit["kit"] / f"{case}.png")
        raw = (kit["kit"] / f"{case}.png").read_bytes()
        assert image.size == (SIZE, SIZE) and image.mode == "L"
        assert not image.info.keys() - {"dpi"} and not any(chunk in raw for chunk in (b"tEXt", b"iTXt", b"zTXt", b"tIME"))
    sheet = pd.read_csv(kit["sheet"])
    assert list(sheet.columns) == list(reader_study.scoring.COLUMNS) and list(sheet["case"]) == sorted(key["case"])
