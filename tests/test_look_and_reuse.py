"""The report page a person checks by eye, and assigning new images with a finished run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deimos_ray.algorithms import ALGORITHMS
from deimos_ray.config_io import override_all
from deimos_ray.errors import UsageError
from deimos_ray.job import run_training_job
from deimos_ray.new_images import assign_new
from deimos_ray.report.input_map import read_input_map
from deimos_ray.report.members import COLUMNS, THUMB
from deimos_ray.report.montages import PER_GRID, montage_size
from deimos_ray.report.page import write_report
from tests.helpers import load_job, smoke_may_collapse, write_bad_files, write_image_folder

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


pytestmark = smoke_may_collapse


@pytest.fixture(scope="module")
def dec_run(ray_session, tmp_path_factory):
    """A finished DEC run (trained in the driver) on 40 small images, k=3."""
    root = tmp_path_factory.mktemp("look")
    images = root / "images"
    images.mkdir()
    write_image_folder(images, n_good=40)
    algorithm = ALGORITHMS["dec"]
    settings = {**load_job("train_dec").SMOKE, "data.spec": str(images), "data.image_size": 8,
                "model.n_clusters": 3, "scaling.num_workers": 0}
    cfg = override_all(algorithm.config_class(), settings)
    run_training_job(algorithm, cfg, root / "run")
    return root


def _page_sources(page: Path) -> list[str]:
    return re.findall(r"src='([^']+)'", page.read_text())


def test_the_report_names_only_files_it_wrote(dec_run):
    run = dec_run / "run"
    page = run / "report" / "index.html"
    sources = _page_sources(page)
    assert {"sizes.png", "map2d.png"} <= set(sources)
    assert all("/" not in s and (run / "report" / s).is_file() for s in sources)
    rows = pq.read_table(run / "assignments").to_pandas()
    assert {"x2d", "y2d"} <= set(rows.columns) and np.isfinite(rows[["x2d", "y2d"]].to_numpy()).all()
    # A montage per cluster, most and least confident, never the same image twice.
    sizes = rows["cluster"].value_counts()
    for cluster, size in sizes.items():
        top = min(PER_GRID, (size + 1) // 2)
        bottom = min(PER_GRID, size - top)
        for kind, n in (("confident", top), ("uncertain", bottom)):
            path = run / "report" / f"cluster_{cluster}_{kind}.png"
            assert path.is_file() == (n > 0)
            if n:
                assert f"cluster_{cluster}_{kind}.png" in sources
                assert Image.open(path).size == montage_size(n, (8, 8))


def member_ids(run: Path) -> dict[str, list[str]]:
    """{cluster page: the ids its thumbnails (or its list) show}."""
    pages = {}
    for page in sorted((run / "report" / "clusters").glob("c*_p*.html")):
        text = page.read_text()
        pages[page.name] = re.findall(r"class='t' title='([^']+) \(", text) or re.findall(r"<li>([^<]+)</li>", text)
    return pages


def test_every_member_has_a_thumbnail_on_its_clusters_page_and_the_map_is_of_the_input(dec_run):
    run = dec_run / "run"
    rows = pq.read_table(run / "assignments").to_pandas()
    pages = member_ids(run)
    assert sorted(i for ids in pages.values() for i in ids) == sorted(rows["id"])
    for cluster, members in rows.groupby("cluster"):
        assert sorted(pages[f"c{cluster}_p1.html"]) == sorted(members["id"])
        assert f"clusters/c{cluster}_p1.html" in (run / "report" / "index.html").read_text()
        sheet = Image.open(run / "report" / "clusters" / f"c{cluster}_p1.png")
        assert sheet.size == (min(len(members), COLUMNS) * THUMB, -(-len(members) // COLUMNS) * THUMB)
    points, method = read_input_map(run)
    assert method["method"] == "t-SNE" and method["of"] == "pixels" and len(points) == len(rows) == 40
    assert (run / "report" / "index.html").read_text().count("<circle ") == len(rows)


def test_the_report_is_redrawn_from_the_run_folder_alone(dec_run, tmp_path):
    # A copy of the run whose source is gone: the montages come from report/images.npz.
    run = tmp_path / "run"
    shutil.copytree(dec_run / "run", run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(str(dec_run / "images"), str(tmp_path / "moved")))
    drawn = {p.name: p.read_bytes() for p in (run / "report").glob("cluster_*.png")}
    for name in drawn:
        (run / "report" / name).unlink()
    sheets = {p.name: p.read_bytes() for p in (run / "report" / "clusters").glob("*.png")}
    write_report(run)
    assert drawn and {p.name: p.read_bytes() for p in (run / "report").glob("cluster_*.png")} == drawn
    # The member pages keep their sheets: the same pictures, every member still shown.
    assert {p.name: p.read_bytes() for p in (run / "report" / "clusters").glob("*.png")} == sheets
    assert member_ids(run) == member_ids(dec_run / "run")
    # A sheet lost with the source gone: its page lists the ids, the drawing goes on.
    lost = sorted((run / "report" / "clusters").glob("*.png"))[0]
    lost.unlink()
    write_report(run)
    assert not lost.exists() and "<li>" in lost.with_suffix(".html").read_text()
    assert member_ids(run) == member_ids(dec_run / "run")


def test_the_report_loads_in_a_real_browser(dec_run, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Chromium and its driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get((dec_run / "run" / "report" / "index.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        # Hovering a point of the map shows its image and its id.
        point = driver.find_element(By.CSS_SELECTOR, "#map circle")
        ActionChains(driver).move_to_element(point).perform()
        tip = driver.find_element(By.ID, "tip")
        hover = (tip.is_displayed(), driver.find_element(By.ID, "tip-text").text, point.get_attribute("data-id"),
                 driver.find_element(By.ID, "tip-image").value_of_css_property("background-image"))
        driver.save_screenshot(str(tmp_path / "report.png"))
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        # A cluster page: its sheet loads, a thumbnail per member.
        driver.find_element(By.CSS_SELECTOR, ".cluster h3 a").click()
        page = driver.execute_script(
            "var t = document.querySelectorAll('.t'); var sheet = new Image();"
            "sheet.src = t[0].style.backgroundImage.slice(5, -2);"
            "return [t.length, document.title, sheet.src];")
        sheet_loaded = driver.execute_async_script(
            "var done = arguments[arguments.length - 1], i = new Image();"
            "i.onload = () => done(i.naturalWidth); i.onerror = () => done(0); i.src = arguments[0];", page[2])
        errors += [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert len(images) >= 4
    assert all(complete and width > 0 for _, complete, width in images), images
    shown, text, point_id, background = hover
    assert shown and text.startswith(point_id + " (cluster ") and "clusters/c" in background
    assert page[0] >= 1 and page[1].startswith("cluster ") and sheet_loaded > 0
    assert errors == []


def test_assigning_the_training_images_again_gives_the_runs_clusters(dec_run, tmp_path):
    run = dec_run / "run"
    metrics = assign_new(run, str(dec_run / "images"), tmp_path / "again", report=False)
    theirs = pq.read_table(run / "assignments").to_pandas().set_index("id")
    mine = pq.read_table(tmp_path / "again" / "assignments").to_pandas().set_index("id")
    assert sorted(mine.index) == sorted(theirs.index)
    assert (mine.loc[theirs.index, "cluster"] == theirs["cluster"]).all()
    assert metrics["accounting"] == {"inputs": 40, "assigned": 40, "rejected": 0}


def test_new_images_with_bad_files_are_assigned_and_the_bad_ones_rejected(dec_run, tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    write_image_folder(new, n_good=5)
    write_bad_files(new)
    out = tmp_path / "assigned"
    metrics = assign_new(dec_run / "run", str(new), out)
    assert metrics["accounting"] == {"inputs": 8, "assigned": 5, "rejected": 3}
    rejected = pq.read_table(out / "rejected.parquet").to_pandas()
    assert sorted(Path(p).name for p in rejected["path"]) == ["text.jpg", "truncated.jpg", "zero.png"]
    assert rejected["reason"].str.len().gt(0).all()
    rows = pq.read_table(out / "assignments").to_pandas()
    assert len(rows) == 5 and rows["cluster"].between(0, 2).all()
    assert (out / "report" / "index.html").is_file()
    assert json.loads((out / "metrics.json").read_text())["assigned_with"] == str((dec_run / "run").resolve())


def test_assign_refuses_an_unfinished_run_and_a_used_out(dec_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(dec_run / "run", unfinished)
    (unfinished / "metrics.json").unlink()
    with pytest.raises(UsageError, match="not a finished run"):
        assign_new(unfinished, str(dec_run / "images"), tmp_path / "out")
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        assign_new(dec_run / "run", str(dec_run / "images"), used)
    assert not (tmp_path / "out").exists()
